"""Kernel events that wake the reconciler (links, addresses, route changes). Thin I/O shell."""
from __future__ import annotations

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
    parse_route,
)
from .types import Ident


@dataclass
class KernelEvents:
    """What one drain of the monitor saw."""

    routes: list[tuple[Ident, bool, bool]] = field(default_factory=list)  # (ident, ours, deleted)
    full: str = ""  # why a full pass is needed ("link", "address", "overrun"), or ""

    def __bool__(self) -> bool:
        return bool(self.routes or self.full)


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
                    route = parse_route(payload)
                    if route is not None and route.table == self.table:
                        out.routes.append((route.ident, route.protocol == self.protocol, kind == RTM_DELROUTE))
                elif kind in (RTM_NEWLINK, RTM_DELLINK):
                    out.full = out.full or "link"
                elif kind in (RTM_NEWADDR, RTM_DELADDR):
                    out.full = out.full or "address"

    def close(self) -> None:
        self.sock.close()
