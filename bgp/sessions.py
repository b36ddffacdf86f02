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
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Callable

from . import encode, render, security
from .decode import decode_line
from .process import ExaBGP, api_command
from .rib import Rib
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


class Sessions:
    def __init__(self, runtime_dir: str, exabgp: str, graceful_restart: int, convergence_timeout: float,
                 on_paths: Callable[[set[IPNetwork]], None], on_converged: Callable[[str], None],
                 counters: collections.Counter | None = None, factory: Callable[..., ExaBGP] = ExaBGP,
                 read_counters: Callable[[], dict[str, int] | None] = security.read_counters,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime_dir, self.exabgp_path = runtime_dir, exabgp
        self.read_counters, self.clock = read_counters, clock
        self.graceful_restart = graceful_restart
        self.convergence_timeout = convergence_timeout
        self.on_paths, self.on_converged = on_paths, on_converged
        self.counters = counters if counters is not None else collections.Counter()
        self.factory = factory
        self.rib = Rib()
        self.exabgp: ExaBGP | None = None
        self.peers: list[PeerConfig] = []
        self.state: dict[str, SessionState] = {}
        self.reason: dict[str, str] = {}
        self.since: dict[str, float] = {}  # unix time each peer entered its current state
        self.eor: dict[str, set[str]] = collections.defaultdict(set)
        self.restart_time: dict[str, int | None] = {}  # the GR restart time each peer advertised
        self.stale_timers: dict[str, asyncio.TimerHandle] = {}
        self.announced: frozenset[Announcement] = frozenset()
        # what ExaBGP's Adj-RIB-Out holds for each peer: it keeps it across the peer's session
        # flaps (and sends it again on reconnect) until the peer is removed or ExaBGP restarts
        self.sent: dict[str, frozenset[Announcement]] = {}
        self.converged = False
        self.exabgp_reason: dict[str, str] = {}  # `reason` without our hint about MD5 / GTSM
        self.quiet_since: dict[str, float] = {}  # clock() since when a peer has had no TCP connection
        self._security_timer: asyncio.TimerHandle | None = None
        self.removed: set[str] = set()  # peers taken out of the configuration (until they return)

    # ---- what the speaker asks for -----------------------------------------------------------
    def configure(self, peers: list[PeerConfig]) -> None:
        """Run ExaBGP with these peers: started on the first call, reloaded on a change (ConfigError,
        and nothing changed, if they cannot be rendered)."""
        if self.exabgp is not None and peers == self.peers:
            return
        text = render.render(peers, api_command(os.path.join(self.runtime_dir, "api.sock")))
        old = {p.key: p for p in self.peers}
        new = {p.key: p for p in peers}
        self.peers = peers
        for key in sorted(old.keys() - new.keys()):
            self._remove(key)
        self.removed -= new.keys()
        for p in peers:
            if p.key not in self.state:
                self._set_state(p.key, SessionState.IDLE)
            if old.get(p.key) != p:
                self.quiet_since[p.key] = self.clock()
                self.reason[p.key] = self.exabgp_reason.get(p.key, "")  # a hint about the old settings
        if any(p.secured for p in peers):
            self._arm_security_check(self.security_hint_after)
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

    def _remove(self, peer: str) -> None:
        """A peer left the configuration: forget it, and drop its paths now, stale ones included."""
        timer = self.stale_timers.pop(peer, None)
        if timer:
            timer.cancel()
        paths = self.rib.count(peer)
        dropped = self.rib.peer_down(peer, keep_stale=False)
        for table in (self.state, self.reason, self.exabgp_reason, self.since, self.eor, self.restart_time,
                      self.sent, self.quiet_since):
            table.pop(peer, None)
        self.removed.add(peer)
        log.info("bgp.peer.removed peer=%s paths=%d", peer, paths)
        if dropped:
            self.on_paths(dropped)

    def announce(self, announced: frozenset[Announcement]) -> None:
        """Announce exactly these prefixes to every established peer (and later ones)."""
        self.announced = announced
        if self.exabgp is None:
            return
        for p in self.peers:
            if self.state.get(p.key) != SessionState.UP:
                continue  # brought up to date when it comes up (_announce_to)
            cmds = encode.sync(p.key, p.families, self.sent.get(p.key, frozenset()), announced)
            if cmds and self._send(cmds):
                self.sent[p.key] = announced

    async def stop(self) -> None:
        for timer in self.stale_timers.values():
            timer.cancel()
        if self._security_timer is not None:
            self._security_timer.cancel()
        if self.exabgp is not None:
            await self.exabgp.stop()

    @property
    def pid(self) -> int | None:
        return self.exabgp.pid if self.exabgp else None

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
            changed = self.rib.apply(ev)
            if changed:
                self.on_paths(changed)
        elif isinstance(ev, StateEvent):
            self._on_state(ev)
        elif isinstance(ev, OpenEvent):
            self.restart_time[ev.peer] = ev.graceful_restart
        elif isinstance(ev, EorEvent):
            self.eor[ev.peer].add(ev.family)
            log.info("bgp.eor peer=%s family=%s", ev.peer, ev.family)
            if self._complete(ev.peer):
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

    def _on_api_connect(self) -> None:
        """A new API process: commands written to the old one may be lost. ExaBGP's Adj-RIB-Out
        dropped nothing, and announcing what it holds again is a no-op there, so established
        peers are brought up to date in full (withdraws of what they no longer get included)."""
        for p in self.peers:
            if self.state.get(p.key) == SessionState.UP:
                cmds = encode.resync(p.key, p.families, self.sent.get(p.key, frozenset()), self.announced)
                if self._send(cmds):
                    self.sent[p.key] = self.announced

    def _on_exabgp_exit(self, rc: int) -> None:
        self.counters["exabgp_restarts"] += 1
        self.sent.clear()  # the next ExaBGP starts with an empty Adj-RIB-Out
        for p in self.peers:
            if self.state.get(p.key) == SessionState.UP:
                self._peer_down(p.key, f"exabgp exited rc={rc}")
            else:
                self._set_state(p.key, SessionState.DOWN, f"exabgp exited rc={rc}")

    def _on_state(self, ev: StateEvent) -> None:
        prev = self.state.get(ev.peer)
        if ev.state == SessionState.DOWN and prev == SessionState.UP:
            # only the end of an established session touches the RIB; the failed connection
            # attempts that follow (connected -> down, again and again) must not drop stale paths
            self._peer_down(ev.peer, ev.reason)
            return
        self._set_state(ev.peer, ev.state, ev.reason)
        if ev.state == SessionState.UP:
            log.info("bgp.peer.up peer=%s", ev.peer)
            self.eor[ev.peer].clear()
            self._announce_to(ev.peer)

    def _set_state(self, peer: str, state: SessionState, reason: str = "") -> None:
        if self.state.get(peer) != state:
            self.since[peer] = time.time()
            if state in (SessionState.CONNECTED, SessionState.UP):
                self.quiet_since.pop(peer, None)  # a TCP connection: neither MD5 nor GTSM is in the way
            elif peer not in self.quiet_since:
                self.quiet_since[peer] = self.clock()
                cfg = self._config(peer)
                if cfg is not None and cfg.secured:
                    self._arm_security_check(self.security_hint_after)
        self.state[peer] = state
        self.exabgp_reason[peer] = reason
        self.reason[peer] = reason

    def _announce_to(self, peer: str) -> None:
        """Our own routes first, then End-of-RIB (manual EoR: the peer never purges them in a gap).

        ExaBGP sends again on its own what its Adj-RIB-Out kept from before a session flap; what
        we stopped announcing meanwhile is withdrawn here (announcing the rest again is a no-op)."""
        cfg = self._config(peer)
        if cfg is None:
            return
        cmds = encode.resync(peer, cfg.families, self.sent.get(peer, frozenset()), self.announced)
        if cfg.graceful_restart:
            cmds += [encode.eor(peer, fam) for fam in sorted(cfg.families)]
        if self._send(cmds):
            self.sent[peer] = self.announced

    def _send(self, cmds: list[str]) -> bool:
        if self.exabgp is None or not self.exabgp.send(cmds):
            return False
        for c in cmds:
            log.info("bgp.command %s", c)
        return True

    def _config(self, peer: str) -> PeerConfig | None:
        return next((p for p in self.peers if p.key == peer), None)

    def _complete(self, peer: str) -> bool:
        cfg = self._config(peer)
        return cfg is not None and cfg.families <= self.eor[peer]

    def _peer_down(self, peer: str, reason: str) -> None:
        self._set_state(peer, SessionState.DOWN, reason)
        self.eor[peer].clear()
        # graceful restart is negotiated when both sides advertised it: keep the peer's paths,
        # marked stale, for the restart time the peer advertised (RFC 4724)
        restart = self.restart_time.get(peer) or 0
        keep = self.graceful_restart > 0 and restart > 0
        log.info("bgp.peer.down peer=%s reason=%r paths=%d kept_stale_for=%ss", peer, reason, self.rib.count(peer),
                 restart if keep else 0)
        dropped = self.rib.peer_down(peer, keep_stale=keep)
        if keep and self.rib.count(peer):
            old = self.stale_timers.pop(peer, None)
            if old:
                old.cancel()
            self.stale_timers[peer] = asyncio.get_running_loop().call_later(restart, self._end_stale, peer)
        if dropped:
            self.on_paths(dropped)

    def _end_stale(self, peer: str) -> None:
        timer = self.stale_timers.pop(peer, None)
        if timer:
            timer.cancel()
        swept = self.rib.sweep_stale(peer)
        if swept:
            log.info("bgp.stale.swept peer=%s paths=%d", peer, len(swept))
            self.on_paths(swept)

    # ---- MD5 and GTSM: why a secured peer has no TCP connection -------------------------------
    security_hint_after = 2.0  # seconds without a TCP connection before the reason says why it may be
    security_interval = 5.0  # the hint's counters are read again this often while a secured peer is down

    def _arm_security_check(self, delay: float) -> None:
        timer = self._security_timer
        loop = asyncio.get_running_loop()
        if timer is not None:
            if timer.when() <= loop.time() + delay:
                return
            timer.cancel()
        self._security_timer = loop.call_later(delay, self._security_check)

    def _security_check(self) -> None:
        """For each peer under MD5 or GTSM without a TCP connection for a while, say in `reason`
        what drops its segments, with the kernel's counters (read once per check, and only then)."""
        self._security_timer = None
        now = self.clock()
        counters: dict[str, int] | None = None
        read = False
        again: float | None = None
        for p in self.peers:
            if not p.secured or p.key not in self.quiet_since:
                continue
            quiet = now - self.quiet_since[p.key]
            if quiet < self.security_hint_after:
                self.reason[p.key] = self.exabgp_reason.get(p.key, "")
                again = min(again or self.security_interval, self.security_hint_after - quiet)
                continue
            if not read:
                counters, read = self.read_counters(), True
            self.reason[p.key] = security.combine(self.exabgp_reason.get(p.key, ""), security.hint(p, quiet, counters))
            again = min(again or self.security_interval, self.security_interval)
        if again is not None:
            self._arm_security_check(again)

    # ---- convergence: the gate that allows pruning -------------------------------------------
    def _check_converged(self) -> None:
        if not self.converged and self.peers and all(
                self.state.get(p.key) == SessionState.UP and self._complete(p.key) for p in self.peers):
            self._set_converged("all peers up and End-of-RIB received")

    def _convergence_timeout(self) -> None:
        if not self.converged:
            self._set_converged(f"grace time {self.convergence_timeout:.0f}s passed")

    def _set_converged(self, why: str) -> None:
        self.converged = True
        log.info("rib.converged reason=%r pruning enabled", why)
        self.on_converged(why)
