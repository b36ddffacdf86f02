"""BFD under load, as bench.scale --bfd and bench.leak --bfd see it (issue 14, must-show 4).

What the ToR's BIRD says (`birdc show bfd sessions`, `birdc show protocols`, the state changes its
protocol bfd traces to a file), what the speaker says (its /status: each peer's `bfd` and
`since`), and how long the speaker's asyncio loop takes to answer /healthz meanwhile (the
status endpoint is served by that loop, so a slow answer is a busy loop). The parsers and
summaries are pure; `fetch_status` (the speaker's Unix socket) and `LoopProbe` (/healthz on its
statusAddress, from inside its namespace) are the thin shell.
"""
from __future__ import annotations

import ctypes
import os
import re
import socket
import threading
import time
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000


# ---- BIRD's words ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BirdBfd:
    state: str  # Up, Down, Init, AdminDown
    since: str


def parse_bfd_sessions(text: str) -> dict[str, BirdBfd]:
    """`birdc show bfd sessions` -> {peer address: (state, since)}. The Since column is one or two
    words depending on `timeformat protocol`; Interval and Timeout end the line."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[2] not in ("Up", "Down", "Init", "AdminDown"):
            continue
        out[parts[0]] = BirdBfd(parts[2], " ".join(parts[3:-2]))
    return out


_CHANGE = re.compile(r"Session to (\S+) changed state from (\w+) to (\w+)")


def tor_transitions(log_text: str) -> list[tuple[str, str, str]]:
    """(peer, from, to) for every BFD state change BIRD traced, in order."""
    return [m.groups() for m in _CHANGE.finditer(log_text)]


def count_tor_downs(log_text: str) -> dict[str, int]:
    """Per peer, how often BIRD's BFD session went from Up to anything else."""
    out: dict[str, int] = {}
    for peer, old, new in tor_transitions(log_text):
        if old == "Up" and new != "Up":
            out[peer] = out.get(peer, 0) + 1
    return out


_STATE = re.compile(r"> (\w+): State changed to (\w+)")


def count_bgp_downs(log_text: str, names: tuple[str, ...]) -> dict[str, int]:
    """Per protocol of names, how often BIRD traced it leaving state up (`debug { states }`)."""
    out, last = {n: 0 for n in names}, {}
    for name, state in _STATE.findall(log_text):
        if name in out:
            if last.get(name) == "up" and state != "up":
                out[name] += 1
            last[name] = state
    return out


