"""Wires the speaker together: Node watch -> announcements -> ExaBGP, ExaBGP -> RIB -> kernel.

One asyncio loop owns all state. The Node watch runs in a worker thread and hands events over
with call_soon_threadsafe; ExaBGP's API lines arrive on the loop; every change only schedules a
reconcile, which recomputes the whole desired state (level-triggered).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import time
from collections.abc import Callable

from bgp import encode, render
from bgp.decode import decode_line
from bgp.process import ExaBGP, api_command
from bgp.rib import Rib
from bgp.types import (
    AckEvent,
    Announcement,
    DecodeError,
    EorEvent,
    Event,
    OpenEvent,
    PeerConfig,
    SessionState,
    ShutdownEvent,
    StateEvent,
    UpdateEvent,
)
from reconciler.kernel import RouteTable
from reconciler.plan import plan
from reconciler.policy import Policy, desired_routes
from reconciler.types import Owner, Reason

from . import announce
from .config import Config, ConfigError, check_pod_cidr
from .nodes import NodeError, NodeInfo, ownership, parse_node
from .podcidr import Discovered, discover
from .watch import ApiDown, NodeEvent, Snapshot

log = logging.getLogger(__name__)


def _read_file(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


class Speaker:
    def __init__(self, cfg: Config, kernel: RouteTable, start_watch: Callable[[Callable[[object], None]], Callable[[], None]],
                 env: dict[str, str] | None = None, bgp_factory: Callable[..., ExaBGP] = ExaBGP) -> None:
        self.cfg = cfg
        self.bgp_factory = bgp_factory
        self.kernel = kernel
        self.start_watch = start_watch
        self.env = dict(os.environ if env is None else env)
        self.nodes: dict[str, NodeInfo] = {}
        self.node_errors: dict[str, str] = {}
        self.synced = False
        self.api_up = False
        self.own: Discovered | None = None
        self.announced: frozenset[Announcement] = frozenset()
        self.sent: dict[str, frozenset[Announcement]] = {}
        self.peer_configs: list[PeerConfig] = []
        self.peer_state: dict[str, SessionState] = {}
        self.peer_reason: dict[str, str] = {}
        self.eor: dict[str, set[str]] = collections.defaultdict(set)
        self.peer_gr: dict[str, int | None] = {}  # the restart time each peer advertised
        self.stale_timers: dict[str, asyncio.TimerHandle] = {}
        self.rib = Rib()
        self.exabgp: ExaBGP | None = None
        self.converged = False
        self.counters: collections.Counter[str] = collections.Counter()
        self.rejected: dict[Reason, int] = {}
        self.rejections: list = []
        self.installed: dict = {}
        self.blocked: list = []
        self.last_reconcile: float | None = None
        self._reconcile_handle: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exit_code = 0

    # ---- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stop.set)
        stop_watch = self.start_watch(lambda ev: self.loop.call_soon_threadsafe(self._on_watch, ev))
        resync = asyncio.create_task(self._resync_loop(), name="resync")
        monitor = self._start_monitor()
        try:
            await self._stop.wait()
        finally:
            log.info("speaker.stop leaving kernel routes in place")
            stop_watch()
            resync.cancel()
            if monitor is not None:
                self.loop.remove_reader(monitor.fileno())
                monitor.close()
            if self.exabgp:
                await self.exabgp.stop()
        return self.exit_code

    def stop(self) -> None:
        self._stop.set()

    def _start_monitor(self):
        make = getattr(self.kernel, "monitor", None)
        if make is None:
            return None
        monitor = make()

        def on_event() -> None:
            kinds = monitor.drain()
            if kinds:
                self.counters["kernel_events"] += 1
                log.debug("kernel.event kinds=%s", ",".join(sorted(set(kinds))))
                self.schedule_reconcile(0.02)

        self.loop.add_reader(monitor.fileno(), on_event)
        return monitor

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.resync_interval)
            self.counters["resync"] += 1
            self.schedule_reconcile(0)

    # ---- Kubernetes side ---------------------------------------------------------------------
    def _on_watch(self, ev: object) -> None:
        if isinstance(ev, Snapshot):
            self.nodes.clear()
            self.node_errors.clear()
            for obj in ev.nodes:
                self._put_node("ADDED", obj)
            self.api_up = True
            if not self.synced:
                log.info("nodes.synced count=%d", len(self.nodes))
            self.synced = True
        elif isinstance(ev, NodeEvent):
            self.api_up = True
            self._put_node(ev.kind, ev.node)
        elif isinstance(ev, ApiDown):
            self.api_up = False
            self.counters["api_errors"] += 1
            return  # an unreachable API changes no route
        if self.synced:
            self._nodes_changed()

    def _put_node(self, kind: str, obj: dict) -> None:
        name = ((obj.get("metadata") or {}).get("name")) if isinstance(obj, dict) else None
        if kind == "DELETED":
            if name:
                self.nodes.pop(name, None)
                self.node_errors.pop(name, None)
                log.info("node.deleted name=%s", name)
            return
        try:
            info = parse_node(obj)
        except NodeError as exc:
            self.counters["node_errors"] += 1
            if name:
                self.nodes.pop(name, None)
                self.node_errors[name] = str(exc)
            log.warning("node.invalid %s", exc)
            return
        self.node_errors.pop(info.name, None)
        for i, cidr in enumerate(info.pod_cidrs):
            try:
                check_pod_cidr(self.cfg, cidr, f"node {info.name}: spec.podCIDRs[{i}]")
            except ConfigError as exc:
                self.counters["node_errors"] += 1
                self.node_errors[info.name] = str(exc)
                log.warning("node.invalid %s", exc)
        if self.nodes.get(info.name) != info:
            log.info("node.%s name=%s podCIDRs=%s addresses=%s", kind.lower(), info.name,
                     ",".join(map(str, info.pod_cidrs)) or "-", ",".join(map(str, info.addresses)) or "-")
        self.nodes[info.name] = info

    def _nodes_changed(self) -> None:
        me = self.nodes.get(self.cfg.node_name)
        try:
            found = discover(self.cfg, me, self.env, _read_file, self.nodes.values())
        except ConfigError as exc:
            self.counters["own_cidr_errors"] += 1
            log.error("podcidr.invalid %s", exc)
            if self.exabgp is None:
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
        self.announced = announce.announcements(found.cidrs if found else ())
        self._ensure_bgp(me)
        self._sync_announcements()
        self.schedule_reconcile()

    # ---- BGP side ----------------------------------------------------------------------------
    def _ensure_bgp(self, me: NodeInfo | None) -> None:
        try:
            peers = announce.peers(self.cfg, me)
        except ConfigError as exc:
            if self.exabgp is None:
                log.error("bgp.waiting %s", exc)
            return
        text = render.render(peers, api_command(os.path.join(self.cfg.runtime_dir, "api.sock")))
        if self.exabgp is None:
            self.peer_configs = peers
            self.exabgp = self.bgp_factory(self.cfg.runtime_dir, self.cfg.exabgp, self._on_api_line,
                                 self._on_api_connect, self._on_exabgp_exit)
            asyncio.get_running_loop().call_later(self.cfg.convergence_timeout, self._convergence_timeout)
            asyncio.get_running_loop().create_task(self.exabgp.start(text))
            for p in peers:
                self.peer_state.setdefault(p.key, SessionState.IDLE)
        elif peers != self.peer_configs:
            log.info("bgp.config.changed restarting exabgp")
            self.peer_configs = peers
            self.exabgp.reconfigure(text)

    def _sync_announcements(self) -> None:
        if self.exabgp is None:
            return
        for p in self.peer_configs:
            if self.peer_state.get(p.key) != SessionState.UP:
                continue
            old = self.sent.get(p.key, frozenset())
            cmds = encode.sync(p.key, p.families, old, self.announced)
            if cmds and self.exabgp.send(cmds):
                self.sent[p.key] = self.announced
                for c in cmds:
                    log.info("bgp.command %s", c)

    def _on_api_connect(self) -> None:
        self.sent.clear()  # a new API process: ExaBGP replays nothing, so neither can we assume

    def _on_exabgp_exit(self, rc: int) -> None:
        self.counters["exabgp_restarts"] += 1
        for p in self.peer_configs:
            if self.peer_state.get(p.key) == SessionState.UP:
                self._peer_down(p.key, f"exabgp exited rc={rc}")
            else:
                self.peer_state[p.key] = SessionState.DOWN
        self.schedule_reconcile()

    def _on_api_line(self, line: str) -> None:
        log.debug("exabgp.line %s", line.rstrip())
        try:
            ev = decode_line(line)
        except DecodeError as exc:
            self.counters["decode_errors"] += 1
            log.warning("bgp.decode.error %s", exc)
            return
        self._on_bgp_event(ev)

    def _on_bgp_event(self, ev: Event) -> None:
        if isinstance(ev, UpdateEvent):
            if self.rib.apply(ev):
                self.schedule_reconcile()
        elif isinstance(ev, StateEvent):
            self._on_state(ev)
        elif isinstance(ev, OpenEvent):
            self.peer_gr[ev.peer] = ev.graceful_restart
        elif isinstance(ev, EorEvent):
            self.eor[ev.peer].add(ev.family)
            log.info("bgp.eor peer=%s family=%s", ev.peer, ev.family)
            if self._peer_complete(ev.peer):
                self._end_stale(ev.peer)
            self._check_converged()
        elif isinstance(ev, AckEvent):
            if not ev.ok:
                self.counters["exabgp_command_errors"] += 1
                log.warning("bgp.command.error exabgp answered error")
        elif isinstance(ev, ShutdownEvent):
            log.info("bgp.exabgp.shutdown")
        else:
            self.counters[f"ignored_{ev.kind}"] += 1

    def _peer_complete(self, peer: str) -> bool:
        cfg = next((p for p in self.peer_configs if p.key == peer), None)
        return cfg is not None and cfg.families <= self.eor[peer]

    def _on_state(self, ev: StateEvent) -> None:
        prev = self.peer_state.get(ev.peer)
        self.peer_state[ev.peer] = ev.state
        self.peer_reason[ev.peer] = ev.reason
        if ev.state == SessionState.UP:
            log.info("bgp.peer.up peer=%s", ev.peer)
            self.sent.pop(ev.peer, None)
            self.eor[ev.peer].clear()
            self._announce_to(ev.peer)
        elif ev.state == SessionState.DOWN and prev == SessionState.UP:
            # only the end of an established session touches the RIB; the failed connection
            # attempts that follow (connected -> down, again and again) must not drop stale paths
            self._peer_down(ev.peer, ev.reason)
            self.schedule_reconcile()

    def _announce_to(self, peer: str) -> None:
        """Our own routes first, then End-of-RIB (manual EoR: the peer never purges them in a gap)."""
        cfg = next((p for p in self.peer_configs if p.key == peer), None)
        if cfg is None or self.exabgp is None:
            return
        cmds = encode.sync(peer, cfg.families, frozenset(), self.announced)
        if cfg.graceful_restart:
            cmds += [encode.eor(peer, fam) for fam in sorted(cfg.families)]
        if self.exabgp.send(cmds):
            self.sent[peer] = self.announced
            for c in cmds:
                log.info("bgp.command %s", c)

    def _peer_down(self, peer: str, reason: str) -> None:
        self.peer_state[peer] = SessionState.DOWN
        self.peer_reason[peer] = reason
        self.sent.pop(peer, None)
        self.eor[peer].clear()
        # graceful restart is negotiated when both sides advertised it: keep the peer's paths,
        # marked stale, for the restart time the peer advertised (RFC 4724)
        restart = self.peer_gr.get(peer) or 0
        keep = self.cfg.graceful_restart > 0 and restart > 0
        log.info("bgp.peer.down peer=%s reason=%r paths=%d kept_stale_for=%ss", peer, reason, self.rib.count(peer),
                 restart if keep else 0)
        if self.rib.peer_down(peer, keep_stale=keep) and keep:
            old = self.stale_timers.pop(peer, None)
            if old:
                old.cancel()
            self.stale_timers[peer] = asyncio.get_running_loop().call_later(restart, self._end_stale, peer)

    def _end_stale(self, peer: str) -> None:
        timer = self.stale_timers.pop(peer, None)
        if timer:
            timer.cancel()
        swept = self.rib.sweep_stale(peer)
        if swept:
            log.info("bgp.stale.swept peer=%s paths=%d", peer, swept)
            self.schedule_reconcile()

    def _check_converged(self) -> None:
        if self.converged:
            return
        if all(self.peer_state.get(p.key) == SessionState.UP and self._peer_complete(p.key) for p in self.peer_configs):
            self._set_converged("all peers up and End-of-RIB received")

    def _convergence_timeout(self) -> None:
        if not self.converged:
            self._set_converged(f"grace time {self.cfg.convergence_timeout:.0f}s passed")

    def _set_converged(self, why: str) -> None:
        self.converged = True
        log.info("rib.converged reason=%r pruning enabled", why)
        self.schedule_reconcile(0)

    # ---- kernel side -------------------------------------------------------------------------
    def schedule_reconcile(self, delay: float = 0.01) -> None:
        """Run a reconcile pass after `delay` (an earlier pending pass absorbs a later request)."""
        loop = asyncio.get_running_loop()
        if self._reconcile_handle is not None:
            if self._reconcile_handle.when() - loop.time() <= delay:
                return
            self._reconcile_handle.cancel()
        self._reconcile_handle = loop.call_later(delay, self._reconcile)


    def policy(self) -> Policy:
        own = frozenset(self.own.cidrs) if self.own else frozenset()
        own_node = self.nodes.get(self.cfg.node_name)
        if own_node:
            own |= frozenset(own_node.pod_cidrs)
        view = ownership(self.nodes.values())
        for cidr, names in view.disputed.items():
            key = f"disputed:{cidr}"
            if key not in self.node_errors:
                self.node_errors[key] = f"podCIDR {cidr} is claimed by overlapping nodes {', '.join(names)}; neither is trusted"
                log.warning("node.cidr.disputed cidr=%s nodes=%s", cidr, ",".join(names))
        for key in [k for k in self.node_errors if k.startswith("disputed:")]:
            if key.split(":", 1)[1] not in {str(c) for c in view.disputed}:
                del self.node_errors[key]
        for name, reason in view.unusable.items():
            if self.node_errors.get(f"unusable:{name}") != reason:
                self.node_errors[f"unusable:{name}"] = reason
                self.counters["node_errors"] += 1
                log.warning("node.unusable %s", reason)
        for key in [k for k in self.node_errors if k.startswith("unusable:")]:
            if key.split(":", 1)[1] not in view.unusable:
                del self.node_errors[key]
        return Policy(
            own=own,
            cluster=frozenset(self.cfg.cluster_cidrs),
            service=frozenset(self.cfg.service_cidrs),
            connected=self.kernel.connected(),
            owners={c: Owner(n, a) for c, (n, a) in view.owners.items()},
            disputed=frozenset(view.disputed),
            strict_next_hop=self.cfg.strict_next_hop,
            metric=self.cfg.route_metric,
        )

    def _reconcile(self) -> None:
        self._reconcile_handle = None
        if not self.synced:
            return  # nothing is trusted before the first full list of Nodes
        desired, rejected = desired_routes(self.policy(), self.rib.paths())
        ours, foreign = self.kernel.snapshot()
        p = plan(desired, ours, foreign, prune=self.converged)
        if self.counters["reconciles"] == 0 and ours:
            log.info("routes.adopted count=%d kept until convergence, then unconfirmed ones are swept", len(ours))
        result = self.kernel.apply(p) if not p.empty else None
        if result is not None and result.failed:
            self.schedule_reconcile(1.0)  # e.g. a gateway not reachable yet; try again soon
        self.rejections = rejected
        counts: dict[Reason, int] = collections.Counter(r.reason for r in rejected)
        counts.update({Reason.FOREIGN_ROUTE: len(p.blocked)} if p.blocked else {})
        for reason, n in counts.items():
            if n > self.rejected.get(reason, 0):
                for r in rejected:
                    if r.reason == reason:
                        log.info("route.rejected prefix=%s peer=%s via=%s reason=%s", r.prefix, r.peer, r.next_hop, r.reason.value)
        self.rejected = dict(counts)
        self.blocked = list(p.blocked)
        self.installed = {r.prefix: r for r in desired.values() if r not in p.blocked and
                          (result is None or r not in result.failed)}
        if not self.converged:
            self.installed.update({r.prefix: r for r in ours if r.prefix not in self.installed})
        self.last_reconcile = time.time()
        self.counters["reconciles"] += 1
        if result:
            self.counters["routes_replaced"] += result.replaced
            self.counters["routes_deleted"] += result.deleted
            self.counters["route_failures"] += len(result.failed)
