"""Netlink for bench.scale, packed by hand so that watching 10k routes costs the bench little.

Self-contained on purpose (the speaker's own netlink code is what is being measured, and it is
being changed): a route dump, a route monitor (RTM_NEWROUTE/RTM_DELROUTE events) and a
sock_diag dump of established TCP sockets (what `ss -tn state established` reads), each opened
inside a named network namespace.
"""
from __future__ import annotations

import errno
import ipaddress
import select
import socket
import struct
import time

from reconciler.rtnl import in_netns, iter_messages

NETLINK_ROUTE, NETLINK_SOCK_DIAG = 0, 4
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTA_DST, RTA_GATEWAY = 1, 5
RTN_UNICAST = 1
RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x40, 0x400
TCP_ESTABLISHED = 1

_NLH = struct.Struct("=IHHII")
_RTM = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")
_DIAG_REQ = struct.Struct("=BBBBI HH16s16sI8s")  # inet_diag_req_v2 (sockid ports are big-endian)
_DIAG_MSG = struct.Struct("=BBBB")

# A route as the bench sees it: (family, destination bytes, prefix length)
RouteKey = tuple[int, bytes, int]


def route_key(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> RouteKey:
    return (socket.AF_INET if net.version == 4 else socket.AF_INET6, net.network_address.packed, net.prefixlen)


def _socket(netns: str, proto: int, groups: int = 0) -> socket.socket:
    with in_netns(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, 32 * 1024 * 1024)  # SO_RCVBUFFORCE (root)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    sock.bind((0, groups))
    return sock


def _route(payload: memoryview, protocol: int) -> tuple[RouteKey, bytes | None] | None:
    """(key, gateway bytes) of a unicast route of `protocol`, else None."""
    family, dst_len, _s, _t, _table, proto, _scope, rtype, _f = _RTM.unpack_from(payload, 0)
    if proto != protocol or rtype != RTN_UNICAST:
        return None
    dst, gw = b"", None
    off, end = _RTM.size, len(payload)
    while off + 4 <= end:
        length, kind = _RTA.unpack_from(payload, off)
        if length < 4:
            break
        kind &= 0x3FFF
        if kind == RTA_DST:
            dst = bytes(payload[off + 4: off + length])
        elif kind == RTA_GATEWAY:
            gw = bytes(payload[off + 4: off + length])
        off += (length + 3) & ~3
    return (family, dst, dst_len), gw


def dump_routes(netns: str, protocol: int) -> dict[RouteKey, bytes | None]:
    """Every unicast route of `protocol` in the namespace (all tables): key -> gateway (None: multipath)."""
    out: dict[RouteKey, bytes | None] = {}
    buf = bytearray(1 << 20)
    with _socket(netns, NETLINK_ROUTE) as sock:
        body = _RTM.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)
        sock.send(_NLH.pack(16 + len(body), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
        while True:
            n = sock.recv_into(buf)
            for kind, _flags, _seq, payload in iter_messages(memoryview(buf)[:n]):
                if kind in (NLMSG_DONE, NLMSG_ERROR):
                    return out
                if kind == RTM_NEWROUTE:
                    r = _route(payload, protocol)
                    if r is not None:
                        out[r[0]] = r[1]


class RouteMonitor:
    """Route add/delete events of one protocol in a namespace, read as they come."""

    def __init__(self, netns: str, protocol: int) -> None:
        self.netns, self.protocol = netns, protocol
        self.sock = _socket(netns, NETLINK_ROUTE, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        self.sock.setblocking(False)
        self.buf = bytearray(1 << 20)
        self.overruns = 0

    def close(self) -> None:
        self.sock.close()

    def read(self, timeout: float) -> tuple[list[RouteKey], list[RouteKey], bool]:
        """(added, deleted, overrun) after waiting up to `timeout` for the first event.

        On an overrun (ENOBUFS: events were lost) the caller must re-read the table with a dump."""
        added: list[RouteKey] = []
        deleted: list[RouteKey] = []
        if not select.select([self.sock], [], [], timeout)[0]:
            return added, deleted, False
        while True:
            try:
                n = self.sock.recv_into(self.buf)
            except BlockingIOError:
                return added, deleted, False
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    return added, deleted, True
                raise
            for kind, _flags, _seq, payload in iter_messages(memoryview(self.buf)[:n]):
                if kind == RTM_NEWROUTE or kind == RTM_DELROUTE:
                    r = _route(payload, self.protocol)
                    if r is not None:
                        (added if kind == RTM_NEWROUTE else deleted).append(r[0])


class EstablishedWatch:
    """Established TCP connections to or from port 179 in a namespace, via sock_diag (as `ss` does)."""

    def __init__(self, netns: str) -> None:
        self.sock = _socket(netns, NETLINK_SOCK_DIAG)
        self.buf = bytearray(1 << 16)

    def close(self) -> None:
        self.sock.close()

    def peers(self) -> set[str]:
        """Remote addresses of the established BGP connections (the ToR's view: its peers)."""
        out: set[str] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            req = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_ESTABLISHED,
                                 0, 0, b"", b"", 0, b"")
            self.sock.send(_NLH.pack(16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
            done = False
            while not done:
                n = self.sock.recv_into(self.buf)
                for kind, _flags, _seq, payload in iter_messages(memoryview(self.buf)[:n]):
                    if kind in (NLMSG_DONE, NLMSG_ERROR):
                        done = True
                        break
                    fam, state = payload[0], payload[1]
                    sport, dport = struct.unpack_from(">HH", payload, 4)
                    if state != TCP_ESTABLISHED or 179 not in (sport, dport):
                        continue
                    raw = bytes(payload[24:40])
                    out.add(str(ipaddress.ip_address(raw[:4] if fam == socket.AF_INET else raw)))
        return out


def wait_for(pred, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = pred()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
