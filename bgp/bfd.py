"""BFD beside the node's BGP sessions: what the speaker asks for and hears, and `Engine`, which runs
bgp.bfd_engine (RFC 5880/5881/5883 in a process of its own) and talks to it in JSON lines.

The engine's events are read in a thread of its own, never in the speaker's asyncio loop, and
handed over through `deliver` (the loop's call_soon_threadsafe); the engine itself is another
process, so nothing the speaker's interpreter does (a 5,000-Node re-list, a leaked table) can
delay a BFD packet or make a session look down.

Why not FRR's bfdd (its control socket was tried first): run alone it still asks for
CAP_SYS_ADMIN, CAP_NET_RAW, CAP_SETUID and CAP_SETGID ("privs_init: initial cap_set_proc failed"
under the DaemonSet's NET_ADMIN + NET_BIND_SERVICE), and its package pulls all of FRR into the
image. bgp.bfd_engine needs no capability at all (UDP ports above 1024, TTL 255 set per socket).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .types import IPAddress, IPNetwork, PeerConfig

log = logging.getLogger(__name__)



class BfdError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class BfdSession:
    """One BFD session asked for a BGP peer: single hop unless multihop."""
    peer: IPAddress
    local: IPAddress
    min_rx: int = 300  # ms
    min_tx: int = 300  # ms
    multiplier: int = 3
    multihop: bool = False


@dataclass(frozen=True, slots=True)
class BfdEvent:
    peer: str  # "" with state RESTARTED: every session starts again
    state: str  # up | down | init | adm-down | restarted
    diagnostics: int = 0


RESTARTED = "restarted"  # the engine was started again: what it said before no longer holds

# RFC 5880 section 4.1's diagnostic codes, as status and logs say them
DIAGNOSTICS = {0: "no diagnostic", 1: "control detection time expired", 2: "echo function failed",
               3: "neighbor signaled session down", 4: "forwarding plane reset", 5: "path down",
               6: "concatenated path down", 7: "administratively down", 8: "reverse concatenated path down"}


def peer_key(address: str) -> str:
    """A peer's key (PeerConfig.key) from the address bfdd names it by."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def session_for(cfg: PeerConfig) -> BfdSession | None:
    """The BFD session a peer's config asks for (None: no BFD): multihop when the peer may be more
    than one hop away (eBGP multihop or GTSM with more than one hop)."""
    t = cfg.bfd
    if t is None:
        return None
    multihop = (cfg.multihop or 1) > 1 or (cfg.ttl_security or 1) > 1
    return BfdSession(peer=cfg.address, local=cfg.local_address, min_rx=t.min_rx, min_tx=t.min_tx,
                      multiplier=t.multiplier, multihop=multihop)


@dataclass(slots=True)
class Watch:
    """What the speaker keeps about one peer's BFD session.

    state: the engine's last word ("" before any, or since the engine or the session was started again).
    tearing: BFD went from up to down and the BGP session's teardown was sent; until ExaBGP says
    it is down, nothing from it counts. dropped: the prefixes whose paths from the peer were dropped
    then (explain names them), until BFD is up again."""

    session: BfdSession
    state: str = ""
    since: float | None = None
    diagnostics: int = 0
    downs: int = 0
    tearing: bool = False
    dropped: frozenset[IPNetwork] = frozenset()
    dropped_at: float | None = None

    def restart(self) -> None:
        """The session was asked for again (new timers, a new engine): its next "down" is no failure
        until it has been "up"."""
        self.state, self.since = "", time.time()


def command(op: str, s: BfdSession) -> bytes:
    """One line to the engine: add or remove a session."""
    doc = {"op": op, "peer": str(s.peer)}
    if op == "add":
        doc.update(local=str(s.local), minRx=s.min_rx, minTx=s.min_tx, multiplier=s.multiplier, multihop=s.multihop)
    return (json.dumps(doc) + "\n").encode()


def event_of(line: bytes) -> BfdEvent | None:
    """A state change from one of the engine's lines (None for anything else)."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or "peer" not in doc or "state" not in doc:
        return None
    return BfdEvent(peer=str(doc["peer"]), state=str(doc["state"]), diagnostics=int(doc.get("diagnostics") or 0))


Deliver = Callable[..., None]  # e.g. a loop's call_soon_threadsafe


class Engine:
    """bgp.bfd_engine as our child (in this network namespace), its sessions, and a reader thread
    handing every state change to on_event through deliver. A child that dies is started again
    with the sessions (and RESTARTED told); close() stops it, each peer told AdminDown."""

    def __init__(self, on_event: Callable[[BfdEvent], None], deliver: Deliver,
                 argv: list[str] | None = None) -> None:
        self.on_event, self.deliver = on_event, deliver
        self.argv = argv or [sys.executable, "-m", "bgp.bfd_engine"]
        self.sessions: dict[str, BfdSession] = {}
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()  # the child's stdin: the caller and the restarting reader
        self.closing = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self._spawn()
        self.thread = threading.Thread(target=self._run, name="bfd-reader", daemon=True)
        self.thread.start()

    def _spawn(self) -> None:
        proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert proc.stdout is not None
        first = proc.stdout.readline()
        try:
            doc = json.loads(first)
        except ValueError:
            doc = {}
        if not doc.get("ready"):
            proc.kill()
            proc.wait()
            raise BfdError(doc.get("error") or f"the BFD engine exited without a word (rc {proc.returncode})")
        with self.lock:
            self.proc = proc
            for s in self.sessions.values():
                self._write(command("add", s))
        log.info("bfd.engine.start pid=%d sessions=%d", proc.pid, len(self.sessions))

    def _write(self, data: bytes) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(data)
            proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the reader sees it die and starts another with every session

    def add(self, s: BfdSession) -> None:
        """Ask for a session (replacing one to the same peer); idempotent."""
        with self.lock:
            if self.sessions.get(str(s.peer)) == s:
                return
            self.sessions[str(s.peer)] = s
            self._write(command("add", s))

    def remove(self, peer: IPAddress) -> None:
        with self.lock:
            old = self.sessions.pop(str(peer), None)
            if old is not None:
                self._write(command("remove", old))

    def _run(self) -> None:
        """Read the engine's events; when it dies, start it again (its sessions re-added)."""
        while not self.closing.is_set():
            proc = self.proc
            if proc is not None and proc.stdout is not None:
                for line in proc.stdout:
                    ev = event_of(line)
                    if ev is not None:
                        self.deliver(self.on_event, ev)
                proc.wait()
            if self.closing.is_set():
                return
            log.warning("bfd.engine.restart reason='the engine exited rc=%s'", proc.returncode if proc else None)
            time.sleep(0.5)
            try:
                self._spawn()
                self.deliver(self.on_event, BfdEvent(peer="", state=RESTARTED))
            except (OSError, BfdError) as exc:
                log.error("bfd.engine.restart.failed error=%r", str(exc))
                time.sleep(1)

    def close(self) -> None:
        """Stop the engine: every peer gets AdminDown first (no failure for it)."""
        self.closing.set()
        proc = self.proc
        if proc is not None:
            with self.lock:
                self._write(b'{"op": "stop"}\n')
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()  # our child, by its PID
                proc.wait()
        if self.thread is not None:
            self.thread.join(timeout=5)
