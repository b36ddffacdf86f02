"""Kernel events that wake the reconciler (links, addresses, route changes). Thin I/O shell."""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from .rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    iter_messages,
    open_socket,
)


from .types import Ident

_RTM = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
RTA_DST, RTA_PRIORITY, RTA_TABLE = 1, 6, 15
RTN_UNICAST = 1


@dataclass
class KernelEvents:
    """What one drain of the monitor saw."""

    routes: list[tuple[Ident, bool, bool]] = field(default_factory=list)  # (ident, ours, deleted)
    full: str = ""  # why a full pass is needed ("link", "address", "overrun"), or ""

    def __bool__(self) -> bool:
        return bool(self.routes or self.full)


def parse_route_key(payload: memoryview, table: int) -> tuple[Ident, int] | None:
    """(ident, protocol) of a unicast route of `table` in an RTM_*ROUTE payload, else None."""
    family, dst_len, _src, _tos, rtm_table, proto, _scope, rtype, _flags = _RTM.unpack_from(payload, 0)
    if rtype != RTN_UNICAST or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    dst, metric, off, end = 0, 0, _RTM.size, len(payload)
    while off + 4 <= end:
        length, kind = _RTA.unpack_from(payload, off)
        if length < 4:
            break
        kind &= 0x3FFF
        if kind == RTA_DST:
            dst = int.from_bytes(payload[off + 4: off + length], "big")
        elif kind == RTA_TABLE:
            rtm_table = _U32.unpack_from(payload, off + 4)[0]
        elif kind == RTA_PRIORITY:
            metric = _U32.unpack_from(payload, off + 4)[0]
        off += (length + 3) & ~3
    if rtm_table != table:
        return None
    return (4 if family == socket.AF_INET else 6, dst, dst_len, metric), proto


class KernelMonitor:
    """Netlink events that should wake the reconciler: links, addresses, and routes of our table.

    A route of ours that someone removed, or a foreign route that appears or goes on a key we
    want, marks that prefix; a link or address change (IPv4 flushes routes on link down without
    telling anyone) or a lost event asks for a full pass.
    """

    GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE

    def __init__(self, protocol: int, netns: str | None = None, table: int = 254) -> None:
        self.protocol = protocol
        self.table = table
        self.sock = open_socket(netns, groups=self.GROUPS)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> KernelEvents:
        """Read what is queued and say what matters (empty: nothing to do)."""
        out = KernelEvents()
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return out
            except OSError:  # ENOBUFS: we missed events; a full pass repairs everything
                out.full = "overrun"
                continue
            for kind, _flags, _seq, payload in iter_messages(data):
                if kind == RTM_NEWROUTE or kind == RTM_DELROUTE:
                    if kind == RTM_NEWROUTE and len(payload) > 5 and payload[5] == self.protocol:
                        continue  # our own writes echoing back: the cheapest test first
                    parsed = parse_route_key(payload, self.table)
                    if parsed is not None:
                        out.routes.append((parsed[0], parsed[1] == self.protocol, kind == RTM_DELROUTE))
                elif kind in (RTM_NEWLINK, RTM_DELLINK):
                    out.full = out.full or "link"
                elif kind in (RTM_NEWADDR, RTM_DELADDR):
                    out.full = out.full or "address"

    def close(self) -> None:
        self.sock.close()