def parse_protocols(text: str, names: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """`birdc show protocols` -> {name: (state, the rest of the line: since and info)} for names.
    A session that was reset has another `since`, so the rest differs."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0] in names:
            out[parts[0]] = (parts[3], " ".join(parts[4:]))
    return out


# ---- the speaker's words --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SpeakerPeer:
    state: str  # the BGP session's
    since: object
    bfd_state: str  # "" without BFD
    bfd_downs: int
    bfd_error: str


def speaker_peers(status: dict) -> dict[str, SpeakerPeer]:
    """The speaker's /status document -> {peer address: what BFD and BGP say}."""
    out = {}
    for p in status.get("peers", []):
        b = p.get("bfd") or {}
        out[p["address"]] = SpeakerPeer(p.get("state", ""), p.get("since"), b.get("state", ""),
                                        int(b.get("downs", 0) or 0), b.get("error", "") or "")
    return out


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Both ends at one moment."""
    speaker: dict[str, SpeakerPeer]
    tor_bfd: dict[str, BirdBfd]
    tor_protocols: dict[str, tuple[str, str]]
    tor_log_downs: dict[str, int]  # BFD Up -> not Up, from the trace file, since it was started
    tor_bgp_downs: dict[str, int] | None = None  # BGP up -> not up, likewise


def all_up(s: Snapshot, speaker_peers: tuple[str, ...], tor_peers: tuple[str, ...]) -> bool:
    """Every BFD session up on both ends: the speaker names them by the ToR's addresses, the ToR
    by the speaker's."""
    return (all(s.speaker.get(p) is not None and s.speaker[p].bfd_state == "up" for p in speaker_peers)
            and all(s.tor_bfd.get(p) is not None and s.tor_bfd[p].state == "Up" for p in tor_peers))


def why_not_up(s: Snapshot, speaker_peers: tuple[str, ...], tor_peers: tuple[str, ...]) -> str:
    def one(p: str) -> str:
        if p not in s.speaker:
            return f"{p} absent"
        q = s.speaker[p]
        return f"{p} {q.bfd_state or '-'}" + (f" ({q.bfd_error})" if q.bfd_error else "")

    tor = ", ".join(f"{p} {s.tor_bfd[p].state}" if p in s.tor_bfd else f"{p} absent" for p in tor_peers)
    return f"speaker: {', '.join(one(p) for p in speaker_peers)}; ToR: {tor}"


def delta(before: Snapshot, after: Snapshot) -> dict:
    """What changed between two snapshots: BFD downs seen by each end, sessions reset."""
    sp = {a: after.speaker[a].bfd_downs - p.bfd_downs for a, p in before.speaker.items() if a in after.speaker}
    tor = {a: after.tor_log_downs.get(a, 0) - before.tor_log_downs.get(a, 0)
           for a in set(before.tor_log_downs) | set(after.tor_log_downs)}
    tor_changed = {n: [" ".join(v), " ".join(after.tor_protocols.get(n, ("absent",)))]
                   for n, v in sorted(before.tor_protocols.items()) if after.tor_protocols.get(n) != v or v[0] != "up"}
    sp_changed = {a: [f"{p.state} since {p.since}", f"{q.state} since {q.since}" if (q := after.speaker.get(a)) else "absent"]
                  for a, p in sorted(before.speaker.items())
                  if a not in after.speaker or after.speaker[a].since != p.since or after.speaker[a].state != "up"}
    tor_bfd_changed = sum(1 for a, b in before.tor_bfd.items() if after.tor_bfd.get(a) != b)
    bgp = {n: (after.tor_bgp_downs or {}).get(n, 0) - c for n, c in (before.tor_bgp_downs or {}).items()}
    return {"bfd_downs_speaker": sum(sp.values()), "bfd_downs_speaker_by_peer": dict(sorted(sp.items())),
            "bfd_downs_tor": sum(tor.values()), "bfd_downs_tor_by_peer": dict(sorted(tor.items())),
            "tor_bfd_sessions_changed": tor_bfd_changed, "tor_bgp_downs_traced": bgp,
            "session_resets_speaker": len(sp_changed), "session_resets_tor": len(tor_changed),
            "sessions_changed_speaker": sp_changed, "sessions_changed_tor": tor_changed,
            "bfd_state_after": {a: p.bfd_state for a, p in sorted(after.speaker.items())},
            "tor_bfd_state_after": {a: b.state for a, b in sorted(after.tor_bfd.items())}}


# ---- how busy the speaker's loop was --------------------------------------------------------

def lag_summary(samples: list[tuple[float, float]], start: float | None = None, end: float | None = None) -> dict:
    """/healthz answer times (monotonic time sent, ms taken) -> their spread within [start, end];
    a probe that got no answer counts as its timeout."""
    ms = sorted(d for t, d in samples if (start is None or t >= start) and (end is None or t <= end))
    if not ms:
        return {"probes": 0}

    def pct(q: float) -> float:
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 1)

    return {"probes": len(ms), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": round(ms[-1], 1),
            "over_100ms": sum(1 for d in ms if d > 100), "over_300ms": sum(1 for d in ms if d > 300),
            "over_900ms": sum(1 for d in ms if d > 900)}


# ---- the speaker's re-list, from its log -------------------------------------------------------

LIST_LINE = (rb"nodes\.list via=(?P<via>\S+) count=(?P<count>\d+) changed=(?P<changed>\d+) "
             rb"deleted=(?P<deleted>\d+) resourceVersion=\S+ seconds=(?P<seconds>[0-9.]+)")


