"""podbgp's BFD engine: a process of its own (`python -m bgp.bfd_engine`), started by bgp.bfd.Engine,
so no Python work of the speaker (a 5,000-Node re-list, a leaked table) can delay a packet or a
detection: it shares no interpreter lock with the speaker.

Protocol with the speaker: JSON lines. On stdin {"op": "add", "peer", "local", "minRx", "minTx",
"multiplier", "multihop"}, {"op": "remove", "peer"}, {"op": "stop"}; on stdout first
{"ready": true} or {"ready": false, "error": ...}, then {"peer", "state", "diagnostics"} at each
state change. On "remove" and "stop" the peer gets AdminDown (RFC 5880 section 6.8.16: no failure
for it), then the session ends.

Sockets need no capability: UDP 3784 (single hop: only packets with TTL/hop limit 255 are taken,
RFC 5881 section 5) and 4784 (multihop, RFC 5883) to receive, and per session a socket bound to
its local address and a source port in 49152-65535, sending with TTL 255.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import selectors
import signal
import socket
import struct
import sys
import time

from . import bfd_proto as proto

IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)


def _rx_socket(family: int, port: int) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
        s.bind(("::", port))
    else:
        s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        s.bind(("0.0.0.0", port))
    s.setblocking(False)
    return s


def _tx_socket(local: ipaddress.IPv4Address | ipaddress.IPv6Address, rng: random.Random) -> socket.socket:
    v6 = local.version == 6
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    else:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
    for _ in range(64):
        try:
            s.bind((str(local), rng.randint(49152, 65535)))
            break
        except OSError as exc:
            if exc.errno != 98:  # EADDRINUSE: try another port
                s.close()
                raise
    else:
        s.close()
        raise OSError(f"no free source port in 49152-65535 on {local}")
    s.setblocking(False)
    return s


def _ttl(ancdata) -> int | None:
    for level, kind, data in ancdata:
        if (level, kind) in ((socket.IPPROTO_IP, socket.IP_TTL), (socket.IPPROTO_IPV6, IPV6_HOPLIMIT)):
            return struct.unpack("i", data[:4])[0] if len(data) >= 4 else data[0]
    return None


class Engine:
    def __init__(self, out=sys.stdout) -> None:
        self.out = out
        self.rng = random.Random()
        self.sel = selectors.DefaultSelector()
        self.sessions: dict[str, proto.Session] = {}  # by peer address
        self.by_disc: dict[int, proto.Session] = {}
        self.tx: dict[str, socket.socket] = {}
        self.rx: list[tuple[socket.socket, bool]] = []  # (socket, multihop)

    def emit(self, doc: dict) -> None:
        self.out.write(json.dumps(doc) + "\n")
        self.out.flush()

    def open(self) -> None:
        for family in (socket.AF_INET, socket.AF_INET6):
            for port, multihop in ((proto.SINGLE_HOP_PORT, False), (proto.MULTIHOP_PORT, True)):
                try:
                    s = _rx_socket(family, port)
                except OSError as exc:
                    if family == socket.AF_INET6 and exc.errno in (97, 99):  # no IPv6 here
                        continue
                    raise OSError(f"cannot listen on UDP {port} ({'IPv6' if family == socket.AF_INET6 else 'IPv4'}): "
                                  f"{exc.strerror}") from None
                self.rx.append((s, multihop))
                self.sel.register(s, selectors.EVENT_READ, multihop)

    def add(self, doc: dict) -> None:
        peer, local = ipaddress.ip_address(doc["peer"]), ipaddress.ip_address(doc["local"])
        key = str(peer)
        if key in self.sessions:
            self.remove(key)
        disc = self.rng.randint(1, 2**32 - 1)
        while disc in self.by_disc:
            disc = self.rng.randint(1, 2**32 - 1)
        try:
            self.tx[key] = _tx_socket(local, self.rng)
        except OSError as exc:
            self.emit({"peer": key, "state": "down", "diagnostics": 0, "error": f"cannot send from {local}: {exc}"})
            return
        s = proto.Session(peer, local, int(doc.get("minRx", 300)), int(doc.get("minTx", 300)),
                          int(doc.get("multiplier", 3)), bool(doc.get("multihop", False)), disc, time.monotonic(),
                          self.rng)
        self.sessions[key], self.by_disc[disc] = s, s

    def remove(self, key: str) -> None:
        """End a session, the peer told AdminDown first (no failure for it)."""
        s = self.sessions.pop(key, None)
        if s is None:
            return
        self.by_disc.pop(s.my_disc, None)
        sock = self.tx.pop(key)
        s.state, s.diag = proto.ADMIN_DOWN, proto.DIAG_ADMIN_DOWN
        for _ in range(3):
            self._send(s, sock)
        sock.close()

    def _send(self, s: proto.Session, sock: socket.socket | None = None) -> None:
        sock = sock or self.tx[str(s.peer)]
        port = proto.MULTIHOP_PORT if s.multihop else proto.SINGLE_HOP_PORT
        try:
            sock.sendto(proto.encode(s.packet()), (str(s.peer), port))
        except OSError:
            pass  # no route, the link down: detection handles the peer

    def receive(self, sock: socket.socket, multihop: bool) -> None:
        while True:
            try:
                data, anc, _, src = sock.recvmsg(128, socket.CMSG_SPACE(4))
            except BlockingIOError:
                return
            if not multihop and _ttl(anc) not in (None, 255):
                continue  # RFC 5881: a single-hop packet that crossed a router
            p, _why = proto.decode(data)
            if p is None:
                continue
            addr = str(ipaddress.ip_address(src[0].split("%")[0]))
            s = self.by_disc.get(p.your_disc) if p.your_disc else self.sessions.get(addr)
            if s is None or str(s.peer) != addr or s.multihop != multihop:
                continue
            change = s.receive(p, time.monotonic())
            if change is not None:
                self.emit({"peer": addr, "state": change.state, "diagnostics": change.diag})
            if s.final_due or change is not None:
                self._send(s)
                s.sent(time.monotonic())

    def tick(self) -> float:
        """Send what is due and expire what is silent; seconds until the next thing to do."""
        now = time.monotonic()
        nxt = now + 1.0
        for key, s in list(self.sessions.items()):
            change = s.expire(now)
            if change is not None:
                self.emit({"peer": key, "state": change.state, "diagnostics": change.diag})
            if s.next_tx <= now:
                self._send(s)
                s.sent(now)
            nxt = min(nxt, s.next_tx, s.detect_at if s.detect_at is not None else nxt)
        return max(0.0, nxt - time.monotonic())

    def command(self, line: str) -> bool:
        """One line from the speaker; False when it says stop."""
        try:
            doc = json.loads(line)
        except ValueError:
            return True
        op = doc.get("op")
        if op == "add":
            self.add(doc)
        elif op == "remove":
            self.remove(str(ipaddress.ip_address(doc["peer"])))
        elif op == "stop":
            return False
        return True

    def run(self, stdin) -> None:
        fd = stdin.fileno()
        os.set_blocking(fd, False)
        self.sel.register(fd, selectors.EVENT_READ, "stdin")
        buf = b""
        while True:
            timeout = self.tick()
            for key, _ in self.sel.select(timeout):
                if key.data == "stdin":
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        return  # the speaker is gone
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if not self.command(line.decode()):
                            return
                else:
                    self.receive(key.fileobj, key.data)

    def close(self) -> None:
        for key in list(self.sessions):
            self.remove(key)
        for s, _ in self.rx:
            s.close()


def main() -> int:
    # SIGTERM (the Pod stopping): end with AdminDown to every peer, as when the speaker says stop
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    eng = Engine()
    try:
        eng.open()
    except OSError as exc:
        eng.emit({"ready": False, "error": str(exc)})
        return 1
    eng.emit({"ready": True, "pid": os.getpid()})
    try:
        eng.run(sys.stdin)
    finally:
        eng.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
