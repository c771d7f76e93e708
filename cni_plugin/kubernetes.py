"""The pod annotation as a source of anycast addresses: one GET to the API server.

Used only on ADD, only when the config names a kubeconfig, CNI_ARGS carry
K8S_POD_NAMESPACE/K8S_POD_NAME and no explicit source named addresses.

Why the standard library and not a Kubernetes client: the plugin is exec'd
for every pod start, and the client libraries cost far more to import than
the whole rest of an ADD (measured: lightkube ~0.5–1 s with its HTTP stack
on this machine, ``http.client`` + ``ssl`` ~15 ms). A single authenticated
GET needs none of what they add (watches, retries, typed models). The
reconciler, which holds a long-lived watch, does use a client library.
Only the kubeconfig forms a node plugin meets are read: token or token
file, client certificate and key (file or data), CA (file or data).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from netconf.errors import InvalidConfig, KubernetesRefused, KubernetesUnreachable


@dataclass(frozen=True)
class ApiCredentials:
    server: str
    token: str | None = None
    ca_file: str | None = None
    ca_data: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    insecure: bool = False


def load_kubeconfig(path: str) -> ApiCredentials:
    """The current context's server and credentials; raises InvalidConfig (code 7)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise InvalidConfig(f"cannot read kubeconfig {path}", repr(exc)) from exc
    document = _parse_yaml_or_json(raw, path)
    try:
        context_name = document["current-context"]
        context = _named(document.get("contexts"), context_name)["context"]
        cluster = _named(document.get("clusters"), context["cluster"])["cluster"]
        user = _named(document.get("users"), context["user"])["user"] if context.get("user") else {}
    except (KeyError, TypeError) as exc:
        raise InvalidConfig(f"kubeconfig {path} has no usable current context", repr(exc)) from exc
    base = os.path.dirname(path)
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = _read_file(os.path.join(base, user["tokenFile"])).decode().strip()
    return ApiCredentials(
        server=cluster["server"].rstrip("/"),
        token=token,
        ca_file=os.path.join(base, cluster["certificate-authority"]) if cluster.get("certificate-authority") else None,
        ca_data=base64.b64decode(cluster["certificate-authority-data"]) if cluster.get("certificate-authority-data") else None,
        client_cert=_data_or_file(user, "client-certificate", base),
        client_key=_data_or_file(user, "client-key", base),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


def get_pod_annotation(credentials: ApiCredentials, namespace: str, name: str, key: str, timeout: float) -> str | None:
    """The pod's annotation ``key`` (None when absent).

    Raises KubernetesUnreachable (code 11: the runtime retries the ADD) for
    network failures, timeouts, 5xx and a pod not (yet) found, and
    KubernetesRefused (code 107) when the credentials are rejected.
    """
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
    except ValueError as exc:
        raise KubernetesUnreachable(f"API server sent an unreadable pod {namespace}/{name}", repr(exc)) from exc
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return annotations.get(key)


def _get(credentials: ApiCredentials, path: str, timeout: float) -> tuple[int, bytes]:
    import http.client
    import socket

    url = urlsplit(credentials.server)
    headers = {"Accept": "application/json", "User-Agent": "flock-anycast"}
    if credentials.token:
        headers["Authorization"] = f"Bearer {credentials.token}"
    try:
        if url.scheme == "https":
            connection = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=timeout, context=_tls_context(credentials))
        else:
            connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
        try:
            connection.request("GET", url.path.rstrip("/") + path, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()
    except (OSError, http.client.HTTPException, socket.timeout) as exc:
        raise KubernetesUnreachable(
            f"API server {credentials.server} unreachable within {timeout:g}s", repr(exc)
        ) from exc


def _tls_context(credentials: ApiCredentials):
    import ssl

    context = ssl.create_default_context(cafile=credentials.ca_file, cadata=credentials.ca_data.decode() if credentials.ca_data else None)
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
    return context


def _parse_yaml_or_json(raw: bytes, path: str) -> dict[str, Any]:
    try:
        document = json.loads(raw)  # install-cni writes JSON; skips the YAML import
    except ValueError:
        import yaml

        try:
            document = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise InvalidConfig(f"kubeconfig {path} is neither JSON nor YAML", str(exc)) from exc
    if not isinstance(document, dict):
        raise InvalidConfig(f"kubeconfig {path} is not a mapping")
    return document


def _named(items, name: str) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return item
    raise KeyError(name)


def _data_or_file(user: dict[str, Any], key: str, base: str) -> bytes | None:
    if user.get(f"{key}-data"):
        return base64.b64decode(user[f"{key}-data"])
    if user.get(key):
        return _read_file(os.path.join(base, user[key]))
    return None


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise InvalidConfig(f"cannot read {path} named in the kubeconfig", repr(exc)) from exc


def annotated_anycast(config, env):
    """The anycast request from the pod annotation, or None when this source does not apply.

    Raises what get_pod_annotation raises, and InvalidAnycastAddress for a
    malformed annotation.
    """
    from cni_plugin.anycast import AnycastRequest, parse_anycast_addresses, split_addresses

    namespace = env.args.get("K8S_POD_NAMESPACE")
    name = env.args.get("K8S_POD_NAME")
    if not config.flock.kubeconfig or not namespace or not name:
        return None
    credentials = load_kubeconfig(config.flock.kubeconfig)
    value = get_pod_annotation(credentials, namespace, name, config.flock.annotation, config.flock.api_timeout)
    items = split_addresses(value)
    if not items:
        return None
    source = f"annotation {config.flock.annotation} of pod {namespace}/{name}"
    return AnycastRequest(source, parse_anycast_addresses(items, source))