def list_fields(m: re.Match) -> dict:
    """A LIST_LINE match -> {via, count, changed, deleted, seconds}."""
    g = m.groupdict()
    via = g["via"].decode() if isinstance(g["via"], bytes) else g["via"]
    return {"via": via, "count": int(g["count"]), "changed": int(g["changed"]), "deleted": int(g["deleted"]),
            "seconds": float(g["seconds"])}


def relist_cause(log_text: str) -> str:
    """Why the Node watch listed again, from its log lines before the list: "410" (the watch was
    told its version is gone: an ERROR event or an HTTP 410), "error" (it failed otherwise and
    started over) or "" (neither seen)."""
    lines = [ln for ln in log_text.splitlines() if "nodes.watch." in ln]
    if any("nodes.watch.expired" in ln or ("nodes.watch.error" in ln and re.search(r"\b410\b", ln)) for ln in lines):
        return "410"
    return "error" if any("nodes.watch.error" in ln for ln in lines) else ""


# ---- the shell --------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _enter(ns: str) -> None:
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    finally:
        os.close(fd)


def http_get(address: str, path: str, timeout: float) -> bytes:
    """GET over a fresh connection, the body up to the close (the endpoint closes every one)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"GET {path}: {head[:80]!r}")
    return body


def fetch_status(sock: str) -> dict:
    """The speaker's /status, from its Unix socket (a path: no namespace to enter)."""
    from speaker import endpoint

    return endpoint.fetch(sock, "/status", 30.0)


class LoopProbe:
    """GET /healthz every `interval` seconds from a thread inside the speaker's namespace, one at a
    time; samples (monotonic time sent, ms to the answer). No answer within `timeout`: that time."""

    def __init__(self, ns: str, address: str, interval: float = 0.05, timeout: float = 5.0) -> None:
        self.ns, self.address, self.interval, self.timeout = ns, address, interval, timeout
        self.samples: list[tuple[float, float]] = []
        self.failures = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="loop-probe", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(self.timeout + 1)

    def _run(self) -> None:
        _enter(self.ns)
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                http_get(self.address, "/healthz", self.timeout)
            except OSError:
                self.failures += 1
            self.samples.append((t0, (time.monotonic() - t0) * 1000))
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - t0)))


class Observer:
    """Both ends of the speaker's BFD sessions: its /status (its Unix socket), the ToR's birdc and
    the ToR's BFD trace file. The speaker names the sessions by the ToR's addresses
    (speaker_peers), the ToR by the speaker's (tor_peers)."""

    def __init__(self, status_socket: str, birdc, tor_bfd_log: str, speaker_peers: tuple[str, ...],
                 tor_peers: tuple[str, ...], tor_protocols: tuple[str, ...] = ("pod_4", "pod_6")) -> None:
        self.status_socket, self.birdc = status_socket, birdc
        self.tor_bfd_log, self.speaker_peers, self.tor_peers = tor_bfd_log, speaker_peers, tor_peers
        self.tor_protocol_names = tor_protocols

    def tor_log(self) -> str:
        try:
            with open(self.tor_bfd_log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def snapshot(self) -> Snapshot:
        downs = {p: 0 for p in self.tor_peers}
        text = self.tor_log()
        downs.update(count_tor_downs(text))
        return Snapshot(speaker=speaker_peers(fetch_status(self.status_socket)),
                        tor_bfd=parse_bfd_sessions(self.birdc("show", "bfd", "sessions")),
                        tor_protocols=parse_protocols(self.birdc("show", "protocols"), self.tor_protocol_names),
                        tor_log_downs=downs, tor_bgp_downs=count_bgp_downs(text, self.tor_protocol_names))

    def wait_up(self, timeout: float) -> tuple[Snapshot, float]:
        """Until every BFD session is up on both ends; returns that snapshot and the wait."""
        t0 = time.monotonic()
        while True:
            s = self.snapshot()
            if all_up(s, self.speaker_peers, self.tor_peers):
                return s, time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"BFD not up on both ends within {timeout:.0f}s: "
                                   f"{why_not_up(s, self.speaker_peers, self.tor_peers)}")
            time.sleep(0.2)
