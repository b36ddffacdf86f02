"""BFD (bgp.bfd_proto, pure): the control packet, the state machine of RFC 5880 section 6.8.6, the
timers, two sessions brought up against each other on a simulated clock; and the engine's JSON
lines (bgp.bfd)."""
import ipaddress as ia
import json
import random

import pytest

from bgp import bfd
from bgp import bfd_proto as p

A = ia.ip_address


def session(disc=1, now=0.0, **kw):
    args = dict(min_rx_ms=300, min_tx_ms=300, mult=3, multihop=False)
    args.update(kw)
    return p.Session(A("10.99.0.2"), A("10.99.0.1"), my_disc=disc, now=now, rng=random.Random(1), **args)


def pkt(state, my=77, your=1, tx=300_000, rx=300_000, mult=3, **kw):
    return p.Packet(state=state, diag=0, mult=mult, my_disc=my, your_disc=your, min_tx=tx, min_rx=rx, **kw)


def test_packet_round_trip_and_wire_layout():
    x = p.Packet(state=p.UP, diag=1, mult=3, my_disc=0x01020304, your_disc=5, min_tx=300_000, min_rx=200_000,
                 poll=True)
    data = p.encode(x)
    assert len(data) == 24 and data[0] == 0x21 and data[1] == (3 << 6) | 0x20 and data[3] == 24
    assert p.decode(data) == (x, "")


@pytest.mark.parametrize("mutate,why", [
    (lambda d: d[:20], "short packet"),
    (lambda d: bytes([0x40]) + d[1:], "version 2"),
    (lambda d: d[:3] + bytes([30]) + d[4:], "length field 30"),
    (lambda d: d[:1] + bytes([d[1] | 0x04]) + d[2:], "authentication"),
    (lambda d: d[:2] + bytes([0]) + d[3:], "detect multiplier 0"),
    (lambda d: d[:1] + bytes([d[1] | 0x01]) + d[2:], "multipoint"),
    (lambda d: d[:4] + bytes(4) + d[8:], "my discriminator 0"),
])
def test_invalid_packets_are_discarded_with_a_reason(mutate, why):
    got, reason = p.decode(mutate(p.encode(pkt(p.UP))))
    assert got is None and why in reason


def test_your_discriminator_zero_only_in_down():
    assert p.decode(p.encode(pkt(p.DOWN, your=0)))[0] is not None
    assert "your discriminator 0" in p.decode(p.encode(pkt(p.UP, your=0)))[1]


def test_three_way_handshake_down_init_up():
    s = session()
    assert s.receive(pkt(p.DOWN, your=0), 0.1) == p.Change("init", 0)
    assert s.remote_disc == 77 and s.packet().your_disc == 77
    assert s.receive(pkt(p.UP), 0.2) == p.Change("up", 0)
    # Up: our DesiredMinTx drops from 1 s to 300 ms in a Poll Sequence until the peer's Final
    first = s.packet()
    assert first.min_tx == 300_000 and first.poll and first.state == p.UP
    s.receive(pkt(p.UP, final=True), 0.3)
    assert not s.packet().poll


def test_down_to_up_on_init_and_init_to_up_on_up():
    s = session()
    assert s.receive(pkt(p.INIT), 0.1) == p.Change("up", 0)
    s2 = session()
    s2.receive(pkt(p.DOWN, your=0), 0.1)
    assert s2.receive(pkt(p.UP), 0.2) == p.Change("up", 0)


def test_peer_down_and_detection_expiry():
    s = session()
    s.receive(pkt(p.INIT), 0.0)
    assert s.receive(pkt(p.DOWN, your=0), 0.1) == p.Change("down", p.DIAG_NEIGHBOR_DOWN)
    s.receive(pkt(p.INIT), 1.0)
    # detection time: the peer's multiplier x max(our RequiredMinRx, its DesiredMinTx) = 3 x 300 ms
    assert s.expire(1.0 + 0.89) is None
    assert s.expire(1.0 + 0.91) == p.Change("down", p.DIAG_EXPIRED)
    assert s.remote_disc == 0 and s.packet().min_tx == p.SLOW_TX and s.expire(5.0) is None


