"""The BGP side of a node: ExaBGP's lifecycle, each peer's session, the RIB, convergence.

Lines from ExaBGP are decoded here and change the session state and the RIB; what leaves this
module is typed: the set of prefixes whose learned paths changed (`on_paths`) and the moment the
RIB has converged (`on_converged`). Graceful restart (RFC 4724): when a session with GR drops,
the peer's paths are kept, marked stale, for the restart time the peer advertised, and swept
when its End-of-RIB arrives or the timer ends.

A change of the peer list is a reload of ExaBGP, not a restart (bgp.process.ExaBGP.reconfigure):
sessions to unchanged peers go on untouched, a changed peer's session is re-established, a
removed peer's session closes and its paths leave the RIB at once (it is gone for good: nothing
is kept stale), a new peer gets our routes and End-of-RIB when it comes up.

What each peer gets: the announcements of its families; Service routes (Announcement.service)
only if its export_services, which ExaBGP's configuration does not hold, so a change of it alone
is commands to ExaBGP, never a reload.

BFD (bgp.bfd: podbgp's BFD engine, a process of its own, read in a thread of its own): for a peer whose config asks
for it, a BFD session runs beside the BGP one. When it goes from up to down, the forwarding path
is dead: the peer's paths leave the RIB at once (stale ones too: graceful restart is for a
restarting control plane, not a dead link) and the session is torn down (Cease "BFD down", RFC
9384); what ExaBGP still hands over from it until its "down" is ignored. ExaBGP then reconnects as
usual: the peer may run BFD only for established sessions (FRR with dynamic neighbors does), so
holding the session until BFD is up could wait forever. `update(added, removed)` costs in proportion to the change;
each peer's `sent` (what ExaBGP holds for it) is kept exact for the full resync at session up
and after an API reconnect.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from . import bfd, encode, limits, render, security
from .decode import decode_line
from .process import ExaBGP, api_command
from .rib import Rib
from .source import BfdStatus, PeerStatus, RibPaths
from .types import (
    AckEvent,
    Announcement,
    DecodeError,
    EorEvent,
    Event,
    IPNetwork,
    OpenEvent,
    PeerConfig,
    SessionState,
    ShutdownEvent,
    StateEvent,
    UpdateEvent,
)

log = logging.getLogger(__name__)
BFD_DOWN = 10  # the Cease subcode "BFD Down" (RFC 9384)


@dataclass(slots=True, eq=False)
class _Peer:
    """What Sessions keeps about one configured peer (its PeerStatus is the frozen view of it)."""

    config: PeerConfig
    state: SessionState = SessionState.IDLE
    since: float | None = None  # unix time the peer entered `state`
    exabgp_reason: str = ""  # why, as ExaBGP said it
    hint: str = ""  # what podbgp adds about MD5 / GTSM while no TCP connection comes up
    eor: set[str] = field(default_factory=set)  # families whose End-of-RIB arrived in this session
    restart_time: int | None = None  # the GR restart time the peer advertised in its last OPEN
    stale_timer: asyncio.TimerHandle | None = None  # ends the stale paths kept by graceful restart
    # what ExaBGP's Adj-RIB-Out holds for the peer, by prefix, as the peer gets it (encode.for_peer):
    # ExaBGP keeps it across the peer's session flaps (and sends it again on reconnect) until the
    # peer is removed or ExaBGP restarts. One dict per peer, changed in place by update().
    sent: dict[IPNetwork, Announcement] = field(default_factory=dict)
    eor_due: bool = False  # up, with graceful restart, and our End-of-RIB not yet sent (held: release_eor)
    refused: limits.RefusedCount = field(default_factory=limits.RefusedCount)  # this session's, counted
    over: limits.Over = ()  # the families over maxPrefixes, as last counted
    tearing: bool = False  # a teardown for maxPrefixes was sent; at its "down" the peer is suspended
    resume_at: float | None = None  # unix time a suspended peer is configured in ExaBGP again
    resume_timer: asyncio.TimerHandle | None = None
    bfd: bfd.Watch | None = None  # the BFD session beside this one, when the config asks for it

    @property
    def reason(self) -> str:
        return security.combine(self.exabgp_reason, self.hint)

    @property
    def suspended(self) -> bool:
        """Left out of ExaBGP's configuration after a maxPrefixes teardown."""
        return self.resume_timer is not None

    @property
    def bfd_tearing(self) -> bool:
        """BFD said down and the teardown was sent: until ExaBGP's "down", nothing from the session counts."""
        return self.bfd is not None and self.bfd.tearing

    def cancel_stale(self) -> None:
        if self.stale_timer is not None:
            self.stale_timer.cancel()
            self.stale_timer = None


