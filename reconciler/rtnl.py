"""rtnetlink for routes, packed by hand.

pyroute2's one-call-per-route API costs about 20x the kernel's own time, so the hot paths (dump
of a table, batched replace/delete) pack and parse rtnetlink messages with `struct` here: many
requests per sendto, acknowledgements read back per chunk. `pack_*` and `parse_*` are pure.
"""
from __future__ import annotations

import ctypes
import errno as E
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from .types import KernelRoute, NetlinkError, Route

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP, NLM_F_REPLACE, NLM_F_CREATE = 0x300, 0x100, 0x400
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 9, 15
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400

_NLH = struct.Struct("=IHHII")
_RTM = struct.Struct("=BBBBBBBBI")
_IFA = struct.Struct("=BBBBI")
_RTA = struct.Struct("=HH")
_RTNH = struct.Struct("=HBBi")
_ERR = struct.Struct("=i")
CHUNK = 64 * 1024


def _align(n: int) -> int:
    return (n + 3) & ~3


# ---- packing (pure) -------------------------------------------------------------------------

_MSG = struct.Struct("=IHHIIBBBBBBBBI")  # nlmsghdr + rtmsg, one pack per message
_ATTR_U32 = struct.Struct("=HHI")
_NEW_FLAGS = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE
_DEL_FLAGS = NLM_F_REQUEST


def pack_route(route: Route, seq: int, protocol: int, table: int, delete: bool = False, ack: bool = False) -> bytes:
    """One RTM_NEWROUTE (replace) or RTM_DELROUTE message. Addresses are 4 or 16 bytes, so
    every attribute is already 4-byte aligned and no padding is needed. Without `ack` the kernel
    answers only if the request fails."""
    prefix = route.prefix
    v4 = prefix.version == 4
    alen = 4 if v4 else 16
    body = [_ATTR_U32.pack(8, RTA_TABLE, table), _ATTR_U32.pack(8, RTA_PRIORITY, route.metric),
            _RTA.pack(4 + alen, RTA_DST), prefix.network_address.packed]
    if not delete:
        gws = route.gateways
        if len(gws) == 1:
            body += (_RTA.pack(4 + alen, RTA_GATEWAY), gws[0].packed)
        elif gws:
            hop = _RTNH.size + 4 + alen
            body.append(_RTA.pack(4 + hop * len(gws), RTA_MULTIPATH))
            for gw in gws:
                body += (_RTNH.pack(hop, 0, 0, 0), _RTA.pack(4 + alen, RTA_GATEWAY), gw.packed)
    payload = b"".join(body)
    return _MSG.pack(
        _MSG.size + len(payload), RTM_DELROUTE if delete else RTM_NEWROUTE,
        (_DEL_FLAGS if delete else _NEW_FLAGS) | (NLM_F_ACK if ack else 0),
        seq, 0, socket.AF_INET if v4 else socket.AF_INET6, prefix.prefixlen, 0, 0, table if table < 256 else 0,
        protocol, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0,
    ) + payload


