"""BFD for the node's sessions through FRR's bfdd run alone (no zebra, no bgpd) as our child.

bfdd 8.4's control socket (--bfdctl, bfdd/bfdctl.h): messages of an 8-byte header
`!IHBB` (payload length, id, type, version 1) and a JSON payload. Type 2 adds a session, 3 deletes
one, 4 subscribes (an 8-byte mask in host byte order, 1 = peer state); bfdd then pushes type-4
notifications `{"op": "status", "peer-address": ..., "state": "up"|"down"|"init"|"adm-down"}`.

The socket is read in a thread of its own, never in the speaker's asyncio loop (a busy loop must
not make a session look down); state changes reach the loop through call_soon_threadsafe. The
framing and payloads below are pure; `Engine` is the thin shell (process, socket, thread).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .types import IPAddress, IPNetwork, PeerConfig

log = logging.getLogger(__name__)

HEADER = struct.Struct("!IHBB")
VERSION = 1
ADD, DELETE, SUBSCRIBE, NOTIFY = 2, 3, 4, 4
NOTIFY_PEER_STATE = 1
BFDD = "/usr/lib/frr/bfdd"


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


RESTARTED = "restarted"  # bfdd was started again: what it said before no longer holds

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

    state: bfdd's last word ("" before any, or since bfdd or the session was started again).
    held: BFD went from up to down; the BGP session is kept out of ExaBGP until BFD is up again.
    dropped: the prefixes whose paths from the peer were dropped then (explain names them)."""

    session: BfdSession
    state: str = ""
    since: float | None = None
    diagnostics: int = 0
    downs: int = 0
    held: bool = False
    dropped: frozenset[IPNetwork] = frozenset()
    dropped_at: float | None = None

    def restart(self) -> None:
        """The session was asked for again (new timers, a new bfdd): its next "down" is no failure
        until it has been "up"."""
        self.state, self.since = "", time.time()


def frame(msg_id: int, kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), msg_id, kind, VERSION) + payload


def session_payload(s: BfdSession) -> bytes:
    fam = "ipv4" if s.peer.version == 4 else "ipv6"
    entry = {"peer-address": str(s.peer), "local-address": str(s.local), "multihop": s.multihop,
             "detect-multiplier": s.multiplier, "receive-interval": s.min_rx, "transmit-interval": s.min_tx}
    return json.dumps({fam: [entry]}, sort_keys=True).encode()


def delete_payload(s: BfdSession) -> bytes:
    fam = "ipv4" if s.peer.version == 4 else "ipv6"
    entry = {"peer-address": str(s.peer), "local-address": str(s.local), "multihop": s.multihop}
    return json.dumps({fam: [entry]}, sort_keys=True).encode()


def subscribe_payload() -> bytes:
    return struct.pack("=Q", NOTIFY_PEER_STATE)


