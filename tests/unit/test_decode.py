import ipaddress as ia
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.decode import decode_line
from bgp.types import AckEvent, DecodeError, EorEvent, IgnoredEvent, SessionState, ShutdownEvent, StateEvent, UpdateEvent
from tests.conftest import FIXTURES

EXA = os.path.join(FIXTURES, "exabgp")


def fixture(name):
    with open(os.path.join(EXA, name)) as f:
        return f.read().strip()


def test_announce_ipv4_reference_line():
    ev = decode_line(fixture("exabgp-5.0.15-announce-ipv4.json"))
    assert isinstance(ev, UpdateEvent)
    assert ev.peer == "192.168.50.1"
    assert [(str(p.prefix), str(p.next_hop), p.as_path) for p in ev.announced] == [
        ("10.42.1.0/24", "192.168.50.11", (65000, 65001))]
    assert ev.withdrawn == ()


def test_withdraw_ipv4_reference_line():
    ev = decode_line(fixture("exabgp-5.0.15-withdraw-ipv4.json"))
    assert isinstance(ev, UpdateEvent)
    assert ev.withdrawn == (ia.ip_network("10.42.2.0/24"),)
    assert ev.announced == ()


def test_state_up_reference_line():
    assert decode_line(fixture("exabgp-5.0.15-state-up.json")) == StateEvent("192.168.50.1", SessionState.UP, "")


def test_captured_lab_session_decodes_completely():
    kinds = []
    with open(os.path.join(EXA, "lab-session-5.0.15.jsonl")) as f:
        for line in f:
            kinds.append(type(decode_line(line)).__name__)
    assert {"StateEvent", "UpdateEvent", "EorEvent", "AckEvent"} <= set(kinds)


def test_ipv6_global_next_hop_wins_over_link_local():
    with open(os.path.join(EXA, "lab-session-5.0.15.jsonl")) as f:
        line = next(x for x in f if "ipv6 unicast" in x and "fe80::" in x)
    ev = decode_line(line)
    assert [(str(p.prefix), str(p.next_hop)) for p in ev.announced] == [("fd00:42:0:1::/64", "fd00:50::11")]


def _update(message, peer="fd00:50::1"):
    return json.dumps({"exabgp": "5.0.0", "type": "update", "neighbor": {
        "address": {"local": "fd00:50::11", "peer": peer}, "asn": {"local": 65001, "peer": 65000},
        "direction": "receive", "message": message}})


def test_ipv6_withdraw_and_only_link_local():
    ev = decode_line(_update({"update": {"withdraw": {"ipv6 unicast": [{"nlri": "fd00:42:2::/64"}]}}}))
    assert ev.withdrawn == (ia.ip_network("fd00:42:2::/64"),)
    ev = decode_line(_update({"update": {"announce": {"ipv6 unicast": {"fe80::1": [{"nlri": "fd00:42:2::/64"}]}}}}))
    assert str(ev.announced[0].next_hop) == "fe80::1"


def test_eor_add_path_and_42_as_path():
    assert decode_line(_update({"eor": {"afi": "ipv6", "safi": "unicast"}})) == EorEvent("fd00:50::1", "ipv6")
    ev = decode_line(_update({"update": {"attribute": {"as-path": [65000, 65002]}, "announce": {"ipv4 unicast": {
        "192.168.50.12": [{"nlri": "10.42.99.0/24", "path-information": "0.0.0.4"},
                          {"nlri": "10.42.2.0/24", "path-information": "0.0.0.6"}]}}}}, peer="192.168.50.1"))
    assert sorted(str(p.prefix) for p in ev.announced) == ["10.42.2.0/24", "10.42.99.0/24"]
    assert ev.announced[0].as_path == (65000, 65002)


def test_other_families_are_skipped_not_errors():
    ev = decode_line(_update({"update": {"announce": {"l2vpn evpn": {"1.1.1.1": [{"nlri": "x"}]}}}}))
    assert ev.announced == ()


@pytest.mark.parametrize("line,expected", [
    ("done", AckEvent(True)),
    ("error\n", AckEvent(False)),
    ('{"exabgp": "5.0.0", "type": "notification", "notification": "shutdown"}', ShutdownEvent()),
    ('{"exabgp": "5.0.0", "type": "keepalive", "neighbor": {}}', IgnoredEvent("keepalive")),
])
def test_acks_and_other_messages(line, expected):
    assert decode_line(line) == expected