class Sessions(RibPaths):
    """The BGP route source (bgp.source.RouteSource): ExaBGP, one record per configured peer, the RIB."""

    def __init__(self, runtime_dir: str, exabgp: str, graceful_restart: int, convergence_timeout: float,
                 on_paths: Callable[[set[IPNetwork]], None], on_converged: Callable[[str], None],
                 counters: collections.Counter | None = None, factory: Callable[..., ExaBGP] | None = None,
                 read_counters: Callable[[], dict[str, int] | None] = security.read_counters,
                 clock: Callable[[], float] = time.monotonic, hold_eor: bool = False,
                 refuse: Callable[[IPNetwork], str | None] | None = None,
                 bfd_engine: Callable[..., bfd.Engine] = bfd.Engine) -> None:
        self.runtime_dir, self.exabgp_path = runtime_dir, exabgp
        self.graceful_restart = graceful_restart
        self.convergence_timeout = convergence_timeout
        self.on_paths, self.on_converged = on_paths, on_converged
        self.counters = counters if counters is not None else collections.Counter()
        self.factory = factory or ExaBGP  # tests hand in a fake engine
        self.rib = Rib()
        self.exabgp: ExaBGP | None = None
        self._peers: dict[str, _Peer] = {}  # in configuration order
        self._announced: dict[IPNetwork, Announcement] = {}  # what we announce, by prefix
        self._converged = False
        self.hints = security.QuietPeers(read_counters, clock)
        self._security_timer: asyncio.TimerHandle | None = None
        self.removed: set[str] = set()  # peers taken out of the configuration (until they return)
        # End-of-RIB waits for release_eor(): what is announced is not complete yet (Services not
        # listed), and a peer that kept our routes across our restart sweeps the rest at our EoR
        self.hold_eor = hold_eor
        # the static part of the import policy: a reason for a prefix refused whatever the API
        # says later; such paths are counted per peer and never stored (bgp.limits)
        self.refuse = refuse
        self.bfd_engine = bfd_engine  # tests hand in a fake
        self.bfd: bfd.Engine | None = None  # started when a peer first asks for BFD
        self.bfd_error = ""  # why the BFD engine could not be started ("" when it runs or is not needed)

    # ---- the route source --------------------------------------------------------------------
    def peers(self) -> tuple[PeerStatus, ...]:
        return tuple(self._status(rec) for rec in self._peers.values())

    def peer(self, key: str) -> PeerStatus | None:
        rec = self._peers.get(key)
        return None if rec is None else self._status(rec)

    def _status(self, rec: _Peer) -> PeerStatus:
        c = rec.config
        return PeerStatus(key=c.key, address=c.address, asn=c.asn, local_address=c.local_address,
                          local_asn=c.local_asn, families=c.families, state=rec.state, since=rec.since,
                          reason=rec.reason, end_of_rib=frozenset(rec.eor), paths=self.rib.count(c.key),
                          refused=tuple(sorted(rec.refused.by_reason.items())),
                          counted=tuple((f, self._counted(rec, f)) for f in sorted(c.families)),
                          max_prefixes=c.max_prefixes, over=limits.describe(rec.over),
                          excess=max((n - lim for _, n, lim in rec.over), default=0), resume_at=rec.resume_at,
                          bfd=self._bfd_status(rec))

    def _bfd_status(self, rec: _Peer) -> BfdStatus | None:
        w = rec.bfd
        if w is None:
            return None
        t = w.session
        return BfdStatus(state=w.state or ("unavailable" if self.bfd_error else "unknown"), since=w.since,
                         min_rx=t.min_rx, min_tx=t.min_tx, multiplier=t.multiplier, multihop=t.multihop,
                         diagnostics=bfd.DIAGNOSTICS.get(w.diagnostics, str(w.diagnostics)), downs=w.downs,
                         dropped=w.dropped, dropped_at=w.dropped_at, error=self.bfd_error)

    def _counted(self, rec: _Peer, family: str) -> int:
        """What counts toward the peer's maxPrefixes of a family: paths held plus refused ones."""
        return self.rib.count(rec.config.key, family) + rec.refused.held(family)

    @property
    def converged(self) -> bool:
        return self._converged

    @property
    def ready(self) -> bool:
        return any(rec.state == SessionState.UP for rec in self._peers.values())

    @property
    def pid(self) -> int | None:
        return self.exabgp.pid if self.exabgp else None

    @property
    def running(self) -> bool:
        """ExaBGP has been started (it may be restarting)."""
        return self.exabgp is not None

    @property
    def configured(self) -> list[PeerConfig]:
        return [rec.config for rec in self._peers.values()]

    @property
    def announced(self) -> frozenset[Announcement]:
        """What is announced now (to each peer as its rules allow)."""
        return frozenset(self._announced.values())

    @announced.setter
    def announced(self, announced: frozenset[Announcement]) -> None:
        """Replace what is announced without telling any peer (tests; see announce())."""
        self._announced = _by_prefix(announced)

    # ---- what the speaker asks for -----------------------------------------------------------
    def configure(self, peers: list[PeerConfig]) -> None:
        """Run ExaBGP with these peers: started on the first call, reloaded on a change (ConfigError,
        and nothing changed, if they cannot be rendered). A change of export_services only is no
        reload: the Service routes of those peers are announced or withdrawn."""
        if self.exabgp is not None and peers == self.configured:
            return
        if self.exabgp is not None and list(map(_session, peers)) == list(map(_session, self.configured)):
            self._set_exports(peers)  # only what the peers export, or BFD: no reload, sessions untouched
            self._sync_bfd()
            return
        text = self._render(peers)
        old = {p.key: p for p in self.configured}
        new = {p.key: p for p in peers}
        exports = [k for k in old.keys() & new.keys() if old[k].export_services != new[k].export_services]
        for key in sorted(old.keys() - new.keys()):
            self._remove(key)
        self.removed -= new.keys()
        records = {}
        for p in peers:
            rec = self._peers.get(p.key)
            if rec is None:
                rec = _Peer(config=p)
                self._set_state(rec, SessionState.IDLE)
            elif rec.config != p:
                if _session(rec.config) != _session(p):
                    self.hints.quiet(p.key, again=True)
                    rec.hint = ""  # a hint about the old settings
                rec.config = p
            records[p.key] = rec
        self._peers = records
        self._sync_bfd()
        for key in sorted(exports):
            self._refresh_exports(records[key])
        if any(p.secured for p in peers):
            self._arm_security_check(self.hints.hint_after)
        if self.exabgp is None:
            self.exabgp = self.factory(self.runtime_dir, self.exabgp_path, self.on_line, self._on_api_connect,
                                       self._on_exabgp_exit)
            loop = asyncio.get_running_loop()
            loop.call_later(self.convergence_timeout, self._convergence_timeout)
            loop.create_task(self.exabgp.start(text))
            return
        action = self.exabgp.reconfigure(text)
        changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
        log.info("bgp.config.changed action=%s added=%s removed=%s changed=%s", action,
                 ",".join(sorted(new.keys() - old.keys())) or "-", ",".join(sorted(old.keys() - new.keys())) or "-",
                 ",".join(changed) or "-")
        self._check_converged()

    def _render(self, peers: list[PeerConfig]) -> str:
        """ExaBGP's configuration: the peers but those suspended after a maxPrefixes teardown."""
        active = [p for p in peers if not ((rec := self._peers.get(p.key)) is not None and rec.suspended)]
        return render.render(active, api_command(os.path.join(self.runtime_dir, "api.sock")))

    def _remove(self, peer: str) -> None:
        """A peer left the configuration: forget it, and drop its paths now, stale ones included."""
        rec = self._peers.pop(peer)
        rec.cancel_stale()
        if rec.bfd is not None and self.bfd is not None:
            self.bfd.remove(rec.config.address)
        if rec.resume_timer is not None:
            rec.resume_timer.cancel()
        self.hints.forget(peer)
        paths = self.rib.count(peer)
        dropped = self.rib.peer_down(peer, keep_stale=False)
        self.removed.add(peer)
        log.info("bgp.peer.removed peer=%s paths=%d", peer, paths)
        if dropped:
            self.on_paths(dropped)

    def _set_exports(self, peers: list[PeerConfig]) -> None:
        """The peers differ from the configured ones in export_services only: bring the Service
        routes of those peers up to date; ExaBGP's configuration does not change."""
        for p in peers:
            rec = self._peers[p.key]
            if rec.config != p:
                old, rec.config = rec.config, p
                if old.export_services != p.export_services:
                    self._refresh_exports(rec)

    def _refresh_exports(self, rec: _Peer) -> None:
        """A peer's export_services changed: announce or withdraw its Service routes (work in
        proportion to what is announced: a config change, rare)."""
        cfg = rec.config
        log.info("bgp.peer.export peer=%s services=%s", cfg.key, str(cfg.export_services).lower())
        if rec.state == SessionState.UP:
            self._push(rec, [p for p, a in self._announced.items() if a.service])

    def announce(self, announced: frozenset[Announcement]) -> None:
        """Announce exactly these prefixes (one announcement per prefix) to every established
        peer, and to later ones. The work is a diff of the whole set: for small sets (own
        PodCIDRs) or rare calls; use update() for a stream of changes."""
        new, old = _by_prefix(announced), self._announced
        self.update([a for p, a in new.items() if not _same(old.get(p), a)],
                    [a for p, a in old.items() if not _same(new.get(p), a)])

    def update(self, added: Iterable[Announcement], removed: Iterable[Announcement]) -> None:
        """Change what is announced: `removed` first (one that is not announced as given is
        ignored), then `added` (an announcement of a prefix already announced with other
        attributes replaces it: an implicit withdraw on the wire). Work in proportion to
        len(added) + len(removed) per established peer, whatever is announced besides."""
        changed: set[IPNetwork] = set()
        for a in removed:
            if _same(self._announced.get(a.prefix), a):
                del self._announced[a.prefix]
                changed.add(a.prefix)
        for a in added:
            if not _same(self._announced.get(a.prefix), a):
                self._announced[a.prefix] = a
                changed.add(a.prefix)
        if not changed or self.exabgp is None:
            return
        for rec in self._peers.values():
            if rec.state == SessionState.UP:  # the others are brought up to date when they come up (_announce_to)
                self._push(rec, changed)

    def _push(self, rec: _Peer, prefixes: Iterable[IPNetwork]) -> None:
        """Send one established peer what changed for these prefixes; note it in rec.sent."""
        cfg = rec.config
        wanted = {p: encode.for_peer(cfg, self._announced.get(p)) for p in prefixes}
        cmds = encode.changes(cfg.key, rec.sent, wanted)
        if cmds and self._send(cmds):
            for p, a in wanted.items():
                if a is None:
                    rec.sent.pop(p, None)
                else:
                    rec.sent[p] = a

    async def stop(self) -> None:
        for rec in self._peers.values():
            rec.cancel_stale()
        if self._security_timer is not None:
            self._security_timer.cancel()
        if self.exabgp is not None:
            await self.exabgp.stop()
        # BFD last: the peers see the BGP sessions close (graceful restart) before BFD's AdminDown,
        # so a peer that keeps a restarting peer's routes while BFD is down can tell (FRR:
        # `bfd check-control-plane-failure`, our C bit being 0)
        if self.bfd is not None:
            engine, self.bfd = self.bfd, None
            await asyncio.get_running_loop().run_in_executor(None, engine.close)

    def release_eor(self) -> None:
        """What is announced is complete: send the End-of-RIB held back from established peers,
        and from now on at once when a session comes up."""
        self.hold_eor = False
        for rec in self._peers.values():
            if rec.eor_due and rec.state == SessionState.UP:
                cfg = rec.config
                if self._send([encode.eor(cfg.key, fam) for fam in sorted(cfg.families)]):
                    rec.eor_due = False

    # ---- what ExaBGP tells -------------------------------------------------------------------
    def on_line(self, line: str) -> None:
        try:
            ev = decode_line(line)
        except DecodeError as exc:
            self.counters["decode_errors"] += 1
            log.warning("bgp.decode.error %s", exc)
            return
        self.on_event(ev)

    def on_event(self, ev: Event) -> None:
        peer = getattr(ev, "peer", None)
        if peer is not None and peer in self.removed:
            # ExaBGP's "down" for a peer just removed, or lines that were already on their way
            self.counters["events_removed_peer"] += 1
            log.debug("bgp.event.removed_peer peer=%s event=%s", peer, type(ev).__name__)
            return
        if isinstance(ev, UpdateEvent):
            rec = self._peers.get(ev.peer)
            if rec is not None and (rec.suspended or rec.bfd_tearing):
                # a reconnect ExaBGP made before the reload without the peer took effect, or what
                # was on its way from a session BFD declared dead
                self.counters["events_suspended_peer"] += 1
                return
            if self.refuse is not None and rec is not None:
                ev = self._screen(rec, ev)
            changed = self.rib.apply(ev)
            if changed:
                self.on_paths(changed)
            if rec is not None and rec.config.max_prefixes:
                self._check_limit(rec)
        elif isinstance(ev, StateEvent):
            self._on_state(ev)
        elif isinstance(ev, OpenEvent):
            if (rec := self._peers.get(ev.peer)) is not None:
                rec.restart_time = ev.graceful_restart
        elif isinstance(ev, EorEvent):
            self._on_eor(ev)
        elif isinstance(ev, AckEvent):
            if not ev.ok:
                self.counters["exabgp_command_errors"] += 1
                log.warning("bgp.command.error exabgp answered error")
        elif isinstance(ev, ShutdownEvent):
            log.info("bgp.exabgp.shutdown")
        else:
            self.counters[f"ignored_{ev.kind}"] += 1

    def _screen(self, rec: _Peer, ev: UpdateEvent) -> UpdateEvent:
        """The UPDATE without the paths refused for good: those are counted (a withdraw of one
        uncounts it), never stored. The event is returned as it came when nothing is refused."""
        refuse, refused = self.refuse, rec.refused
        # (RefusedCount's methods return None: a refused path is counted, then left out)
        kept = [p for p in ev.announced if (reason := refuse(p.prefix)) is None or refused.announced(p.prefix, reason)]
        gone = [p for p in ev.withdrawn if refuse(p) is None or refused.withdrawn(p)]
        if len(kept) == len(ev.announced) and len(gone) == len(ev.withdrawn):
            return ev
        return UpdateEvent(peer=ev.peer, announced=tuple(kept), withdrawn=tuple(gone))

    # ---- maxPrefixes -------------------------------------------------------------------------
    def _check_limit(self, rec: _Peer) -> None:
        """After an UPDATE of a peer with maxPrefixes: say when it goes over (once per crossing),
        and under `teardown` end its session."""
        cfg = rec.config
        over = limits.over_limit(cfg, {f: self._counted(rec, f) for f, _ in cfg.max_prefixes})
        was, rec.over = rec.over, over
        if over and not was:
            self.counters["max_prefixes_exceeded"] += 1
            log.warning("bgp.peer.max_prefixes peer=%s action=%s %s", cfg.key, cfg.max_prefixes_action,
                        limits.describe(over))
            if cfg.max_prefixes_action == "teardown" and rec.state == SessionState.UP and not rec.tearing:
                self._teardown(rec)
        elif was and not over:
            log.info("bgp.peer.max_prefixes.cleared peer=%s", cfg.key)

    def _teardown(self, rec: _Peer) -> None:
        """Cease "maximum number of prefixes reached"; at the session's "down" the peer is left
        out of ExaBGP's configuration for restart_after seconds, so ExaBGP cannot reconnect."""
        if self._send([encode.teardown(rec.config.key, 1)]):
            rec.tearing = True
            self.counters["max_prefixes_teardowns"] += 1

    def _suspend(self, rec: _Peer) -> None:
        cfg = rec.config
        rec.tearing = False
        rec.resume_at = time.time() + cfg.restart_after
        rec.resume_timer = asyncio.get_running_loop().call_later(cfg.restart_after, self._resume, cfg.key)
        log.warning("bgp.peer.suspended peer=%s reason=max-prefixes restart_after=%ss", cfg.key, cfg.restart_after)
        self._reload()

    def _resume(self, key: str) -> None:
        rec = self._peers.get(key)
        if rec is None:
            return
        rec.resume_timer = rec.resume_at = None
        rec.over = ()
        log.info("bgp.peer.resumed peer=%s", key)
        self._set_state(rec, SessionState.IDLE, "re-established after a maxPrefixes teardown")
        self._reload()

    def _reload(self) -> None:
        if self.exabgp is not None:
            action = self.exabgp.reconfigure(self._render(self.configured))
            log.info("bgp.config.reload action=%s suspended=%s", action,
                     ",".join(r.config.key for r in self._peers.values() if r.suspended) or "-")

    def _on_eor(self, ev: EorEvent) -> None:
        rec = self._peers.get(ev.peer)
        if rec is None:
            self.counters["events_unknown_peer"] += 1
            return
        rec.eor.add(ev.family)
        log.info("bgp.eor peer=%s family=%s", ev.peer, ev.family)
        if rec.config.families <= rec.eor:
            self._end_stale(ev.peer)
        self._check_converged()

    def _on_api_connect(self) -> None:
        """A new API process: commands written to the old one may be lost. ExaBGP's Adj-RIB-Out
        dropped nothing, and announcing what it holds again is a no-op there, so established
        peers are brought up to date in full (withdraws of what they no longer get included)."""
        for rec in self._peers.values():
            if rec.state == SessionState.UP:
                wanted = encode.view(rec.config, self._announced.values())
                if self._send(encode.resync(rec.config.key, rec.sent, wanted)):
                    rec.sent = wanted

    def _on_exabgp_exit(self, rc: int) -> None:
        self.counters["exabgp_restarts"] += 1
        for rec in self._peers.values():
            rec.sent = {}  # the next ExaBGP starts with an empty Adj-RIB-Out
            if rec.state == SessionState.UP:
                self._peer_down(rec, f"exabgp exited rc={rc}")
            else:
                self._set_state(rec, SessionState.DOWN, f"exabgp exited rc={rc}")

    def _on_state(self, ev: StateEvent) -> None:
        rec = self._peers.get(ev.peer)
        if rec is None:
            self.counters["events_unknown_peer"] += 1
            log.debug("bgp.event.unknown_peer peer=%s state=%s", ev.peer, ev.state.value)
            return
        if rec.suspended:  # out of ExaBGP's configuration until restart_after: its "down" echoes
            return
        if rec.bfd_tearing:  # the session BFD declared dead: its paths are gone, its reason stays
            if ev.state == SessionState.DOWN:
                rec.bfd.tearing = False
                log.info("bfd.teardown.done peer=%s exabgp_reason=%r", ev.peer, ev.reason)
            return
        if ev.state == SessionState.DOWN and rec.state == SessionState.UP:
            # only the end of an established session touches the RIB; the failed connection
            # attempts that follow (connected -> down, again and again) must not drop stale paths
            self._peer_down(rec, ev.reason)
            return
        self._set_state(rec, ev.state, ev.reason)
        if ev.state == SessionState.UP:
            log.info("bgp.peer.up peer=%s", ev.peer)
            rec.eor.clear()
            self._announce_to(rec)

    def _set_state(self, rec: _Peer, state: SessionState, reason: str = "") -> None:
        key = rec.config.key
        if rec.state != state or rec.since is None:
            rec.since = time.time()
            if state in (SessionState.CONNECTED, SessionState.UP):
                self.hints.connected(key)  # a TCP connection: neither MD5 nor GTSM is in the way
            elif not self.hints.is_quiet(key):
                self.hints.quiet(key)
                if rec.config.secured:
                    self._arm_security_check(self.hints.hint_after)
        rec.state = state
        rec.exabgp_reason, rec.hint = reason, ""

    def _announce_to(self, rec: _Peer) -> None:
        """Our own routes first, then End-of-RIB (manual EoR: the peer never purges them in a gap;
        while hold_eor, not before release_eor()).

        ExaBGP sends again on its own what its Adj-RIB-Out kept from before a session flap; what
        we stopped announcing meanwhile is withdrawn here (announcing the rest again is a no-op)."""
        cfg = rec.config
        wanted = encode.view(cfg, self._announced.values())
        cmds = encode.resync(cfg.key, rec.sent, wanted)
        rec.eor_due = bool(cfg.graceful_restart)
        if rec.eor_due and not self.hold_eor:
            cmds += [encode.eor(cfg.key, fam) for fam in sorted(cfg.families)]
        if self._send(cmds):
            rec.sent = wanted
            rec.eor_due = rec.eor_due and self.hold_eor

    def _send(self, cmds: list[str]) -> bool:
        if self.exabgp is None or not self.exabgp.send(cmds):
            return False
        for c in cmds:
            log.info("bgp.command %s", c)
        return True

    def _peer_down(self, rec: _Peer, reason: str, dead: bool = False) -> set[IPNetwork]:
        """The session ended: its paths dropped, or kept stale under graceful restart unless it was
        torn down or `dead` (BFD). Returns the prefixes whose paths were dropped."""
        peer = rec.config.key
        self._set_state(rec, SessionState.DOWN, reason)
        rec.eor.clear()
        # graceful restart is negotiated when both sides advertised it: keep the peer's paths,
        # marked stale, for the restart time the peer advertised (RFC 4724)
        restart = rec.restart_time or 0
        keep = self.graceful_restart > 0 and restart > 0 and not rec.tearing and not dead  # torn down: not restarting
        if dead:
            rec.cancel_stale()
        rec.refused.reset()  # the peer sends its table again in its next session
        if not rec.tearing:
            rec.over = ()
        log.info("bgp.peer.down peer=%s reason=%r paths=%d kept_stale_for=%ss", peer, reason, self.rib.count(peer),
                 restart if keep else 0)
        dropped = self.rib.peer_down(peer, keep_stale=keep)
        if keep and self.rib.count(peer):
            rec.cancel_stale()
            rec.stale_timer = asyncio.get_running_loop().call_later(restart, self._end_stale, peer)
        if dropped:
            self.on_paths(dropped)
        if rec.tearing:
            self._suspend(rec)
        return dropped

    def _end_stale(self, peer: str) -> None:
        rec = self._peers.get(peer)
        if rec is not None:
            rec.cancel_stale()
        swept = self.rib.sweep_stale(peer)
        if swept:
            log.info("bgp.stale.swept peer=%s paths=%d", peer, len(swept))
            self.on_paths(swept)

    # ---- BFD ------------------------------------------------------------------------------------
    def _sync_bfd(self) -> None:
        """Ask the BFD engine for the BFD sessions the peers' configs want, and no others."""
        for rec in self._peers.values():
            want = bfd.session_for(rec.config)
            w = rec.bfd
            if want is None:
                if w is not None:
                    rec.bfd = None
                    if self.bfd is not None:
                        self.bfd.remove(rec.config.address)
                continue
            if w is None:
                rec.bfd = bfd.Watch(session=want, since=time.time())
            elif w.session != want:
                w.session = want
                w.restart()
            if self.bfd is None and not self.bfd_error:
                self._start_bfd()
            if self.bfd is not None:
                self.bfd.add(want)

    def _start_bfd(self) -> None:
        loop = asyncio.get_running_loop()
        engine = self.bfd_engine(self._on_bfd, loop.call_soon_threadsafe)
        try:
            engine.start()
        except (OSError, bfd.BfdError) as exc:
            self.bfd_error = f"the BFD engine could not be started: {exc}"
            log.error("bfd.unavailable error=%r (the sessions run without BFD)", str(exc))
            return
        self.bfd = engine

    def _on_bfd(self, ev: bfd.BfdEvent) -> None:
        """A BFD session's state changed (in the loop, handed over by bfd.Engine's reader thread)."""
        if ev.state == bfd.RESTARTED:
            for rec in self._peers.values():
                if rec.bfd is not None:
                    rec.bfd.restart()
            return
        rec = self._peers.get(bfd.peer_key(ev.peer))
        w = rec.bfd if rec is not None else None
        if w is None:
            self.counters["bfd_events_unknown_peer"] += 1
            return
        was = w.state
        if ev.state == was:
            return
        w.state, w.since, w.diagnostics = ev.state, time.time(), ev.diagnostics
        log.info("bfd.state peer=%s state=%s was=%s diagnostics=%r", rec.config.key, ev.state, was or "-",
                 bfd.DIAGNOSTICS.get(ev.diagnostics, ev.diagnostics))
        if ev.state == "up":
            w.dropped, w.dropped_at = frozenset(), None
        elif ev.state == "down" and was == "up":  # a session that never came up is no failure
            w.downs += 1
            self.counters["bfd_downs"] += 1
            self._bfd_down(rec, ev.diagnostics)

    def _bfd_down(self, rec: _Peer, diagnostics: int) -> None:
        """BFD says the path to the peer is dead: drop its paths now (stale ones too: no graceful
        restart) and tear the session down; ExaBGP reconnects as usual."""
        key, w = rec.config.key, rec.bfd
        assert w is not None
        why = bfd.DIAGNOSTICS.get(diagnostics, str(diagnostics))
        established = rec.state == SessionState.UP
        dropped = self._peer_down(rec, f"BFD down ({why}): paths dropped, session torn down", dead=True)
        w.dropped, w.dropped_at = frozenset(dropped), time.time()
        if established and self._send([encode.teardown(key, BFD_DOWN)]):
            w.tearing = True
        log.warning("bfd.down peer=%s diagnostics=%r paths_dropped=%d teardown=%s", key, why, len(dropped),
                    str(w.tearing).lower())

    # ---- MD5 and GTSM: why a secured peer has no TCP connection (bgp.security) ----------------
    def _arm_security_check(self, delay: float) -> None:
        timer = self._security_timer
        loop = asyncio.get_running_loop()
        if timer is not None:
            if timer.when() <= loop.time() + delay:
                return
            timer.cancel()
        self._security_timer = loop.call_later(delay, self._security_check)

    def _security_check(self) -> None:
        """For each peer under MD5 or GTSM without a TCP connection for a while, say in its
        reason what drops its segments, with the kernel's counters."""
        self._security_timer = None
        hints, again = self.hints.check(self.configured)
        for key, text in hints.items():
            self._peers[key].hint = text
        if again is not None:
            self._arm_security_check(again)

    # ---- convergence: the gate that allows pruning -------------------------------------------
    def _check_converged(self) -> None:
        if not self._converged and self._peers and all(
                rec.state == SessionState.UP and rec.config.families <= rec.eor for rec in self._peers.values()):
            self._set_converged("all peers up and End-of-RIB received")

    def _convergence_timeout(self) -> None:
        if not self._converged:
            self._set_converged(f"grace time {self.convergence_timeout:.0f}s passed")

    def _set_converged(self, why: str) -> None:
        self._converged = True
        log.info("rib.converged reason=%r pruning enabled", why)
        self.on_converged(why)


def _session(p: PeerConfig) -> PeerConfig:
    """The part of a peer's config that ExaBGP's configuration holds (all but export_services, the
    maxPrefixes settings and BFD, which podbgp runs itself)."""
    return replace(p, export_services=True, max_prefixes=(), max_prefixes_action="warn", restart_after=60, bfd=None)


def _same(a: Announcement | None, b: Announcement) -> bool:
    """a == b, at once when they are the same object (the usual case: a dataclass's __eq__ is
    Python code comparing field tuples, 10,000 of them on every full announce)."""
    return a is b or a == b


def _by_prefix(announced: Iterable[Announcement]) -> dict[IPNetwork, Announcement]:
    """Announcements by prefix; of several for one prefix the same one is kept whatever the order."""
    announced = list(announced)
    out = {a.prefix: a for a in announced}
    if len(out) != len(announced):  # a prefix twice: keep the least by repr, not the last iterated
        for a in announced:
            if repr(a) < repr(out[a.prefix]):
                out[a.prefix] = a
    return out