class Reader:
    """Splits a byte stream into (id, type, payload) messages."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= HEADER.size:
            length, msg_id, kind, version = HEADER.unpack_from(self.buf)
            if version != VERSION:
                raise BfdError(f"bfdctl: message version {version}, expected {VERSION}")
            if len(self.buf) < HEADER.size + length:
                break
            out.append((msg_id, kind, self.buf[HEADER.size:HEADER.size + length]))
            self.buf = self.buf[HEADER.size + length:]
        return out


def event_of(payload: bytes) -> BfdEvent | None:
    """A state notification from a type-4 payload (None for anything else)."""
    try:
        doc = json.loads(payload.rstrip(b"\0") or b"{}")
    except ValueError:
        return None
    if doc.get("op") != "status" or "peer-address" not in doc:
        return None
    return BfdEvent(peer=str(doc["peer-address"]), state=str(doc.get("state", "")),
                    diagnostics=int(doc.get("diagnostics", 0) or 0))


Deliver = Callable[[Callable[[], None]], None]  # e.g. a loop's call_soon_threadsafe wrapped


class Engine:
    """bfdd as our child in this network namespace, its sessions, and a reader thread handing
    every state change to on_event through deliver (loop.call_soon_threadsafe for the speaker)."""

    def __init__(self, run_dir: str, on_event: Callable[[BfdEvent], None],
                 deliver: Callable[..., None], bfdd: str = BFDD, user: str = "frr") -> None:
        self.dir, self.on_event, self.deliver, self.bfdd, self.user = run_dir, on_event, deliver, bfdd, user
        self.sessions: dict[str, BfdSession] = {}
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()  # the socket's writers: the caller and the supervisor
        self.closing = threading.Event()
        self.thread: threading.Thread | None = None
        self.next_id = 1

    @property
    def ctl(self) -> str:
        return os.path.join(self.dir, "bfdd.sock")

    def start(self) -> None:
        self._spawn()
        self.thread = threading.Thread(target=self._run, name="bfd-reader", daemon=True)
        self.thread.start()

    def _spawn(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)  # bfdd drops to user frr: the directory must be traversable
        shutil.chown(self.dir, self.user, self.user)
        for name in ("bfdd.sock", "bfdd.pid"):
            if os.path.exists(os.path.join(self.dir, name)):
                os.unlink(os.path.join(self.dir, name))
        conf = os.path.join(self.dir, "bfdd.conf")
        with open(conf, "w") as f:
            f.write("hostname podbgp-bfd\n")
        self.proc = subprocess.Popen(
            [self.bfdd, "-u", self.user, "-g", self.user, "-f", conf, "-i", os.path.join(self.dir, "bfdd.pid"),
             "--vty_socket", self.dir, "-z", os.path.join(self.dir, "zserv.api"), "--bfdctl", self.ctl,
             "--log", f"file:{os.path.join(self.dir, 'bfdd.log')}", "-A", "127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(self.ctl)
                break
            except OSError:
                sock.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BfdError(f"bfdd did not open {self.ctl}; see {self.dir}/bfdd.log") from None
                time.sleep(0.05)
        with self.lock:
            self.sock = sock
            self._send(SUBSCRIBE, subscribe_payload())
            for s in self.sessions.values():
                self._send(ADD, session_payload(s))
        log.info("bfd.start pid=%d sessions=%d", self.proc.pid, len(self.sessions))

    def _send(self, kind: int, payload: bytes) -> None:
        assert self.sock is not None
        self.next_id = self.next_id % 0xFFFF + 1
        self.sock.sendall(frame(self.next_id, kind, payload))

    def add(self, s: BfdSession) -> None:
        """Ask for a session (replacing one to the same peer); idempotent."""
        with self.lock:
            old = self.sessions.get(str(s.peer))
            if old == s:
                return
            if old is not None and self.sock is not None:
                self._send(DELETE, delete_payload(old))
            self.sessions[str(s.peer)] = s
            if self.sock is not None:
                self._send(ADD, session_payload(s))

    def remove(self, peer: IPAddress) -> None:
        with self.lock:
            old = self.sessions.pop(str(peer), None)
            if old is not None and self.sock is not None:
                self._send(DELETE, delete_payload(old))

    def _run(self) -> None:
        """Read notifications; when bfdd dies, start it again (its sessions re-added)."""
        while not self.closing.is_set():
            reader, sock = Reader(), self.sock
            try:
                while sock is not None:
                    data = sock.recv(65536)
                    if not data:
                        break
                    for _, kind, payload in reader.feed(data):
                        ev = event_of(payload) if kind == NOTIFY else None
                        if ev is not None:
                            self.deliver(self.on_event, ev)
            except (OSError, BfdError) as exc:
                log.warning("bfd.socket error=%r", exc)
            if self.closing.is_set():
                return
            log.warning("bfd.restart reason='bfdd control socket closed'")
            self._stop_proc()
            try:
                self._spawn()
                self.deliver(self.on_event, BfdEvent(peer="", state=RESTARTED))
            except (OSError, BfdError) as exc:
                log.error("bfd.restart.failed error=%r", exc)
                time.sleep(1)

    def _stop_proc(self) -> None:
        with self.lock:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
        pid_path = os.path.join(self.dir, "bfdd.pid")
        pids = {self.proc.pid} if self.proc is not None else set()
        try:
            with open(pid_path) as f:
                pids.add(int(f.read().strip()))
        except (OSError, ValueError):
            pass
        for pid in pids:  # by PID, never by name
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.closing.set()
        self._stop_proc()
        if self.thread is not None:
            self.thread.join(timeout=5)