def pack_dump(kind: int, family: int = socket.AF_UNSPEC) -> bytes:
    body = _RTM.pack(family, 0, 0, 0, 0, 0, 0, 0, 0) if kind == RTM_GETROUTE else _IFA.pack(family, 0, 0, 0, 0)
    return _NLH.pack(_NLH.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body


# ---- parsing (pure) -------------------------------------------------------------------------

def iter_messages(buf: bytes) -> Iterator[tuple[int, int, int, memoryview]]:
    """(type, flags, seq, payload) for each netlink message in a datagram."""
    view = memoryview(buf)
    off = 0
    while off + _NLH.size <= len(buf):
        length, kind, flags, seq, _pid = _NLH.unpack_from(buf, off)
        if length < _NLH.size or off + length > len(buf):
            break
        yield kind, flags, seq, view[off + _NLH.size: off + length]
        off += _align(length)


def iter_attrs(payload: memoryview, start: int) -> Iterator[tuple[int, memoryview]]:
    off = start
    while off + _RTA.size <= len(payload):
        length, kind = _RTA.unpack_from(payload, off)
        if length < _RTA.size:
            break
        yield kind & 0x3FFF, payload[off + _RTA.size: off + length]
        off += _align(length)


def _ip(raw: memoryview) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes(raw)
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


_V4NET, _V6NET = ipaddress.IPv4Network, ipaddress.IPv6Network
_V4, _V6 = ipaddress.IPv4Address, ipaddress.IPv6Address
_U32 = struct.Struct("=I")


def parse_route(payload: memoryview) -> KernelRoute | None:
    """A unicast route from an RTM_NEWROUTE payload, or None for other kinds (hot: no generators)."""
    family, dst_len, _src, _tos, table, proto, _scope, rtype, _flags = _RTM.unpack_from(payload, 0)
    if rtype != RTN_UNICAST or (family != socket.AF_INET and family != socket.AF_INET6):
        return None
    v4 = family == socket.AF_INET
    dst = 0
    gws: list = []
    metric = oif = 0
    off, end = _RTM.size, len(payload)
    while off + 4 <= end:
        length, kind = _RTA.unpack_from(payload, off)
        if length < 4:
            break
        kind &= 0x3FFF
        if kind == RTA_DST:
            dst = int.from_bytes(payload[off + 4: off + length], "big")
        elif kind == RTA_TABLE:
            table = _U32.unpack_from(payload, off + 4)[0]
        elif kind == RTA_GATEWAY:
            gws.append(_ip(payload[off + 4: off + length]))
        elif kind == RTA_PRIORITY:
            metric = _U32.unpack_from(payload, off + 4)[0]
        elif kind == RTA_OIF:
            oif = _U32.unpack_from(payload, off + 4)[0]
        elif kind == RTA_MULTIPATH:
            gws.extend(_multipath(payload[off + 4: off + length]))
        off += (length + 3) & ~3
    prefix = _V4NET((dst, dst_len)) if v4 else _V6NET((dst, dst_len))
    if len(gws) > 1:
        gws.sort()
    return KernelRoute(prefix, tuple(gws), metric, proto, table, oif)


def _multipath(value: memoryview) -> Iterator:
    off = 0
    while off + _RTNH.size <= len(value):
        length, _flags, _hops, _ifindex = _RTNH.unpack_from(value, off)
        if length < _RTNH.size:
            break
        for kind, inner in iter_attrs(value[off: off + length], _RTNH.size):
            if kind == RTA_GATEWAY:
                yield _ip(inner)
        off += _align(length)


def parse_addr(payload: memoryview) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
    family, prefixlen, _flags, _scope, _index = _IFA.unpack_from(payload, 0)
    addr = local = None
    for kind, value in iter_attrs(payload, _IFA.size):
        if kind == IFA_ADDRESS:
            addr = bytes(value)
        elif kind == IFA_LOCAL:
            local = bytes(value)
    raw = local or addr
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return ipaddress.ip_interface((ipaddress.ip_address(raw), prefixlen))


# ---- the socket (I/O) ------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with this thread in network namespace `name` (None: stay where we are)."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(own)


def open_socket(netns: str | None = None, groups: int = 0) -> socket.socket:
    with in_netns(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 * 1024 * 1024)  # SO_RCVBUFFORCE (root)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    except OSError:
        pass
    sock.bind((0, groups))
    return sock


class Rtnl:
    """A netlink route socket in one namespace: dumps and batched writes."""

    def __init__(self, netns: str | None = None) -> None:
        self.sock = open_socket(netns)
        self._seq = 1000
        self._rbuf = bytearray(1 << 18)
        self._dbuf = bytearray(1 << 20)

    def close(self) -> None:
        self.sock.close()

    def _dump(self, request: bytes) -> Iterator[tuple[int, memoryview]]:
        self.sock.send(request)
        while True:
            n = self.sock.recv_into(self._dbuf)
            for kind, _flags, _seq, payload in iter_messages(memoryview(self._dbuf)[:n]):
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    err = -_ERR.unpack_from(payload, 0)[0]
                    if err:
                        raise NetlinkError(err, "dump")
                    return
                yield kind, payload

    def routes(self) -> Iterator[KernelRoute]:
        for kind, payload in self._dump(pack_dump(RTM_GETROUTE)):
            if kind == RTM_NEWROUTE:
                route = parse_route(payload)
                if route is not None:
                    yield route

    def addresses(self) -> Iterator[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        for kind, payload in self._dump(pack_dump(RTM_GETADDR)):
            if kind == RTM_NEWADDR:
                iface = parse_addr(payload)
                if iface is not None:
                    yield iface

    def write(self, routes: Iterable[Route], protocol: int, table: int, delete: bool) -> dict[Route, int]:
        """Replace (or delete) many routes; returns {route: errno} for those the kernel refused.

        Messages go out many per sendto; only the last of each chunk asks for an ACK, which tells
        that the kernel has processed the whole chunk (it answers failures in any case).
        Deleting a route that is already gone is success.
        """
        failed: dict[Route, int] = {}
        pending: dict[int, Route] = {}
        buf: list[bytes] = []
        size = 0
        for route in routes:
            self._seq += 1
            msg = pack_route(route, self._seq, protocol, table, delete)
            pending[self._seq] = route
            buf.append(msg)
            size += len(msg)
            if size >= CHUNK:
                self._flush(buf, pending, failed, delete)
                buf, size = [], 0
        if buf:
            self._flush(buf, pending, failed, delete)
        return failed

    def _flush(self, buf: list[bytes], pending: dict[int, Route], failed: dict[Route, int], delete: bool) -> None:
        last = bytearray(buf[-1])
        flags, last_seq = struct.unpack_from("=HI", last, 6)
        struct.pack_into("=H", last, 6, flags | NLM_F_ACK)
        buf[-1] = bytes(last)
        self.sock.send(b"".join(buf))
        done = False
        while not done:
            n = self.sock.recv_into(self._rbuf)
            for kind, _flags, seq, payload in iter_messages(memoryview(self._rbuf)[:n]):
                if kind != NLMSG_ERROR or seq not in pending:
                    continue
                err = -_ERR.unpack_from(payload, 0)[0]
                if err and not (delete and err in (E.ESRCH, E.ENOENT)):
                    failed[pending[seq]] = err
                if seq == last_seq:
                    done = True
        pending.clear()
