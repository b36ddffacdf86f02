"""bfdd's control-socket framing and payloads (bgp.bfd), pure."""
import ipaddress as ia
import json
import struct

import pytest

from bgp import bfd

A = ia.ip_address


def test_frame_is_header_then_payload_and_the_reader_splits_a_stream_anywhere():
    data = bfd.frame(7, bfd.ADD, b'{"a":1}') + bfd.frame(8, bfd.NOTIFY, b'{"op":"status"}')
    assert data[:8] == struct.pack("!IHBB", 7, 7, 2, 1)
    for cut in range(len(data) + 1):
        r = bfd.Reader()
        got = r.feed(data[:cut]) + r.feed(data[cut:])
        assert got == [(7, 2, b'{"a":1}'), (8, 4, b'{"op":"status"}')]


def test_a_message_of_another_version_is_refused():
    with pytest.raises(bfd.BfdError):
        bfd.Reader().feed(struct.pack("!IHBB", 0, 1, 4, 2))


@pytest.mark.parametrize("peer,local,fam", [("10.99.0.2", "10.99.0.1", "ipv4"), ("fd00::2", "fd00::1", "ipv6")])
def test_session_payloads_carry_the_timers_per_family(peer, local, fam):
    s = bfd.BfdSession(peer=A(peer), local=A(local), min_rx=300, min_tx=200, multiplier=3, multihop=False)
    assert json.loads(bfd.session_payload(s)) == {fam: [{
        "peer-address": peer, "local-address": local, "multihop": False, "detect-multiplier": 3,
        "receive-interval": 300, "transmit-interval": 200}]}
    assert json.loads(bfd.delete_payload(s)) == {fam: [{"peer-address": peer, "local-address": local, "multihop": False}]}
    assert bfd.subscribe_payload() == struct.pack("=Q", 1)


@pytest.mark.parametrize("payload,want", [
    (b'{"op":"status","peer-address":"10.99.0.2","state":"down","diagnostics":1}',
     bfd.BfdEvent("10.99.0.2", "down", 1)),
    (b'{"op":"status","peer-address":"fd00::2","state":"up"}\0', bfd.BfdEvent("fd00::2", "up", 0)),
    (b'{"status":"ok"}', None),
    (b"not json", None),
])
def test_events_are_state_notifications_only(payload, want):
    assert bfd.event_of(payload) == want
