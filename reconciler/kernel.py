"""The kernel side of the reconciler: read the table, apply a plan. Thin I/O shell."""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bgp.types import IPNetwork

from .links import Links, connected_subnets
from .rtnl import Rtnl
from .types import DEFAULT_PROTOCOL, MAIN_TABLE, KernelRoute, NetlinkError, Plan, ReconcilerError, Route, ident_of

log = logging.getLogger(__name__)


class RouteTable(Protocol):
    """What the reconciler needs from the kernel (a fake in unit tests)."""

    def snapshot(self) -> tuple[list[KernelRoute], list[KernelRoute]]:
        """(ours, foreign): every unicast route of the table, ours by the protocol number."""
        ...

    def connected(self) -> frozenset[IPNetwork]:
        """The subnets of this host's addresses."""
        ...

    def apply(self, plan: Plan) -> "ApplyResult":
        """Replace, then delete; what the kernel refused comes back in ApplyResult.failed."""
        ...

    def routes_at(self, prefix: IPNetwork) -> list[KernelRoute]:
        """Every route of the table at exactly `prefix`, ours and foreign, any protocol and
        metric, read now. Blocking and safe off the loop's thread: call it in a worker thread.
        A failed read raises ReconcilerError with a one-line reason."""
        ...


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
        try:
            self.links = Links(netns)
        except BaseException:
            self.rtnl.close()
            raise

    def close(self) -> None:
        self.rtnl.close()
        self.links.close()

    def snapshot(self) -> tuple[list[KernelRoute], list[KernelRoute]]:
        """(ours, foreign) unicast routes of our table; ours with a split IPv6 ECMP route merged.

        Only our table is dumped (the kernel filters it), and the routes come back as
        `KernelRoute.dumped`: `plan` and `apply` work on their plain `.ident`/`.hops`, and the
        `ipaddress` objects of `.prefix`/`.gateways` are built only for the routes whose
        caller asks for them.
        """
        ours: list[KernelRoute] = []
        foreign: list[KernelRoute] = []
        table, protocol = self.table, self.protocol
        for route in self.rtnl.routes(table):
            if route.table == table:
                (ours if route.protocol == protocol else foreign).append(route)
        return _merge_split(ours), foreign

    def routes_at(self, prefix: IPNetwork) -> list[KernelRoute]:
        """Every route of our table at `prefix` (ours first, a split IPv6 ECMP route of ours
        merged, then foreign ones), from a dump of the prefix's family filtered here by
        destination and length (the kernel filters a route dump by table, not by destination).

        It opens a netlink socket of its own, so a worker thread may run it while the loop writes
        on the table's socket. Raises ReconcilerError naming the prefix when the read fails.
        """
        family = socket.AF_INET if prefix.version == 4 else socket.AF_INET6
        want = ident_of(prefix, 0)[:3]
        try:
            rtnl = Rtnl(self.netns)
            try:
                dumped = rtnl.routes(self.table, families=(family,))
            finally:
                rtnl.close()
        except (OSError, NetlinkError) as exc:
            raise ReconcilerError(f"route dump of table {self.table} at {prefix} failed: {exc}") from None
        at = [r for r in dumped if r.ident[:3] == want and r.table == self.table]
        ours = [r for r in at if r.protocol == self.protocol]
        return _merge_split(ours) + [r for r in at if r.protocol != self.protocol]

    def connected(self) -> frozenset[IPNetwork]:
        """Subnets of the addresses configured on this host (link-local and loopback left out)."""
        return connected_subnets(self.links.addresses())

    def apply(self, plan: Plan) -> ApplyResult:
        """Replace, then delete. Deletes name routes by ident; their failures are reported as
        Route(prefix, gateways, metric)."""
        result = ApplyResult()
        if plan.replace:
            failed = self.rtnl.write(plan.replace, self.protocol, self.table, delete=False)
            result.failed.update(failed)
            result.replaced = len(plan.replace) - len(failed)
            _log_changes("route.replace", plan.replace, failed)
        if plan.delete:
            gone = self.rtnl.write(plan.delete, self.protocol, self.table, delete=True)
            result.failed.update({Route(r.prefix, r.gateways, r.metric): err for r, err in gone.items()})
            result.deleted = len(plan.delete) - len(gone)
            _log_changes("route.delete", plan.delete, gone)
        return result


LOG_EACH = 64  # above this many changes in one pass, one summary line instead of a line each


def _log_changes(event: str, routes: Sequence[Route | KernelRoute], failed: Mapping[Route | KernelRoute, int]) -> None:
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


def _gws(route: Route | KernelRoute) -> str:
    return ",".join(str(g) for g in route.gateways) or "-"


def _merge_split(routes: list[KernelRoute]) -> list[KernelRoute]:
    """Older kernels dump an IPv6 ECMP route as one entry per next hop: fold them back."""
    merged: dict[tuple, KernelRoute] = {r.ident: r for r in routes}
    if len(merged) == len(routes):
        return routes
    merged = {}
    for r in routes:
        prev = merged.get(r.ident)
        if prev is None:
            merged[r.ident] = r
        else:
            hops = tuple(sorted(set(prev.hops) | set(r.hops)))
            merged[r.ident] = KernelRoute.dumped(r.ident, hops, r.protocol, r.table, prev.oif)
    return list(merged.values())