def test_admin_down_from_the_peer_is_told_apart_and_a_poll_is_answered_with_final():
    s = session()
    s.receive(pkt(p.INIT), 0.0)
    assert s.receive(pkt(p.UP, poll=True), 0.1) is None
    assert s.final_due and s.next_tx == 0.1
    reply = s.packet()
    assert reply.final and not reply.poll and not s.final_due
    assert s.receive(pkt(p.ADMIN_DOWN, your=0), 0.2) == p.Change("adm-down", p.DIAG_NEIGHBOR_DOWN)
    assert s.state == p.DOWN and s.receive(pkt(p.ADMIN_DOWN, your=0), 0.3) is None


def test_timers_slow_until_up_then_the_larger_of_ours_and_the_peers_with_jitter():
    s = session(min_tx_ms=100)
    assert s.interval() == 1.0  # not up: at most once a second
    s.receive(pkt(p.INIT, rx=200_000), 0.0)
    assert s.interval() == 0.2  # the peer's RequiredMinRx (200 ms) > our 100 ms
    gaps = []
    for _ in range(200):
        s.sent(10.0)
        gaps.append(s.next_tx - 10.0)
    assert 0.15 <= min(gaps) and max(gaps) <= 0.2
    s.receive(pkt(p.UP, rx=0), 0.5)
    assert s.interval() is None  # the peer asks for no packets


def test_two_sessions_come_up_and_one_detects_the_others_silence():
    """Two sessions on a simulated clock, packets delivered at once: up within ~2 s of slow
    packets; when b falls silent, a says down within its detection time."""
    a = p.Session(A("10.0.0.2"), A("10.0.0.1"), 300, 300, 3, False, my_disc=11, now=0.0, rng=random.Random(2))
    b = p.Session(A("10.0.0.1"), A("10.0.0.2"), 300, 300, 3, False, my_disc=22, now=0.0, rng=random.Random(3))
    events, now, silent_at = [], 0.0, None
    while now < 10.0:
        for me, other, name in ((a, b, "a"), (b, a, "b")):
            if (c := me.expire(now)) is not None:
                events.append((round(now, 2), name, c.state))
            if me.next_tx <= now and not (name == "b" and silent_at is not None):
                got, _ = p.decode(p.encode(me.packet()))
                me.sent(now)
                if (c := other.receive(got, now)) is not None:
                    events.append((round(now, 2), "b" if name == "a" else "a", c.state))
        if silent_at is None and a.state == p.UP and b.state == p.UP and now > 4.0:
            silent_at = now
        now = round(now + 0.01, 2)
    ups = [e for e in events if e[2] == "up"]
    assert {e[1] for e in ups} == {"a", "b"} and max(e[0] for e in ups) < 2.5
    down = [e for e in events if e[1] == "a" and e[2] == "down"]
    assert len(down) == 1 and silent_at < down[0][0] <= silent_at + 0.91
    assert a.packet().min_tx == p.SLOW_TX  # back to slow packets while down


def test_engine_lines():
    s = bfd.BfdSession(peer=A("fd00::2"), local=A("fd00::1"), min_rx=300, min_tx=200, multiplier=3, multihop=True)
    assert json.loads(bfd.command("add", s)) == {"op": "add", "peer": "fd00::2", "local": "fd00::1", "minRx": 300,
                                                 "minTx": 200, "multiplier": 3, "multihop": True}
    assert json.loads(bfd.command("remove", s)) == {"op": "remove", "peer": "fd00::2"}
    assert bfd.event_of(b'{"peer": "10.99.0.2", "state": "down", "diagnostics": 1}\n') == bfd.BfdEvent("10.99.0.2", "down", 1)
    assert bfd.event_of(b'{"ready": true}') is None and bfd.event_of(b"garbage") is None
