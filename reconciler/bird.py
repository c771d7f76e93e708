"""The BIRD adapter: make BIRD export exactly a set of anycast prefixes.

The one place where flock writes BIRD's files and talks to its control
socket. Rendering is pure (``reconciler.bird_render``), the socket protocol
lives in ``reconciler.bird_control``; this module sequences them safely:

1. nothing to do if the set equals the one BIRD last confirmed and the files
   on disk still hold its bytes — no connection, no write, no ``configure``;
2. connect first. With nothing listening on the socket (BIRD down or
   restarting) the include file alone is still rewritten to the requested
   set — unchecked, see below — so a BIRD starting meanwhile loads exactly
   the desired set, never a larger, older one; the call fails
   (``unreachable``) and the caller retries and probes for BIRD's return;
3. a fresh exporter (reconciler restart) whose files already match asks BIRD
   what its static protocols hold and adopts it without a reload if equal;
4. write each changed file atomically, keeping the previous bytes in memory;
5. ``configure check`` on the config BIRD will load; a rejection (8xxx/9xxx)
   restores the previous files — the running daemon never saw the candidate;
6. ``configure``, judged by its code (0003/0004/0005 accepted; anything else
   restores the previous files);
7. confirm: BIRD's static protocols hold as many routes as rendered (polled
   until the timeout after 0004/0005, where BIRD is still switching).

Any failure forgets what was applied, so the next call goes through step 3
and looks at BIRD instead of trusting memory (a ``configure`` whose reply was
lost may or may not have been loaded). A BIRD restart needs nothing special:
it loads the include on disk, which is the last accepted one or, when BIRD
could not be reached, the last requested one.

Why writing without ``configure check`` is safe there: only the include is
written, and it comes from our own renderer (``bird_render``: two static
blocks, one ``route P blackhole;`` per validated host prefix, golden-tested
and checked by a real BIRD in the netns tests), which differs from an
accepted include only in its route lines. What BIRD may reject is the
operator's ``bird.conf`` around it, and a BIRD that rejects its own config
does not start either way. The managed ``bird.conf`` is never written
unchecked. A rejected candidate (8xxx/9xxx) is still rolled back; a
connection lost in the middle of an apply leaves the new include in place,
for the same reason.

Include mode checks and reloads the config BIRD itself was started with
(``configure check`` / ``configure`` without a file name) — the file that
includes ours, so a broken operator edit there blocks our update and is
reported with BIRD's file:line message; a pending (valid) operator edit is
applied along with ours. Managed mode checks and loads ``bird.config_file``
by name (``configure "<file>"``), so what was checked is what runs.

Never raises for anything BIRD does or says, or for file errors; failures
come back as ``ExportOutcome(ok=False, error=...)`` and in
:meth:`BirdExporter.status`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from netconf.files import fsync_directory, replace_file
from netconf.values import IPAddress
from reconciler.bird_control import (
    CODE_CONFIGURATION_OK,
    CODE_READING_CONFIGURATION,
    CODE_RECONFIGURED,
    CONFIGURE_ACCEPTED,
    BirdControl,
    BirdError,
    BirdNotListening,
    BirdReply,
    parse_neighbor_addresses,
    parse_protocols,
    parse_route_count,
    parse_route_networks,
    parse_status,
    probe_listening,
    quote_argument,
)
from reconciler.bird_render import (
    STATIC_PROTOCOL4,
    STATIC_PROTOCOL6,
    PrefixSet,
    render_include,
    render_managed_config,
)
from reconciler.node_config import BgpSettings, BirdSettings

__all__ = [
    "BirdExporter",
    "ExportOutcome",
    "render_include",
    "render_managed_config",
]

log = logging.getLogger(__name__)

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network

# How often to look again while BIRD finishes a reconfiguration it answered
# with 0004/0005 (old protocols still flushing).
_CONFIRM_POLL = 0.01


@dataclass(frozen=True)
class ExportOutcome:
    """What one ensure_exported call achieved.

    ``reloaded``: BIRD accepted a ``configure`` in this call. ``ok`` with
    ``reloaded`` False: nothing had changed. ``unreachable``: nothing
    listened on the socket. ``staged``: BIRD did not confirm, but the
    include on disk holds the requested set for BIRD's next start.
    """

    ok: bool
    reloaded: bool
    error: str | None = None
    unreachable: bool = False
    staged: bool = False


class _Rejected(Exception):
    """BIRD answered a step with a code that means no; internal to this module."""


class _Unconfirmed(Exception):
    """BIRD accepted the reload but its tables do not show the rendered routes."""


class BirdExporter:
    """Keeps BIRD's exported anycast prefixes equal to a desired set.

    One instance is the single writer of the include file (and of bird.conf
    in managed mode). Thread-safe: ensure_exported calls are serialized;
    status() may run concurrently from an HTTP handler.
    """

    def __init__(self, settings: BirdSettings, bgp: BgpSettings | None) -> None:
        """Raises ValueError if managed mode lacks BGP settings or they cannot be rendered."""
        if settings.mode == "managed" and bgp is None:
            raise ValueError("bird.mode 'managed' needs bgp settings")
        self.settings = settings
        self._managed_config = (
            render_managed_config(bgp, settings) if settings.mode == "managed" and bgp else None
        )
        self._neighbor_names = tuple(n.name for n in bgp.neighbors) if self._managed_config and bgp else ()
        self._configured_peers: frozenset[IPAddress] = frozenset(n.address for n in bgp.neighbors) if bgp else frozenset()
        # Include mode: the operator's bird.conf names the peers; learned
        # from BIRD (``show protocols all``) whenever an apply succeeds.
        self._learned_peers: frozenset[IPAddress] = frozenset()
        self._apply_lock = threading.Lock()
        self._state_lock = threading.Lock()
        # Bytes BIRD confirmed last, per file path; empty until a success and
        # after any failure.
        self._applied: dict[str, bytes] = {}
        self._applied_set: PrefixSet | None = None
        self._last_error: str | None = None
        self._last_reload: float | None = None
        self._reloads = 0
        self._exported: dict[str, int] | None = None
        self._config_read: str | None = None

    # --- public --------------------------------------------------------------

    def ensure_exported(self, prefixes: Collection[Prefix]) -> ExportOutcome:
        """Make BIRD export exactly these prefixes; never raises for BIRD or file trouble."""
        with self._apply_lock:
            try:
                wanted = PrefixSet.of(prefixes)
            except TypeError as exc:
                return self._failed(f"cannot render the BIRD include: {exc}", reloaded=False)
            # Rendering is deterministic: the same set means the same bytes.
            if wanted == self._applied_set and self._applied and self._disk_matches(self._applied):
                return ExportOutcome(ok=True, reloaded=False)
            files = self._render(wanted)
            expected = {STATIC_PROTOCOL4: len(wanted.v4), STATIC_PROTOCOL6: len(wanted.v6)}
            reloaded = False
            try:
                with BirdControl(self.settings.socket, self.settings.timeout) as bird:
                    if not self._applied and self._disk_matches(files) and self._bird_holds(bird, wanted):
                        # A restarted reconciler (or BIRD, restarted on a
                        # staged include) holds exactly this: adopt it without a reload.
                        self._accepted(wanted, files, expected)
                        self._learn_peers(bird)
                        return ExportOutcome(ok=True, reloaded=False)
                    configured = self._check_and_configure(bird, files)
                    reloaded = True
                    self._note_reload()
                    self._confirm(bird, expected, settling=configured.code != CODE_RECONFIGURED)
                    self._accepted(wanted, files, expected)
                    self._learn_peers(bird)
            except BirdNotListening as exc:
                staged = self._stage_include(files)
                outcome = self._failed(str(exc), reloaded=reloaded)
                return ExportOutcome(False, reloaded, outcome.error, unreachable=True, staged=staged)
            except (BirdError, _Rejected, _Unconfirmed) as exc:
                return self._failed(str(exc), reloaded=reloaded)
            except OSError as exc:
                return self._failed(f"cannot write BIRD files: {exc}", reloaded=reloaded)
            return ExportOutcome(ok=True, reloaded=True)

    def status(self) -> dict[str, Any]:
        """A snapshot for /readyz and metrics; never raises.

        Keys: mode, socket, reachable, last_error (of the last
        ensure_exported, None after a success), last_reload (wall-clock
        epoch seconds of the last accepted ``configure``), reloads (count),
        exported ({protocol: routes} last confirmed), protocols ({name:
        state}), sessions ({BGP protocol: info such as "Established"}),
        bird (version, router id, last reboot/reconfiguration as BIRD prints
        them), config_read (the file BIRD said it read on the last reload) and
        unreachable_reason when BIRD could not be asked.
        """
        with self._state_lock:
            report: dict[str, Any] = {
                "mode": self.settings.mode,
                "socket": self.settings.socket,
                "reachable": False,
                "last_error": self._last_error,
                "last_reload": self._last_reload,
                "reloads": self._reloads,
                "exported": dict(self._exported) if self._exported is not None else None,
                "config_read": self._config_read,
                "protocols": {},
                "sessions": {},
                "bird": {},
            }
        try:
            with BirdControl(self.settings.socket, self.settings.timeout) as bird:
                report["bird"] = parse_status(bird.command("show status"))
                protocols = parse_protocols(bird.command("show protocols"))
        except BirdError as exc:
            report["unreachable_reason"] = str(exc)
            return report
        report["reachable"] = True
        report["protocols"] = {name: p.state for name, p in protocols.items()}
        report["sessions"] = {name: p.info for name, p in protocols.items() if p.proto == "BGP"}
        return report

    def probe(self) -> bool:
        """Does something accept connections on BIRD's socket? A connect and hang-up; never raises."""
        return probe_listening(self.settings.socket, min(self.settings.timeout, 0.5))

    def peer_addresses(self) -> frozenset[IPAddress]:
        """BGP neighbor addresses: the node config's ``bgp.neighbors``, plus (include mode)
        those BIRD reported at the last successful apply. Empty in include mode
        until BIRD was reached once; pools and the node's own addresses still apply."""
        with self._state_lock:
            return self._configured_peers | self._learned_peers

    def ensure_bootstrap_files(self) -> list[str]:
        """Create the files BIRD needs to start, where missing; returns the paths written.

        BIRD refuses to start when its config or an included file is missing,
        and the include is ours: call this before BIRD starts (an init step,
        a lab) so the first start works with an empty set. Never overwrites
        and never talks to BIRD; later changes go through ensure_exported.
        Raises OSError.
        """
        written = []
        for path, data in self._render(PrefixSet()).items():
            if not os.path.exists(path):
                _write_atomic(path, data, default_mode=self._default_mode(path))
                written.append(path)
        return written

    def observe_exported(self) -> frozenset[Prefix] | None:
        """The prefixes BIRD's flock static protocols hold now; None if BIRD cannot be asked."""
        try:
            with BirdControl(self.settings.socket, self.settings.timeout) as bird:
                return frozenset(self._observe(bird))
        except BirdError:
            return None

    # --- steps ---------------------------------------------------------------

    def _render(self, prefixes: PrefixSet) -> dict[str, bytes]:
        files = {self.settings.include_file: render_include(prefixes)}
        if self._managed_config is not None:
            files[self.settings.config_file] = self._managed_config
        return files

    def _stage_include(self, files: dict[str, bytes]) -> bool:
        """BIRD is not listening: put the requested include on disk for its next start.

        Only the include (our own rendering, see the module docstring), and
        only when it differs. Returns whether the file now holds it.
        """
        path = self.settings.include_file
        data = files[path]
        try:
            if _read_or_none(path) != data:
                _write_atomic(path, data, default_mode=self._default_mode(path))
                log.info("BIRD not listening: rewrote %s for its next start", path)
        except OSError as exc:
            log.error("BIRD not listening and %s cannot be rewritten: %s", path, exc)
            return False
        return True

    def _learn_peers(self, bird: BirdControl) -> None:
        if self._managed_config is not None:
            return  # managed: the neighbors are the node config's
        try:
            learned = frozenset(parse_neighbor_addresses(bird.command("show protocols all")))
        except BirdError as exc:
            log.warning("cannot learn BGP neighbors from BIRD: %s", exc)
            return
        with self._state_lock:
            self._learned_peers = learned

    def _default_mode(self, path: str) -> int:
        # A new managed bird.conf may hold BGP passwords: not world-readable.
        return 0o640 if path == self.settings.config_file and self._managed_config else 0o644

    def _check_and_configure(self, bird: BirdControl, files: dict[str, bytes]) -> BirdReply:
        """Write changed files, check, configure; restore the previous files unless kept.

        The previous files come back when BIRD says no (or a write fails).
        When the connection is lost mid-way, a changed include alone stays:
        it is our own rendering, and the older one may advertise prefixes no
        longer desired to a BIRD that restarts now. Returns BIRD's accepted
        ``configure`` reply; raises _Rejected, BirdError and OSError.
        """
        previous = {path: _read_or_none(path) for path in files}
        changed = {path: data for path, data in files.items() if previous[path] != data}
        keep = False
        try:
            for path, data in changed.items():
                _write_atomic(path, data, default_mode=self._default_mode(path))
            if self.settings.mode == "managed":
                config = quote_argument(self.settings.config_file)
                check_command, configure_command = f"configure check {config}", f"configure {config}"
            else:
                check_command, configure_command = "configure check", "configure"
            check = bird.command(check_command)
            if check.code != CODE_CONFIGURATION_OK:
                raise _Rejected(f"BIRD rejected the new configuration ({check_command}): {_errors(check)}")
            reply = bird.command(configure_command)
            if reply.code not in CONFIGURE_ACCEPTED:
                raise _Rejected(f"BIRD refused to reload ({configure_command}): {_errors(reply)}")
            keep = True
            read = reply.texts(CODE_READING_CONFIGURATION)
            with self._state_lock:
                self._config_read = read[0].removeprefix("Reading configuration from ") if read else None
            log.info("BIRD reloaded: %s", reply.describe())
        except BirdError:
            keep = set(changed) <= {self.settings.include_file}
            raise
        finally:
            if not keep:
                self._restore(previous, changed)
        return reply

    def _restore(self, previous: dict[str, bytes | None], changed: dict[str, bytes]) -> None:
        """Put back the files as they were before this attempt (best effort, logged)."""
        for path in changed:
            before = previous[path]
            try:
                if before is None:
                    _remove(path)
                else:
                    _write_atomic(path, before, default_mode=0o644)
            except OSError as exc:
                log.error("cannot restore %s after a failed BIRD update: %s", path, exc)

    def _confirm(self, bird: BirdControl, expected: dict[str, int], settling: bool) -> None:
        """Check that BIRD's static protocols hold the rendered number of routes.

        After 0003 BIRD has reconfigured the static protocols synchronously,
        so one look decides. After 0004/0005 it is still switching (old
        protocols flushing, or our config queued): poll until the timeout.
        Raises _Unconfirmed.
        """
        deadline = time.monotonic() + self.settings.timeout
        while True:
            counts, problem = self._count_routes(bird)
            if counts == expected:
                return
            if not settling or time.monotonic() >= deadline:
                raise _Unconfirmed(
                    problem or f"BIRD accepted the configuration but holds {counts} routes, expected {expected}"
                )
            time.sleep(_CONFIRM_POLL)

    def _count_routes(self, bird: BirdControl) -> tuple[dict[str, int | None], str | None]:
        counts: dict[str, int | None] = {}
        problem = None
        for protocol in (STATIC_PROTOCOL4, STATIC_PROTOCOL6):
            reply = bird.command(f"show route protocol {protocol} count")
            counts[protocol] = None if reply.is_error else parse_route_count(reply)
            if reply.is_error:
                problem = (
                    f"BIRD has no protocol {protocol} ({reply.describe()}): is "
                    f"{self.settings.include_file} included from BIRD's config?"
                )
        return counts, problem

    def _bird_holds(self, bird: BirdControl, wanted: PrefixSet) -> bool:
        """Does BIRD already hold exactly these statics (and, managed, our neighbors)?"""
        if PrefixSet.of(self._observe(bird)) != wanted:
            return False
        if self._neighbor_names:
            protocols = parse_protocols(bird.command("show protocols"))
            if not set(self._neighbor_names) <= set(protocols):
                return False
        return True

    def _observe(self, bird: BirdControl) -> set[Prefix]:
        networks: set[Prefix] = set()
        for protocol in (STATIC_PROTOCOL4, STATIC_PROTOCOL6):
            networks |= parse_route_networks(bird.command(f"show route protocol {protocol}"))
        return networks

    # --- bookkeeping ---------------------------------------------------------

    def _accepted(self, wanted: PrefixSet, files: dict[str, bytes], expected: dict[str, int]) -> None:
        self._applied_set = wanted
        self._applied = dict(files)
        with self._state_lock:
            self._exported = dict(expected)
            self._last_error = None

    def _note_reload(self) -> None:
        with self._state_lock:
            self._reloads += 1
            self._last_reload = time.time()

    def _failed(self, error: str, reloaded: bool) -> ExportOutcome:
        # After a failure BIRD may run the old files, the new ones (a reply
        # lost after `configure` was sent) or be gone: forget what was
        # applied, so the next call looks at BIRD again (adopting what it
        # holds when that is already right) instead of trusting memory.
        self._applied = {}
        self._applied_set = None
        log.warning("BIRD export failed: %s", error)
        with self._state_lock:
            self._last_error = error
        return ExportOutcome(ok=False, reloaded=reloaded, error=error)

    def _disk_matches(self, files: dict[str, bytes]) -> bool:
        return all(_read_or_none(path) == data for path, data in files.items())


def _errors(reply: BirdReply) -> str:
    """The error lines of a reply (8002 carries file:line:col and the message)."""
    lines = [f"{code:04d} {text}".rstrip() for code, text in reply.lines if code >= 8000]
    return "; ".join(lines) or reply.describe()


# --- files -------------------------------------------------------------------


def _read_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _write_atomic(path: str, data: bytes, default_mode: int) -> None:
    """Replace path with data: temp file in the same directory, fsync, rename, fsync dir.

    BIRD may re-read the file at any moment (an operator's ``birdc
    configure``); it must see the old or the new file, never half of one.
    Mode and ownership of an existing file are kept (a BIRD running as user
    ``bird`` must still read it; bird.conf may hold passwords).
    """
    try:
        existing = os.stat(path)
    except FileNotFoundError:
        replace_file(path, data, mode=default_mode)
    else:
        replace_file(path, data, mode=stat.S_IMODE(existing.st_mode), owner=(existing.st_uid, existing.st_gid))
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_directory(os.path.dirname(os.path.abspath(path)))
