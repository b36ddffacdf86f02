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

from collections.abc import Mapping

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
