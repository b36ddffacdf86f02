"""Wires the speaker together; the work happens in the three rooms it connects.

    Node watch (thread) --Changed--> NodeView --verdicts--> Reconciler --netlink--> kernel
                                        \\--own PodCIDR--> Sessions (ExaBGP) --paths--^

One asyncio loop owns all state. The Node watch runs in a worker thread and hands over only
real changes with call_soon_threadsafe; ExaBGP's lines arrive on the loop (bgp.sessions); every
change marks prefixes dirty in the reconciler (reconciler.loop), which applies them per pass.
When this node's own facts change: its CNI conflist (speaker.cni), then the announcement, then
its NetworkUnavailable condition (speaker.node_status), in that order.
Services (speaker.services): two more watches, Services and EndpointSlices, feed a ServiceTable
whose changes reach the peers as deltas (Sessions.update): nothing is announced or withdrawn for
Services until both initial lists are complete, and the End-of-RIB that lets a restarted node's
peers sweep what it announced before waits for that too. An elected allocator (speaker.allocator)
may write LoadBalancer IPs into the Services' status.
In direct mode (speaker.direct) a DirectSource takes the place of Sessions: no ExaBGP, the paths
come from the other Nodes on a connected subnet, converged once the Nodes are listed.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace

from bgp.sessions import Sessions
from bgp.source import RouteSource
from bgp.types import Announcement, IPNetwork
from reconciler.kernel import RouteTable
from reconciler.loop import Reconciler
from reconciler.policy import static_check

from . import announce
from .cni import ConflistWriter
from .config import Config, ConfigError, check_pod_cidr
from .direct import DirectSource
from .node_status import NetworkCondition, StatusClient
from .nodes import NodeInfo, NodeView
from .peers import Mesh, event_of, plan as plan_peers, secret_files
from .podcidr import Discovered, discover
from .listwatch import ApiDown, Changed
from .services import ServiceTable, node_eligible

SERVICE_RESOURCES = frozenset({"services", "endpointslices"})  # the Changed.resource of their watches

log = logging.getLogger(__name__)


def services_enabled(cfg: Config) -> bool:
    """Anything about Services configured: only then are Services and EndpointSlices watched."""
    sc = cfg.services
    return bool(sc.pools or sc.external_ip_cidrs or sc.cluster_ip_mode != "off" or sc.allocate)


def _read_file(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


class Speaker:
    def __init__(self, cfg: Config, kernel: RouteTable, start_watch: Callable[[Callable[[object], None]], Callable[[], None]],
                 env: dict[str, str] | None = None, bgp_factory: Callable[..., object] | None = None, monitor=None,
                 cni: ConflistWriter | None = None, node_client: StatusClient | None = None,
                 allocator=None) -> None:
        """`cni` writes the conflist and `node_client` patches the Node's status; without them
        (tests) neither is written, and status says so. `allocator`: the LoadBalancer IP allocator
        (speaker.allocator.AllocatorRunner) when services.loadBalancer.allocate is on."""
        self.cfg, self.start_watch, self.monitor = cfg, start_watch, monitor
        self.cni = cni if cni is not None else ConflistWriter(replace(cfg.cni, enabled=False))
        # networkUnavailable: false: no condition write at all (and no nodes/status grant needed)
        self.condition = NetworkCondition(node_client if cfg.network_unavailable else None, cfg.node_name,
                                          disabled=not cfg.network_unavailable)
        self.env = dict(os.environ if env is None else env)
        self.counters: collections.Counter[str] = collections.Counter()
        self.view = NodeView()
        self.node_errors: dict[str, str] = {}
        self.mesh = Mesh(cfg.mesh_node_selector, enabled=cfg.mesh)  # in-scope Node -> its addresses
        self.read_secret = secret_files(cfg.secrets_dir)
        self._peer_errors: set[str] = set()
        self.synced = False
        self.api_up = False
        self.own: Discovered | None = None
        # where the learned paths come from: BGP sessions, or in mode direct the Node objects; what
        # they learn goes on to the reconciler, which reads their paths (a reconciler.types.RibReader)
        self.direct: DirectSource | None = None
        self.bgp: Sessions | None = None
        self.source: RouteSource
        self.own_announced: frozenset[Announcement] = frozenset()  # this node's PodCIDRs
        # Services: None when nothing about Services is configured (no watch of them either)
        self.services = ServiceTable(cfg, cfg.node_name) if services_enabled(cfg) else None
        self.services_synced: set[str] = set()  # the Service watches whose initial list is complete
        self.allocator = allocator
        self.candidate: bool | None = None  # stands for election as the allocator (None: own Node not seen yet)
        if cfg.mode == "direct":
            self.source = self.direct = DirectSource(
                cfg.node_name, self.view.nodes, kernel.connected(),
                on_converged=lambda why: self.reconciler.set_converged(why),
                on_offlink=lambda name, why: self._report(f"offlink:{name}", why), counters=self.counters)
        else:
            self.source = self.bgp = Sessions(cfg.runtime_dir, cfg.exabgp, cfg.graceful_restart, cfg.convergence_timeout,
                                     on_paths=lambda prefixes: self.reconciler.mark(prefixes),
                                     on_converged=lambda why: self.reconciler.set_converged(why),
                                     counters=self.counters, factory=bgp_factory,
                                     # a restarted node's peers sweep what it announced before only at
                                     # End-of-RIB: not before its Service routes are known again
                                     hold_eor=self.services is not None,
                                     # paths refused whatever the Nodes say: counted, never stored
                                     refuse=self._refused_for_good)
        self.kernel = kernel  # the route table, also read by explain (routes_at)
        self.reconciler = Reconciler(
            kernel, rib=self.source, owners=self.view.owners, disputed=self.view.disputed,
            cluster=cfg.cluster_cidrs, service=cfg.service_cidrs, strict_next_hop=cfg.strict_next_hop,
            metric=cfg.route_metric, counters=self.counters, service_ranges=cfg.services.ranges)
        self._stop = asyncio.Event()
        self._started = time.monotonic()
        self.exit_code = 0

    def _refused_for_good(self, prefix: IPNetwork) -> str | None:
        """The static part of the import policy, as Sessions wants it (bgp imports no reconciler)."""
        reason = static_check(self.reconciler.policy, prefix)
        return None if reason is None else reason.value

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        stop_watch = self.start_watch(lambda ev: loop.call_soon_threadsafe(self.on_watch, ev))
        resync = asyncio.create_task(self._resync_loop(), name="resync")
        if self.monitor is not None:
            loop.add_reader(self.monitor.fileno(), self._on_kernel)
        try:
            await self._stop.wait()
        finally:
            log.info("speaker.stop leaving kernel routes in place")
            stop_watch()
            if self.candidate:  # stops writing, then releases the Lease (up to a few seconds)
                await asyncio.to_thread(self.allocator.close)
            resync.cancel()
            self.condition.close()
            if self.monitor is not None:
                loop.remove_reader(self.monitor.fileno())
            await self.source.stop()
        return self.exit_code

    def stop(self) -> None:
        self._stop.set()

    def _on_kernel(self) -> None:
        events = self.monitor.drain()
        if events:
            self.reconciler.on_kernel_events(events)
        if events.full:  # an address or link changed, or events were lost: on-link may differ
            self._connected_changed()

    def _connected_changed(self) -> None:
        if self.direct is not None:
            self.reconciler.mark(self.direct.set_connected(self.kernel.connected()))

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.resync_interval)
            self.counters["resync"] += 1
            self.reconciler.request_full()
            self._connected_changed()
            if self.own is not None:
                self.cni.sync(self.own.cidrs, check=True)  # put back a conflist someone removed
                self._report(f"cni:{self.cfg.cni.conf_path}", self.cni.error)
            if self.synced and self.cfg.mode == "bgp":  # a Secret's file that appeared or changed
                self._configure_peers(self.view.get(self.cfg.node_name))

    # ---- Kubernetes side ---------------------------------------------------------------------
    def on_watch(self, ev: object) -> None:
        if isinstance(ev, ApiDown):
            self.api_up = False
            self.counters["api_errors"] += 1
            return  # an unreachable API changes no route
        self.api_up = True
        if not isinstance(ev, Changed):
            return
        if ev.resource in SERVICE_RESOURCES:
            return self._on_services(ev)
        me = self.cfg.node_name
        own_touched = mesh_changed = False
        for name in ev.deleted:
            self.node_errors.pop(name, None)
            log.info("node.deleted name=%s", name)
            self._mark(name, self.view.delete(name))
            own_touched |= name == me or self.cfg.pod_cidr.derive
            mesh_changed |= self.mesh.remove(name)
        for name, reason in ev.invalid:
            self.counters["node_errors"] += 1
            self.node_errors[name] = reason
            log.warning("node.invalid %s", reason)
            self._mark(name, self.view.delete(name))
            own_touched |= name == me or self.cfg.pod_cidr.derive
            mesh_changed |= self.mesh.remove(name)
        for info in ev.values:
            self._put(info, quiet=ev.synced and not self.synced)
            own_touched |= info.name == me or self.cfg.pod_cidr.derive
            mesh_changed |= self.mesh.put(info)
        if ev.synced and not self.synced:
            self.synced = True
            log.info("nodes.synced count=%d seconds=%.3f", len(self.view), time.monotonic() - self._started)
            self.reconciler.set_synced()
            if self.direct is not None:
                self.direct.set_synced()  # no BGP to wait for: converged once the Nodes are listed
            own_touched = True
        if self.synced and own_touched:
            self._own_changed()
        elif self.synced and mesh_changed:  # another Node joined, left or moved in the mesh
            self._configure_peers(self.view.get(me))

    def _put(self, info: NodeInfo, quiet: bool) -> None:
        self.node_errors.pop(info.name, None)
        for i, cidr in enumerate(info.pod_cidrs):
            try:
                check_pod_cidr(self.cfg, cidr, f"node {info.name}: spec.podCIDRs[{i}]")
            except ConfigError as exc:
                self.counters["node_errors"] += 1
                self.node_errors[info.name] = str(exc)
                log.warning("node.invalid %s", exc)
        (log.debug if quiet else log.info)(
            "node.changed name=%s podCIDRs=%s addresses=%s", info.name, ",".join(map(str, info.pod_cidrs)) or "-",
            ",".join(map(str, info.addresses)) or "-")
        self._mark(info.name, self.view.upsert(info))

    def _mark(self, name: str, changed: set) -> None:
        """A Node changed in the view: its CIDRs whose verdict changed, and in direct mode its paths."""
        if self.direct is not None:
            changed = changed | self.direct.node_changed(name)
        self.reconciler.mark(changed)

    def _own_changed(self) -> None:
        """This node's own facts changed: what it announces, to whom, and what it never imports."""
        me = self.view.get(self.cfg.node_name)
        try:
            found = discover(self.cfg, me, self.env, _read_file, self.view.nodes.values())
        except ConfigError as exc:
            self.counters["own_cidr_errors"] += 1
            log.error("podcidr.invalid %s", exc)
            serving = self.own is not None if self.bgp is None else self.bgp.running
            if not serving:
                log.error("speaker.refused the node's own PodCIDR is invalid; not starting")
                self.exit_code = 2
                self._stop.set()
                return
            found = self.own  # keep announcing what was valid
        if found != self.own:
            if found is None:
                log.warning("podcidr.none node=%s nothing to announce", self.cfg.node_name)
            else:
                if found.warning:
                    log.warning("podcidr.derived %s", found.warning)
                log.info("podcidr.source source=%r cidrs=%s", found.source, ",".join(map(str, found.cidrs)))
            self.own = found
        cidrs = found.cidrs if found else ()
        if self.allocator is not None and me is not None:
            self._stand_for_allocator(me)
        self.reconciler.set_own(set(cidrs) | set(me.pod_cidrs if me else ()))
        for _name, step in self.own_steps:
            step(me, cidrs)

    def _stand_for_allocator(self, me: NodeInfo) -> None:
        """Run for the allocator's Lease if the own Node matches allocatorNodeSelector; decided
        when the Node is first seen (a later label change takes effect at the next start)."""
        match = self.cfg.services.allocator_node_selector.matches(dict(me.labels))
        if self.candidate is None:
            self.candidate = match
            log.info("allocator.candidate node=%s candidate=%s", me.name, match)
            if match:
                self.allocator.start()
        elif match != self.candidate:
            self._report("allocator:candidate", f"node {me.name}: its labels now {'match' if match else 'do not match'} "
                         "services.loadBalancer.allocatorNodeSelector; this takes effect when the speaker restarts",
                         "allocator.candidate.changed", logging.WARNING)

    # ---- what follows from this node's own facts, step by step --------------------------------
    @property
    def own_steps(self) -> tuple[tuple[str, Callable[[NodeInfo | None, tuple[IPNetwork, ...]], None]], ...]:
        """In this order: the CNI conflist (Pods can start on the PodCIDR), the announcement (the
        network learns it), the NetworkUnavailable condition (only once announced)."""
        return (("conflist", self._sync_conflist), ("announce", self._announce), ("condition", self._set_condition))

    def _sync_conflist(self, _me: NodeInfo | None, cidrs: tuple[IPNetwork, ...]) -> None:
        self.cni.sync(cidrs)
        self._report(f"cni:{self.cfg.cni.conf_path}", self.cni.error)

    def _announce(self, me: NodeInfo | None, cidrs: tuple[IPNetwork, ...]) -> None:
        if self.bgp is None:  # no BGP: nothing to announce; the Node's PodCIDR is the announcement
            return
        self._configure_peers(me)
        old, self.own_announced = self.own_announced, announce.announcements(cidrs)
        added, removed = set(self.own_announced - old), set(old - self.own_announced)
        if self.services is not None:
            # Services go out only from a node that announces its own PodCIDR (and is not excluded)
            a, r = self.services.set_node(*node_eligible(me, bool(cidrs)))
            if self.services_live:
                added |= a
                removed |= r
        if added or removed:
            self.bgp.update(added, removed)

    @property
    def announced(self) -> frozenset[Announcement]:
        """What this node asks its peers to carry: its PodCIDRs, and the Service routes once live."""
        if not self.services_live:
            return self.own_announced
        return self.own_announced | self.services.announcements()

    @property
    def services_live(self) -> bool:
        """Service routes may be announced and withdrawn: both initial lists are complete."""
        return self.services is not None and self.services_synced >= SERVICE_RESOURCES

    # ---- Services: what this node announces for them (speaker.services) ----------------------
    def _on_services(self, ev: Changed) -> None:
        table = self.services
        if table is None:
            return
        added: set[Announcement] = set()
        removed: set[Announcement] = set()

        def take(delta: tuple[frozenset[Announcement], frozenset[Announcement]]) -> None:
            for a in delta[1]:
                if a in added:
                    added.discard(a)
                else:
                    removed.add(a)
            for a in delta[0]:
                if a in removed:
                    removed.discard(a)
                else:
                    added.add(a)

        if ev.resource == "services":
            for key in ev.deleted:
                take(table.delete_service(key))
            for key, reason in ev.invalid:
                self.counters["service_errors"] += 1
                log.warning("service.invalid %s", reason)
                take(table.set_invalid(key, reason))
            for info in ev.values:
                take(table.put_service(info))
            if self.allocator is not None:
                self.allocator.on_services(ev.values, ev.deleted, ev.synced)  # an invalid Service keeps its IP
        else:
            for key in ev.deleted:
                take(table.delete_slice(key))
            for key, reason in ev.invalid:
                self.counters["endpointslice_errors"] += 1
                log.warning("endpointslice.invalid %s", reason)
                take(table.delete_slice(key))
            for info in ev.values:
                take(table.put_slice(info))
        self.counters[f"{ev.resource}_changes"] += 1
        if ev.synced and ev.resource not in self.services_synced:
            self.services_synced.add(ev.resource)
            log.info("%s.synced", ev.resource)
            if self.services_live:
                log.info("services.live announcements=%d", len(table.announcements()))
                if self.bgp is not None:
                    self.bgp.announce(self.announced)
                    self.bgp.release_eor()
            return
        if not self.services_live or self.bgp is None or not (added or removed):
            return
        for a in sorted(removed, key=lambda a: (a.prefix.version, a.prefix)):
            log.info("service.withdraw prefix=%s", a.prefix)
        for a in sorted(added, key=lambda a: (a.prefix.version, a.prefix)):
            log.info("service.announce prefix=%s", a.prefix)
        self.bgp.update(added, removed)

    def _set_condition(self, _me: NodeInfo | None, cidrs: tuple[IPNetwork, ...]) -> None:
        if self.bgp is None or self.bgp.running:
            self.condition.announced(cidrs)

    def _configure_peers(self, me: NodeInfo | None) -> None:
        """Whom this node peers with (speaker.peers); ExaBGP is told only when that changed."""
        plan = plan_peers(self.cfg, me, self.mesh.members, self.read_secret)
        for key in self._peer_errors - {k for k, _ in plan.errors}:
            self._report(key, None)
        for key, error in plan.errors:
            self._report(key, error, event_of(key), logging.WARNING)
        self._peer_errors = {k for k, _ in plan.errors}
        self._report(f"bgp:{self.cfg.node_name}", plan.waiting or None, "bgp.waiting")
        # waiting (no AS, router ID or peer yet): keep what runs, if anything
        peers = list(plan.peers)
        if not plan.waiting and self.bgp is not None and (not self.bgp.running or peers != self.bgp.configured):
            self.bgp.configure(peers)

    def _report(self, key: str, error: str | None, event: str = "", level: int = logging.ERROR) -> None:
        """Keep one of this node's own problems in status nodeErrors; log it once when it appears."""
        if error and event and self.node_errors.get(key) != error:
            log.log(level, "%s %s", event, error)
        if error:
            self.node_errors[key] = error
        else:
            self.node_errors.pop(key, None)
