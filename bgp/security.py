"""Why a session under TCP MD5 or TTL security does not come up, in words. Pure, but for one read.

A wrong or missing TCP MD5 key (RFC 2385) and a TTL below the GTSM minimum (RFC 5082) have the
same symptom: the kernel drops the segments, nobody answers, and ExaBGP sees nothing but
connection attempts that time out. The kernel counts those drops per network namespace in
/proc/net/netstat (TcpExt): TCPMD5NotFound (a signed peer, no key here), TCPMD5Unexpected (a
signature arrived where no key is set), TCPMD5Failure (a wrong signature), TCPMinTTLDrop (below
the minimum TTL). They count what arrives here only: a peer that drops what we send shows on
its own counters, not on these.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from .types import PeerConfig

MD5_COUNTERS = ("TCPMD5Failure", "TCPMD5Unexpected", "TCPMD5NotFound")
TTL_COUNTERS = ("TCPMinTTLDrop",)
NETSTAT_PATHS = ("/proc/thread-self/net/netstat", "/proc/net/netstat")  # this thread's namespace first


def parse_netstat(text: str) -> dict[str, int]:
    """The TcpExt counters of a /proc/net/netstat text (pairs of header and value lines)."""
    lines = text.splitlines()
    out: dict[str, int] = {}
    for head, values in zip(lines[::2], lines[1::2]):
        names, numbers = head.split(), values.split()
        if names[:1] != ["TcpExt:"] or numbers[:1] != ["TcpExt:"]:
            continue
        for name, number in zip(names[1:], numbers[1:]):
            if number.lstrip("-").isdigit():
                out[name] = int(number)
    return out


def read_counters(paths: tuple[str, ...] = NETSTAT_PATHS) -> dict[str, int] | None:
    """The TcpExt counters of the namespace this thread runs in; None if none can be read."""
    for path in paths:
        try:
            with open(path) as f:
                return parse_netstat(f.read())
        except OSError:
            continue
    return None


def hint(peer: PeerConfig, quiet_for: float, counters: Mapping[str, int] | None) -> str:
    """What to tell about a peer under MD5 or GTSM that has had no TCP connection for
    `quiet_for` seconds; "" for a peer under neither."""
    parts = []
    if peer.password is not None:
        parts.append("TCP MD5 is configured: a wrong or missing password on either side makes the receiving "
                     "kernel drop every segment without an answer (it counts them in TcpExt TCPMD5Failure, "
                     "TCPMD5Unexpected or TCPMD5NotFound of its /proc/net/netstat; the peer's count ours)"
                     + _counts(counters, MD5_COUNTERS))
    if peer.ttl_security is not None:
        hops = peer.ttl_security
        plural = "s" if hops > 1 else ""
        parts.append(f"TTL security (GTSM) is configured for {hops} hop{plural}: segments arriving with a TTL "
                     f"below {256 - hops} are dropped, so the peer must send with TTL 255 (ttl-security on its "
                     f"side too) and be at most {hops} hop{plural} away (dropped here: TcpExt TCPMinTTLDrop)"
                     + _counts(counters, TTL_COUNTERS))
    if not parts:
        return ""
    return f"no TCP connection for {quiet_for:.0f}s; " + "; ".join(parts)


def _counts(counters: Mapping[str, int] | None, names: tuple[str, ...]) -> str:
    if counters is None:
        return "; this namespace's /proc/net/netstat could not be read"
    found = [f"{n}={counters[n]}" for n in names if n in counters]
    if not found:
        return ""
    return f"; this namespace's counters: {' '.join(found)}"


def combine(reason: str, extra: str) -> str:
    """ExaBGP's own reason first, then ours."""
    if not extra:
        return reason
    return f"{reason}; {extra}" if reason else extra


class QuietPeers:
    """Since when each peer under MD5 or GTSM has had no TCP connection, and what to say about it.

    Sessions marks a peer `quiet` when it leaves a TCP connection (or its settings change) and
    `connected` when one comes up; `check` gives the hint for every secured peer quiet for at
    least `hint_after` seconds ("" for one quiet for less: too early to blame anything), reading
    the kernel's counters once per check and only when some hint needs them, and when to check
    again (None: nobody left to watch)."""

    hint_after = 2.0  # seconds without a TCP connection before a hint says why it may be
    interval = 5.0  # the hint's counters are read again this often while a secured peer is quiet

    def __init__(self, read_counters: Callable[[], dict[str, int] | None], clock: Callable[[], float]) -> None:
        self.read_counters, self.clock = read_counters, clock
        self._since: dict[str, float] = {}

    def quiet(self, key: str, again: bool = False) -> None:
        """No TCP connection to `key` from now on (`again`: restart the count, its settings changed)."""
        if again or key not in self._since:
            self._since[key] = self.clock()

    def connected(self, key: str) -> None:
        self._since.pop(key, None)

    def forget(self, key: str) -> None:
        self._since.pop(key, None)

    def is_quiet(self, key: str) -> bool:
        return key in self._since

    def check(self, peers: Iterable[PeerConfig]) -> tuple[dict[str, str], float | None]:
        now = self.clock()
        hints: dict[str, str] = {}
        counters: dict[str, int] | None = None
        read = False
        again: float | None = None
        for p in peers:
            if not p.secured or p.key not in self._since:
                continue
            quiet = now - self._since[p.key]
            if quiet < self.hint_after:
                hints[p.key] = ""
                again = min(again or self.interval, self.hint_after - quiet)
                continue
            if not read:
                counters, read = self.read_counters(), True
            hints[p.key] = hint(p, quiet, counters)
            again = min(again or self.interval, self.interval)
        return hints, again
