"""The reconcile loop: learned paths and the API's verdicts in, kernel routes out, per change.

Level-triggered and incremental. Events only mark prefixes dirty; a pass re-evaluates the import
policy for those prefixes alone, compares with its model of the kernel (our routes, and the keys
foreign routes hold) and applies the difference. A burst of marks (an UPDATE stream, a re-list)
coalesces into the next pass, which runs as soon as the loop is idle: a single change is not
delayed. The full pass (start-up adoption, the periodic resync, a link change, a netlink
overrun) dumps the table, rebuilds the model and plans over everything.

Gates: nothing is installed before the Nodes are listed (`synced`), nothing pruned before the
RIB has converged (`converged`); before that, routes adopted from a previous run are kept.

Its seams: it reads learned paths through a `RibReader` (reconciler.types) and the kernel through
a `RouteTable` (reconciler.kernel), both handed to it; what to write is decided by
`reconciler.plan.diff`, in both passes; others see its state only as the frozen values of
reconciler.report (`counts()`, `report()`, `report_at(prefix)`).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Container, Iterable, Mapping
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network

from bgp.types import IPNetwork

from .kernel import ApplyResult, RouteTable
from .plan import NOTHING, diff
from .policy import Policy, evaluate
from .report import PrefixReport, ReconcilerCounts, ReconcilerReport, net_key
from .types import Ident, KernelRoute, Owner, Plan, Reason, Rejection, RibReader, Route, ident_of

log = logging.getLogger(__name__)
RETRY_DELAY = 1.0  # a route the kernel refused (e.g. gateway not reachable yet) is tried again


class Reconciler:
    """`kernel` is written and read, `rib` only read; `owners` and `disputed` are the live
    verdicts of the Node view (kept current by the caller, who marks what changed)."""

    def __init__(self, kernel: RouteTable, rib: RibReader, owners: Mapping[IPNetwork, Owner],
                 disputed: Container[IPNetwork], cluster: Iterable[IPNetwork], service: Iterable[IPNetwork],
                 strict_next_hop: bool = True, metric: int = 20,
                 counters: collections.Counter | None = None, service_ranges: Iterable[IPNetwork] = ()) -> None:
        self.kernel = kernel
        self.rib = rib
        self.counters = counters if counters is not None else collections.Counter()
        self.policy = Policy(own=frozenset(), cluster=frozenset(cluster), service=frozenset(service),
                             connected=frozenset(), owners=owners, disputed=disputed,
                             strict_next_hop=strict_next_hop, metric=metric, service_ranges=frozenset(service_ranges))
        self.synced = False
        self.converged = False
        # desired state, per prefix
        self.desired: dict[IPNetwork, Route] = {}
        self.rejected: dict[IPNetwork, tuple[Rejection, ...]] = {}
        self.rejected_count: collections.Counter[Reason] = collections.Counter()
        # the kernel as last seen or written, by (version, address, length, metric): our routes,
        # and the keys foreign routes hold (plain numbers: a dump builds no ipaddress objects)
        self.ours: dict[Ident, Route | KernelRoute] = {}
        self.foreign: set[Ident] = set()
        self.blocked: set[IPNetwork] = set()
        self.failed: set[IPNetwork] = set()
        self.dirty: set[IPNetwork] = set()
        self._full = True  # the first pass adopts what the kernel holds
        self._all = True  # re-evaluate every prefix (the policy itself changed)
        self._handle: asyncio.Handle | None = None
        self.last_pass: float | None = None

    # ---- inputs ------------------------------------------------------------------------------
    def mark(self, prefixes: Iterable[IPNetwork]) -> None:
        self.dirty.update(prefixes)
        self.schedule()

    def mark_all(self) -> None:
        self._all = True
        self.schedule()

    def request_full(self) -> None:
        self._full = True
        self.schedule()

    def set_own(self, own: Iterable[IPNetwork]) -> None:
        own = frozenset(own)
        if own != self.policy.own:
            self.policy = replace(self.policy, own=own)
            self.mark_all()

    def set_synced(self) -> None:
        if not self.synced:
            self.synced = True
            self.request_full()

    def set_converged(self, _why: str = "") -> None:
        self.converged = True
        self.request_full()

    def kernel_route_event(self, ident: Ident, ours: bool, deleted: bool) -> None:
        """A route of our table changed under us: keep the model true and look at that prefix again."""
        if ours:
            if not deleted:
                return  # our own writes echoing back
            self.ours.pop(ident, None)
        elif deleted:
            self.foreign.discard(ident)
        else:
            self.foreign.add(ident)
            self.ours.pop(ident, None)  # a foreign route on our key replaced ours
        version, address, length, _metric = ident
        self.mark(((IPv4Network if version == 4 else IPv6Network)((address, length)),))

    def on_kernel_events(self, events) -> None:
        """A drain of the kernel monitor (reconciler.monitor.KernelEvents)."""
        self.counters["kernel_events"] += 1
        for key, ours, deleted in events.routes:
            self.kernel_route_event(key, ours, deleted)
        if events.full:
            log.debug("kernel.event full pass for %s", events.full)
            self.request_full()

    # ---- scheduling --------------------------------------------------------------------------
    def schedule(self, delay: float = 0.0) -> None:
        """Run a pass once the loop is idle (or after `delay`); an earlier pending pass absorbs this."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (pure tests call run_pass themselves)
        if self._handle is not None:
            if not isinstance(self._handle, asyncio.TimerHandle) or self._handle.when() - loop.time() <= delay:
                return
            self._handle.cancel()
        self._handle = loop.call_soon(self.run_pass) if delay <= 0 else loop.call_later(delay, self.run_pass)

    def run_pass(self) -> None:
        self._handle = None
        if not self.synced:
            return  # nothing is trusted before the first full list of Nodes
        if self._full:
            self._full_pass()
        elif self._all or self.dirty:
            self._incremental_pass()
        self.last_pass = time.time()
        if self.failed:
            self.dirty |= self.failed
            self.schedule(RETRY_DELAY)

    # ---- desired state -----------------------------------------------------------------------
    def _evaluate(self, prefix: IPNetwork) -> None:
        route, rejected = evaluate(self.policy, prefix, self.rib.paths_for(prefix))
        if route is None:
            self.desired.pop(prefix, None)
        else:
            self.desired[prefix] = route
        before = self.rejected.get(prefix, ())
        if rejected != before:
            self.rejected_count.subtract(r.reason for r in before)
            self.rejected_count.update(r.reason for r in rejected)
            if rejected:
                self.rejected[prefix] = rejected
            else:
                del self.rejected[prefix]
            for r in set(rejected) - set(before):
                log.info("route.rejected prefix=%s peer=%s via=%s reason=%s", r.prefix, r.peer, r.next_hop, r.reason.value)

    def _evaluate_all(self) -> set[IPNetwork]:
        prefixes = set(self.rib.prefixes()) | set(self.desired) | set(self.rejected)
        for prefix in prefixes:
            self._evaluate(prefix)
        self._all = False
        return prefixes

    # ---- passes ------------------------------------------------------------------------------
    def _incremental_pass(self) -> None:
        if self._all:
            dirty = self._evaluate_all() | self.dirty
        else:
            dirty = self.dirty
            for prefix in dirty:
                self._evaluate(prefix)
        self.dirty = set()
        # the plan over the marked prefixes alone: desired and ours restricted to them (the
        # foreign keys are only looked up, for the wanted ones)
        metric = self.policy.metric
        wanted: dict[Ident, Route] = {}
        ours: dict[Ident, Route | KernelRoute] = {}
        for prefix in dirty:
            key = ident_of(prefix, metric)
            if (route := self.desired.get(prefix)) is not None:
                wanted[key] = route
            if (have := self.ours.get(key)) is not None:
                ours[key] = have
        p = diff(wanted, ours, self.foreign, prune=self.converged)
        self.blocked.difference_update(dirty)
        self.failed.difference_update(dirty)
        self.counters["reconciles"] += 1
        if p is NOTHING:
            return
        self.blocked.update(r.prefix for r in p.blocked)
        if not p.empty:
            self._apply(p)

    def _full_pass(self) -> None:
        connected = self.kernel.connected()
        if connected != self.policy.connected:
            self.policy = replace(self.policy, connected=connected)
            self._all = True
        if self._all:
            self._evaluate_all()
        else:
            for prefix in self.dirty:
                self._evaluate(prefix)
        self.dirty = set()
        ours, foreign = self.kernel.snapshot()
        if self.counters["full_passes"] == 0 and ours:
            log.info("routes.adopted count=%d kept until convergence, then unconfirmed ones are swept", len(ours))
        self.ours = {r.ident: r for r in ours}
        self.foreign = {r.ident for r in foreign}
        wanted = {route.ident: route for route in self.desired.values()}
        p = diff(wanted, self.ours, self.foreign, prune=self.converged)
        self.blocked = {r.prefix for r in p.blocked}
        self.failed = set()
        self._full = False
        self.counters["full_passes"] += 1
        self.counters["reconciles"] += 1
        if not p.empty:
            self._apply(p)

    def _apply(self, p: Plan) -> None:
        result: ApplyResult = self.kernel.apply(p)
        failed = result.failed
        for route in p.replace:
            if route in failed:
                self.failed.add(route.prefix)
            else:
                self.ours[route.ident] = route
        for route in p.delete:
            if any(f.ident == route.ident for f in failed):
                self.failed.add(route.prefix)
            else:
                self.ours.pop(route.ident, None)
        self.counters["routes_replaced"] += result.replaced
        self.counters["routes_deleted"] += result.deleted
        self.counters["route_failures"] += len(failed)

    # ---- what others see ---------------------------------------------------------------------
    def counts(self) -> ReconcilerCounts:
        """Sizes only (for a metrics scrape): O(reasons), not O(routes)."""
        by_reason = {reason: n for reason, n in self.rejected_count.items() if n > 0}
        if self.blocked:
            by_reason[Reason.FOREIGN_ROUTE] = len(self.blocked)
        return ReconcilerCounts(installed=len(self.ours),
                                rejected_by_reason=tuple(sorted(by_reason.items(), key=lambda kv: kv[0].value)),
                                blocked=len(self.blocked), failed=len(self.failed), pending=len(self.dirty))

    def report(self) -> ReconcilerReport:
        """The whole state, sorted (for /status): O(routes)."""
        return ReconcilerReport(
            counts=self.counts(), installed=tuple(self.ours[k] for k in sorted(self.ours)),
            rejected=self.rejections(), blocked=tuple(sorted(self.blocked, key=net_key)),
            failed=tuple(sorted(self.failed, key=net_key)), pending=tuple(sorted(self.dirty, key=net_key)),
            synced=self.synced, converged=self.converged, last_pass=self.last_pass)

    def report_at(self, prefix: IPNetwork) -> PrefixReport:
        """The state at one prefix (for explain): O(1) but for the foreign keys, which are few."""
        key = ident_of(prefix, self.policy.metric)
        return PrefixReport(
            prefix=prefix, policy=self.policy, desired=self.desired.get(prefix),
            rejected=self.rejected.get(prefix, ()), installed=self.ours.get(key),
            foreign_metrics=tuple(sorted(i[3] for i in self.foreign if i[:3] == key[:3])),
            blocked=prefix in self.blocked, failed=prefix in self.failed, pending=prefix in self.dirty,
            synced=self.synced, converged=self.converged, last_pass=self.last_pass)

    def rejections(self) -> tuple[Rejection, ...]:
        """Every refused path, sorted by prefix, then peer (as in `report().rejected`)."""
        return tuple(r for prefix in sorted(self.rejected, key=net_key) for r in self.rejected[prefix])
