"""The pod annotation as a source of anycast addresses: one GET to the API server.

``ApiPodAnnotations`` is the real adapter behind ``verbs.PodAnnotations``
(the unit tests use an in-memory fake). The verbs call it only on ADD,
only when the config names a kubeconfig, CNI_ARGS carry
K8S_POD_NAMESPACE/K8S_POD_NAME and no explicit source named addresses; the
dispatcher imports this module on that first call, never before. What the
annotation's value may hold is judged by ``anycast.annotated_anycast``.

Why the standard library and not a Kubernetes client: the plugin is exec'd
for every pod start, and the client libraries (lightkube with its HTTP
stack) cost far more to import than the whole rest of an ADD, which needs
only ``http.client`` and ``ssl``. A single authenticated GET needs none of
what they add (watches, retries, typed models). The
reconciler, which holds a long-lived watch, does use a client library.
Only the kubeconfig forms a node plugin meets are read: token or token
file, client certificate and key (file or data), CA (file or data).

Everything read is bounded (files, the API's answer), no
file is opened unless it is a regular file (netconf.files), and error
details name the field that is wrong, never what a file holds: they end up
in pod events, and a kubeconfig path may be a symlink to anything.
No dataclasses or typing at run time: this is on the ADD path of every pod
of a Kubernetes node.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re

from netconf.errors import AnycastLimitExceeded, InvalidConfig, IOFailure, KubernetesRefused, KubernetesUnreachable

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import Any

# A kubeconfig with inline certificates is a few KiB; token, CA and client
# files are smaller still.
MAX_KUBECONFIG_BYTES = 1 << 20
MAX_CREDENTIAL_FILE_BYTES = 1 << 20
# The API server stores an object in etcd only up to 1.5 MiB; a pod's JSON
# is rarely over 100 KiB. 4 MiB is never a real pod.
MAX_POD_BYTES = 4 << 20

# RFC 6750 b64token: what a bearer token may hold. Anything else (a newline,
# a control character) would make http.client raise with the header value —
# the token — in the message.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")


class ApiCredentials:
    """Where the API server is and how to authenticate to it."""

    __slots__ = ("server", "token", "ca_data", "client_cert", "client_key", "insecure")

    def __init__(
        self,
        server: str,
        token: str | None = None,
        ca_data: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        insecure: bool = False,
    ) -> None:
        self.server = server
        self.token = token
        self.ca_data = ca_data
        self.client_cert = client_cert
        self.client_key = client_key
        self.insecure = insecure


def load_kubeconfig(path: str) -> ApiCredentials:
    """The current context's server and credentials; raises InvalidConfig (code 7).

    CA and client files named in the kubeconfig are read here, through the
    same checks as the kubeconfig, and handed to ssl as data.
    """
    raw = _read_file(path, MAX_KUBECONFIG_BYTES, "kubeconfig")
    document = _parse_yaml_or_json(raw, path)
    context_name = _string(document, "current-context", "", path)
    context = _named(document, "contexts", context_name, path)
    cluster = _named(document, "clusters", _string(context, "cluster", "context", path), path)
    user_name = _optional_string(context, "user", "context", path)
    user = _named(document, "users", user_name, path) if user_name else {}
    base = os.path.dirname(path)
    token = _optional_string(user, "token", "user", path)
    token_file = _optional_string(user, "tokenFile", "user", path)
    if not token and token_file:
        raw_token = _read_file(os.path.join(base, token_file), MAX_CREDENTIAL_FILE_BYTES, "tokenFile")
        token = _text(raw_token, "tokenFile", path).strip()
    if token and not _BEARER_TOKEN.fullmatch(token):
        raise InvalidConfig(f"kubeconfig {path}: the user's token is not a bearer token", "RFC 6750 b64token characters only")
    return ApiCredentials(
        server=_server_url(_string(cluster, "server", "cluster", path), path),
        token=token or None,
        ca_data=_data_or_file(cluster, "certificate-authority", base, "cluster", path),
        client_cert=_data_or_file(user, "client-certificate", base, "user", path),
        client_key=_data_or_file(user, "client-key", base, "user", path),
        insecure=cluster.get("insecure-skip-tls-verify") is True,
    )


def get_pod_annotation(credentials: ApiCredentials, namespace: str, name: str, key: str, timeout: float) -> str | None:
    """The pod's annotation ``key`` (None when absent).

    Raises KubernetesUnreachable (code 11: the runtime retries the ADD) for
    network failures, timeouts, 5xx, a pod not (yet) found and an answer
    that is not a pod; KubernetesRefused (code 107) when the credentials are
    rejected; AnycastLimitExceeded (108) for an answer over MAX_POD_BYTES;
    InvalidConfig (7) for TLS material ssl cannot use, IOFailure (5) when
    the client certificate cannot be staged for ssl.
    """
    from urllib.parse import quote

    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"
    status, body = _get(credentials, path, timeout)
    if status in (401, 403):
        raise KubernetesRefused(
            f"API server refused to read pod {namespace}/{name} (HTTP {status})",
            "the plugin's kubeconfig needs get on pods (see deploy/kubernetes/rbac.yaml)",
        )
    if status != 200:
        raise KubernetesUnreachable(
            f"cannot read pod {namespace}/{name} from the API server (HTTP {status})", body[:200].decode(errors="replace")
        )
    try:
        pod = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise KubernetesUnreachable(f"API server sent an unreadable pod {namespace}/{name}", type(exc).__name__) from exc
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    annotations = (metadata.get("annotations") if isinstance(metadata, dict) else None) or {}
    value = annotations.get(key) if isinstance(annotations, dict) else None
    if value is not None and not isinstance(value, str):
        raise KubernetesUnreachable(f"API server sent an unreadable pod {namespace}/{name}", f"annotation {key} is not a string")
    return value


def _get(credentials: ApiCredentials, path: str, timeout: float) -> tuple[int, bytes]:
    import http.client
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(credentials.server)
    headers = {"Accept": "application/json", "User-Agent": "flock-anycast"}
    if credentials.token:
        headers["Authorization"] = f"Bearer {credentials.token}"
    # Built before connecting: unusable TLS material is the config's fault
    # (code 7), not the network's (ssl.SSLError is an OSError).
    context = _tls_context(credentials) if url.scheme == "https" else None
    # load_kubeconfig accepts only a server URL with a host (_server_url).
    assert url.hostname is not None
    connection: http.client.HTTPConnection
    try:
        if context is not None:
            connection = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=timeout, context=context)
        else:
            connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
        try:
            connection.request("GET", url.path.rstrip("/") + path, headers=headers)
            response = connection.getresponse()
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_POD_BYTES:
                raise _pod_too_large(credentials, path)
            body = response.read(MAX_POD_BYTES + 1)  # never more, whatever the server streams
            if len(body) > MAX_POD_BYTES:
                raise _pod_too_large(credentials, path)
            return response.status, body
        finally:
            connection.close()
    except (OSError, http.client.HTTPException, socket.timeout) as exc:
        raise KubernetesUnreachable(
            f"API server {credentials.server} unreachable within {timeout:g}s", repr(exc)
        ) from exc


def _pod_too_large(credentials: ApiCredentials, path: str) -> AnycastLimitExceeded:
    return AnycastLimitExceeded(
        f"API server {credentials.server} answered {path} with more than {MAX_POD_BYTES} bytes",
        "a pod that large is refused unread",
    )


def _tls_context(credentials: ApiCredentials) -> ssl.SSLContext:
    import ssl
    import tempfile

    try:
        context = ssl.create_default_context(cadata=_ca_text(credentials.ca_data) if credentials.ca_data else None)
        if credentials.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if credentials.client_cert and credentials.client_key:
            # ssl wants files; they live only for this call, readable by root alone.
            with tempfile.NamedTemporaryFile() as cert, tempfile.NamedTemporaryFile() as key:
                cert.write(credentials.client_cert)
                key.write(credentials.client_key)
                cert.flush()
                key.flush()
                context.load_cert_chain(cert.name, key.name)
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidConfig(
            "kubeconfig: the CA or client certificate cannot be used", f"{type(exc).__name__}: {getattr(exc, 'reason', '')}"
        ) from exc
    except OSError as exc:  # the temp files for the client certificate
        raise IOFailure("cannot hand the client certificate to ssl", repr(exc)) from exc
    return context


def _ca_text(data: bytes) -> str | bytes:
    """PEM as text (ssl wants str for PEM), DER as bytes."""
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        return data


def _read_file(path: str, limit: int, what: str) -> bytes:
    from netconf.files import read_regular_file

    try:
        return read_regular_file(path, limit)
    except (OSError, ValueError) as exc:
        raise InvalidConfig(f"cannot read {what} {path}", _describe(exc)) from exc


def _describe(exc: Exception) -> str:
    """An OSError in words: its message and errno name, no file content (there is none in it)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _parse_yaml_or_json(raw: bytes, path: str) -> dict[str, Any]:
    try:
        document = json.loads(raw)  # install-cni writes JSON; skips the YAML import
    except RecursionError as exc:
        raise InvalidConfig(f"kubeconfig {path} is nested too deeply") from exc
    except ValueError:
        document = _parse_yaml(raw, path)
    if not isinstance(document, dict):
        raise InvalidConfig(f"kubeconfig {path} is not a mapping")
    return document