def test_state_down_reason():
    line = fixture("exabgp-5.0.15-state-up.json").replace('"state": "up"', '"state": "down", "reason": "closing connection"')
    assert decode_line(line) == StateEvent("192.168.50.1", SessionState.DOWN, "closing connection")


@pytest.mark.parametrize("line", [
    "", "{", fixture("exabgp-5.0.15-announce-ipv4.json")[:120], "[1,2]", '{"no": "type"}',
    _update({"update": {"announce": {"ipv4 unicast": {"192.168.50.12": [{"nlri": "fd00::/64"}]}}}}),
    _update({"update": {"announce": {"ipv4 unicast": {"not-an-ip": [{"nlri": "10.0.0.0/24"}]}}}}),
    _update({"update": {"withdraw": {"ipv4 unicast": "10.0.0.0/24"}}}),
    '{"type": "state", "neighbor": {"address": {"peer": "x"}, "state": "up"}}',
])
def test_malformed_lines_raise_decode_error(line):
    with pytest.raises(DecodeError):
        decode_line(line)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.sampled_from(["10.42.1.0/24", "192.168.50.1", "fd00::/64", "ipv4 unicast", "update", "state", "up"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "neighbor", "address", "peer", "message", "update", "announce", "withdraw",
                         "ipv4 unicast", "ipv6 unicast", "nlri", "eor", "afi", "attribute", "as-path", "state",
                         "192.168.50.1", "value", "0"]) | st.text(max_size=8), inner, max_size=5),
    max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_fuzz_json_shapes_only_decode_error_escapes(value):
    try:
        decode_line(json.dumps(value))
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_text_only_decode_error_escapes(text):
    try:
        decode_line(text)
    except DecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=400))
def test_fuzz_truncated_reference_lines(cut):
    line = fixture("exabgp-5.0.15-announce-ipv4.json")
    try:
        decode_line(line[:cut])
    except DecodeError:
        pass


def test_open_carries_the_peers_graceful_restart_time():
    from bgp.types import OpenEvent
    with open(os.path.join(EXA, "open-5.0.15.jsonl")) as f:
        events = [decode_line(x) for x in f]
    assert OpenEvent("fd00:50::1", 120) in events and OpenEvent("192.168.50.1", 120) in events
    sent = _update({}).replace('"update"', '"open"', 1).replace('"receive"', '"send"')
    assert decode_line(sent) == IgnoredEvent("open-sent")


@pytest.mark.parametrize("text", ["192.168.50.12", "01.2.3.4", "1.2.3", "1.2.3.4 ", "", "fe80::1", "fe80::1%eth0",
                                  "::ffff:1.2.3.4", "::", "1:2:3:4:5:6:7:8:9", "\u0663.2.3.4", "1.2.3.4\x00"])
def test_fast_address_parse_agrees_with_ipaddress(text):
    from bgp.decode import _address
    try:
        expected = ia.ip_address(text)
    except ValueError:
        with pytest.raises(ValueError):
            _address(text)
    else:
        assert _address(text) == expected and type(_address(text)) is type(expected)


@pytest.mark.parametrize("text,version", [
    ("10.42.1.0/24", 4), ("10.42.1.7/24", 4), ("10.0.0.0/33", 4), ("10.0.0.0/024", 4), ("10.0.0.0/", 4),
    ("01.0.0.0/8", 4), ("10.0.0.0/\u0663", 4), ("10.0.0.0", 4), ("fd00:42::/64", 6), ("fd00:42::1/64", 6),
    ("fd00:42::/129", 6), ("fd00:42::/64", 4), ("10.42.1.0/24", 6)])
def test_fast_network_parse_agrees_with_ipaddress(text, version):
    from bgp.decode import _network
    try:
        expected = ia.ip_network(text, strict=False)
    except ValueError:
        expected = None
    if expected is None or expected.version != version:
        with pytest.raises((ValueError, DecodeError)):
            _network(text, version)
    else:
        assert _network(text, version) == expected
