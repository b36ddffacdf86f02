"""BFD (RFC 5880 asynchronous mode, RFC 5881 single hop, RFC 5883 multihop) as pure code: the
control packet and one session's state machine, with the time handed in. No authentication, no
echo function, no demand mode. bgp.bfd_engine is the shell around it (sockets, timers, the speaker's
commands).

Timers, as RFC 5880 section 6.8 has them: until a session is Up we send at most once a second
(DesiredMinTx 1 s), then at max(our minTx, the peer's RequiredMinRx), jittered to 75-100 % of
it; a change of our DesiredMinTx is a Poll Sequence (the P bit until the peer answers with F), and
a Poll from the peer is answered at once with F. The peer is declared down when nothing came for
its DetectMult x max(our RequiredMinRx, its DesiredMinTx).
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from .types import IPAddress

ADMIN_DOWN, DOWN, INIT, UP = 0, 1, 2, 3
STATE_NAMES = ("adm-down", "down", "init", "up")
DIAG_NONE, DIAG_EXPIRED, DIAG_NEIGHBOR_DOWN, DIAG_ADMIN_DOWN = 0, 1, 3, 7
SLOW_TX = 1_000_000  # µs: DesiredMinTx while not Up (section 6.8.3)
SINGLE_HOP_PORT, MULTIHOP_PORT = 3784, 4784

PACKET = struct.Struct("!BBBBIIIII")  # the 24-byte mandatory section


@dataclass(frozen=True, slots=True)
class Packet:
    state: int
    diag: int
    mult: int
    my_disc: int
    your_disc: int
    min_tx: int  # µs: Desired Min TX Interval
    min_rx: int  # µs: Required Min RX Interval
    poll: bool = False
    final: bool = False


def encode(p: Packet) -> bytes:
    return PACKET.pack((1 << 5) | (p.diag & 0x1F), (p.state << 6) | (p.poll << 5) | (p.final << 4), p.mult,
                       PACKET.size, p.my_disc, p.your_disc, p.min_tx, p.min_rx, 0)


def decode(data: bytes) -> tuple[Packet | None, str]:
    """A control packet, or None and why it is discarded (section 6.8.6's checks; authentication
    is refused: no session here asks for it)."""
    if len(data) < PACKET.size:
        return None, f"short packet ({len(data)} bytes)"
    b0, b1, mult, length, my, your, tx, rx, _ = PACKET.unpack_from(data)
    if b0 >> 5 != 1:
        return None, f"version {b0 >> 5}"
    if length < PACKET.size or length > len(data):
        return None, f"length field {length} of a {len(data)}-byte packet"
    if b1 & 0x04:
        return None, "authentication present"
    if mult == 0:
        return None, "detect multiplier 0"
    if b1 & 0x01:
        return None, "multipoint bit set"
    if my == 0:
        return None, "my discriminator 0"
    state = b1 >> 6
    if your == 0 and state not in (DOWN, ADMIN_DOWN):
        return None, f"your discriminator 0 in state {STATE_NAMES[state]}"
    return Packet(state=state, diag=b0 & 0x1F, mult=mult, my_disc=my, your_disc=your, min_tx=tx, min_rx=rx,
                  poll=bool(b1 & 0x20), final=bool(b1 & 0x10)), ""


@dataclass(frozen=True, slots=True)
class Change:
    """A session's state changed: its new state's name (adm-down: the peer said AdminDown, which
    RFC 5882 section 3.2 says is no connectivity failure) and the diagnostic."""
    state: str
    diag: int


class Session:
    """One BFD session's state (section 6.8.1's variables) and its rules; times in seconds."""

    def __init__(self, peer: IPAddress, local: IPAddress, min_rx_ms: int, min_tx_ms: int, mult: int,
                 multihop: bool, my_disc: int, now: float, rng: random.Random | None = None) -> None:
        self.peer, self.local, self.multihop, self.my_disc = peer, local, multihop, my_disc
        self.state, self.diag = DOWN, DIAG_NONE
        self.remote_disc, self.remote_state = 0, DOWN
        self.mult = mult
        self.configured_tx, self.required_rx = min_tx_ms * 1000, min_rx_ms * 1000
        self.desired_tx = SLOW_TX
        self.remote_min_rx = 1  # µs, until the peer says (section 6.8.1)
        self.remote_min_tx = 0
        self.remote_mult = 0
        self.polling = False  # our Poll Sequence: P set until the peer's F
        self.final_due = False  # the peer polled: the next packet, sent at once, carries F
        self.detect_at: float | None = None
        self.next_tx = now  # the first packet goes out at once
        self.rng = rng or random.Random()

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]

    def packet(self) -> Packet:
        """The next packet to send (consumes a due Final)."""
        final, self.final_due = self.final_due, False
        return Packet(state=self.state, diag=self.diag, mult=self.mult, my_disc=self.my_disc,
                      your_disc=self.remote_disc, min_tx=self.desired_tx, min_rx=self.required_rx,
                      poll=self.polling and not final, final=final)

    def interval(self) -> float | None:
        """Seconds between periodic packets, before jitter; None: the peer wants none (its
        RequiredMinRx is 0)."""
        if self.remote_min_rx == 0:
            return None
        return max(self.desired_tx, self.remote_min_rx) / 1e6

    def sent(self, now: float) -> None:
        """A packet went out: when the next periodic one is due (75-100 % of the interval, at
        most 90 % with a multiplier of 1: section 6.8.7)."""
        iv = self.interval()
        top = 0.9 if self.mult == 1 else 1.0
        self.next_tx = float("inf") if iv is None else now + iv * self.rng.uniform(0.75, top)

    def detection_time(self) -> float:
        return self.remote_mult * max(self.required_rx, self.remote_min_tx) / 1e6

    def receive(self, p: Packet, now: float) -> Change | None:
        """A valid packet from the peer for this session (section 6.8.6)."""
        self.remote_disc, self.remote_state, self.remote_mult = p.my_disc, p.state, p.mult
        self.remote_min_tx = p.min_tx
        if p.min_rx != self.remote_min_rx:
            self.remote_min_rx = p.min_rx
            if p.min_rx and self.next_tx == float("inf"):
                self.next_tx = now
        if p.final and self.polling:
            self.polling = False
        if p.poll:
            self.final_due = True
            self.next_tx = now
        if p.state == ADMIN_DOWN:
            if self.state != DOWN:
                self._to(DOWN, DIAG_NEIGHBOR_DOWN, now)
                return Change("adm-down", DIAG_NEIGHBOR_DOWN)
            return None
        if self.state in (INIT, UP) or p.state in (INIT, UP):
            self.detect_at = now + self.detection_time()
        if self.state == DOWN:
            if p.state == DOWN:
                return self._to(INIT, DIAG_NONE, now)
            if p.state == INIT:
                return self._to(UP, DIAG_NONE, now)
        elif self.state == INIT:
            if p.state in (INIT, UP):
                return self._to(UP, DIAG_NONE, now)
        elif self.state == UP and p.state == DOWN:
            return self._to(DOWN, DIAG_NEIGHBOR_DOWN, now)
        return None

    def expire(self, now: float) -> Change | None:
        """The detection time passed without a packet: Down, "control detection time expired"."""
        if self.detect_at is None or now < self.detect_at or self.state not in (INIT, UP):
            return None
        self.remote_disc = 0  # section 6.8.1: reset when the detection time expires
        return self._to(DOWN, DIAG_EXPIRED, now)

    def _to(self, state: int, diag: int, now: float) -> Change:
        self.state, self.diag = state, diag
        tx = self.configured_tx if state == UP else SLOW_TX
        if tx != self.desired_tx:
            self.desired_tx, self.polling = tx, True  # a new DesiredMinTx: a Poll Sequence
        if state == DOWN:
            self.detect_at = None
        self.next_tx = now  # a state change is told at once
        return Change(STATE_NAMES[state], diag)