def _parse_yaml(raw: bytes, path: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except RecursionError as exc:
        raise InvalidConfig(f"kubeconfig {path} is nested too deeply") from exc
    except yaml.YAMLError as exc:
        # YAML's own message quotes the offending line: position only.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InvalidConfig(f"kubeconfig {path} is neither JSON nor YAML", f"{type(exc).__name__}{where}") from exc


def _string(mapping: dict[str, Any], key: str, where: str, path: str) -> str:
    """The string at ``key``; raises InvalidConfig when it is missing, empty or not a string."""
    value = _optional_string(mapping, key, where, path)
    if value is None:
        raise InvalidConfig(f"kubeconfig {path}: {_label(where, key)} is missing")
    return value


def _optional_string(mapping: dict[str, Any], key: str, where: str, path: str) -> str | None:
    """The string at ``key``, None when missing or empty; raises InvalidConfig when it is not a string."""
    value = mapping.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidConfig(f"kubeconfig {path}: {_label(where, key)} is not a string", type(value).__name__)
    return value


def _label(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _named(document: dict[str, Any], section: str, name: str, path: str) -> dict[str, Any]:
    """The ``context``/``cluster``/``user`` mapping of the ``section`` entry called ``name``."""
    field = section[:-1]
    items = document.get(section)
    if not isinstance(items, list):
        raise InvalidConfig(f"kubeconfig {path}: {section} is not a list")
    for item in items:
        if isinstance(item, dict) and item.get("name") == name:
            value = item.get(field)
            if not isinstance(value, dict):
                raise InvalidConfig(f"kubeconfig {path}: the {field} of the current context is not a mapping")
            return value
    raise InvalidConfig(f"kubeconfig {path}: no {field} of that name in {section}", "named by the current context")


def _server_url(server: str, path: str) -> str:
    from urllib.parse import urlsplit

    problem = None
    if _URL_FORBIDDEN.search(server):
        problem = "contains whitespace or control characters"
    else:
        try:
            url = urlsplit(server)
            _ = url.port  # raises ValueError for a port that is not a number in range
        except ValueError:
            problem = "has an invalid port"
        else:
            if url.scheme not in ("http", "https") or not url.hostname:
                problem = "is not an http(s) URL with a host"
    if problem:
        raise InvalidConfig(f"kubeconfig {path}: cluster.server {problem}")
    return server.rstrip("/")


def _data_or_file(section: dict[str, Any], key: str, base: str, where: str, path: str) -> bytes | None:
    data = _optional_string(section, f"{key}-data", where, path)
    if data:
        try:
            return base64.b64decode(data)
        except (binascii.Error, ValueError) as exc:
            raise InvalidConfig(f"kubeconfig {path}: {where}.{key}-data is not base64") from exc
    name = _optional_string(section, key, where, path)
    if name:
        return _read_file(os.path.join(base, name), MAX_CREDENTIAL_FILE_BYTES, f"{where}.{key}")
    return None


def _text(raw: bytes, what: str, path: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidConfig(f"kubeconfig {path}: {what} is not UTF-8 text") from exc


class ApiPodAnnotations:
    """The real ``PodAnnotations``: the kubeconfig is read and the pod fetched on each call.

    ``key`` is the annotation's name, ``timeout`` bounds the GET (seconds).
    """

    __slots__ = ("kubeconfig", "key", "timeout")

    def __init__(self, kubeconfig: str, key: str, timeout: float) -> None:
        self.kubeconfig = kubeconfig
        self.key = key
        self.timeout = timeout

    def anycast_annotation(self, namespace: str, name: str) -> str | None:
        """The value of the pod's annotation ``key``, None when the pod has none.

        Raises what load_kubeconfig and get_pod_annotation raise (a pod that
        is not found is KubernetesUnreachable, code 11: the runtime retries).
        """
        credentials = load_kubeconfig(self.kubeconfig)
        return get_pod_annotation(credentials, namespace, name, self.key, self.timeout)
