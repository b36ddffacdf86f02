"""Kernel events that wake the reconciler (links, addresses, route changes). Thin I/O shell."""
from __future__ import annotations

from .rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    iter_messages,
    open_socket,
)


class KernelMonitor:
    """Netlink events that should wake the reconciler: links, addresses, and deletions of our routes.

    A link that comes back up, or a route of ours that someone (or the kernel, on link down)
    removed, is repaired at once instead of at the next periodic pass.
    """

    GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE

    def __init__(self, protocol: int, netns: str | None = None) -> None:
        self.protocol = protocol
        self.sock = open_socket(netns, groups=self.GROUPS)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> list[str]:
        """Read what is queued; return the kinds of events that matter (empty: nothing to do)."""
        kinds: list[str] = []
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return kinds
            except OSError:  # ENOBUFS: we missed events; a full pass repairs everything
                kinds.append("overrun")
                continue
            for kind, _flags, _seq, payload in iter_messages(data):
                if kind == RTM_DELROUTE:
                    if len(payload) > 5 and payload[5] == self.protocol:  # rtmsg.rtm_protocol
                        kinds.append("route-deleted")
                elif kind in (RTM_NEWLINK, RTM_DELLINK):
                    kinds.append("link")
                elif kind in (RTM_NEWADDR, RTM_DELADDR):
                    kinds.append("address")

    def close(self) -> None:
        self.sock.close()
