"""The kernel side of the reconciler: read the table, apply a plan. Thin I/O shell."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Protocol

from bgp.types import IPNetwork

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
    Rtnl,
    iter_messages,
    open_socket,
)
from .types import DEFAULT_PROTOCOL, MAIN_TABLE, KernelRoute, Plan, Route

log = logging.getLogger(__name__)


class RouteTable(Protocol):
    """What the reconciler needs from the kernel (a fake in unit tests)."""

    def snapshot(self) -> tuple[list[KernelRoute], list[KernelRoute]]: ...
    def connected(self) -> frozenset[IPNetwork]: ...
    def apply(self, plan: Plan) -> "ApplyResult": ...


@dataclass
class ApplyResult:
    replaced: int = 0
    deleted: int = 0
    failed: dict[Route, int] = field(default_factory=dict)


class KernelTable:
    """Routes of one kernel table, ours told apart by the protocol number."""

    def __init__(self, protocol: int = DEFAULT_PROTOCOL, table: int = MAIN_TABLE, netns: str | None = None):
        self.protocol = protocol
        self.table = table
        self.netns = netns
        self.rtnl = Rtnl(netns)

    def close(self) -> None:
        self.rtnl.close()

    def monitor(self) -> "KernelMonitor":
        return KernelMonitor(self.protocol, self.netns)

    def snapshot(self) -> tuple[list[KernelRoute], list[KernelRoute]]:
        """(ours, foreign) unicast routes of our table."""
        ours: list[KernelRoute] = []
        foreign: list[KernelRoute] = []
        for route in self.rtnl.routes():
            if route.table != self.table:
                continue
            (ours if route.protocol == self.protocol else foreign).append(route)
        return _merge_split(ours), foreign

    def connected(self) -> frozenset[IPNetwork]:
        """Subnets of the addresses configured on this host (link-local and loopback left out)."""
        nets = set()
        for iface in self.rtnl.addresses():
            if iface.ip.is_link_local or iface.ip.is_loopback:
                continue
            nets.add(iface.network)
        return frozenset(nets)

    def apply(self, plan: Plan) -> ApplyResult:
        result = ApplyResult()
        if plan.replace:
            failed = self.rtnl.write(plan.replace, self.protocol, self.table, delete=False)
            result.failed.update(failed)
            result.replaced = len(plan.replace) - len(failed)
            _log_changes("route.replace", plan.replace, failed)
        if plan.delete:
            routes = [Route(r.prefix, r.gateways, r.metric) for r in plan.delete]
            failed = self.rtnl.write(routes, self.protocol, self.table, delete=True)
            result.failed.update(failed)
            result.deleted = len(routes) - len(failed)
            _log_changes("route.delete", routes, failed)
        return result


LOG_EACH = 64  # above this many changes in one pass, one summary line instead of a line each


def _log_changes(event: str, routes: tuple[Route, ...] | list[Route], failed: dict[Route, int]) -> None:
    for route, errno in failed.items():
        log.warning("%s.failed prefix=%s via=%s error=%s", event, route.prefix, _gws(route), os.strerror(errno))
    if not log.isEnabledFor(logging.INFO):
        return
    if len(routes) > LOG_EACH:
        log.info("%s count=%d failed=%d", event, len(routes) - len(failed), len(failed))
        return
    for route in routes:
        if not failed or route not in failed:
            log.info("%s prefix=%s via=%s", event, route.prefix, _gws(route))


def _gws(route: Route) -> str:
    return ",".join(str(g) for g in route.gateways) or "-"


def _merge_split(routes: list[KernelRoute]) -> list[KernelRoute]:
    """Older kernels dump an IPv6 ECMP route as one entry per next hop: fold them back."""
    merged: dict[tuple, KernelRoute] = {}
    for r in routes:
        k = (r.prefix, r.metric)
        if k in merged:
            prev = merged[k]
            merged[k] = KernelRoute(r.prefix, tuple(sorted(set(prev.gateways) | set(r.gateways))),
                                    r.metric, r.protocol, r.table, prev.oif)
        else:
            merged[k] = r
    return list(merged.values())




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
