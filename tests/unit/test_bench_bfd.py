"""bench.scale --bfd and bench.leak --bfd, their pure parts: what BIRD prints and traces, what the
speaker's status says, the deltas reported, the loop's answer times, the re-list seen in the
speaker's log, the ToR and speaker configuration with BFD and the forced 410."""
from __future__ import annotations

import json
import re

import pytest

from bench import _bfd as b
from bench import _scale_world as w

SESSIONS = """BIRD 2.0.12 ready.
tor_bfd:
IP address                Interface  State      Since         Interval  Timeout
fd00:50::2                br0        Up         18:43:21.261    0.300    0.900
172.20.0.2                br0        Init       18:43:21.261    1.000    0.000
"""

SESSIONS_LONG_TIME = """tor_bfd:
IP address                Interface  State      Since         Interval  Timeout
172.20.0.2                br0        Down       2026-12-03 18:43:21    1.000    0.000
"""

PROTOCOLS = """BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
tor_bfd    BFD        ---        up     18:43:19.609  
pod_4      BGP        ---        up     18:43:20.593  Established   
pod_6      BGP        ---        start  18:43:20.592  Active        Socket: Connection refused
bird_4     BGP        ---        start  18:43:19.609  Passive       
"""

# as BIRD 2.0.12's protocol bfd traces with `debug { states, events }` and `timeformat log iso long ms`
TRACE = """2026-12-03 18:40:07.627 <TRACE> tor_bfd: State changed to up
2026-12-03 18:40:07.631 <TRACE> tor_bfd: Session to 172.20.0.2 added
2026-12-03 18:40:09.318 <TRACE> tor_bfd: Session to 172.20.0.2 changed state from Down to Up
2026-12-03 18:40:09.318 <TRACE> tor_bfd: Session to fd00:50::2 changed state from Down to Up
2026-12-03 18:41:18.909 <TRACE> tor_bfd: Session to 172.20.0.2 expired
2026-12-03 18:41:18.909 <TRACE> tor_bfd: Session to 172.20.0.2 changed state from Up to Down
2026-12-03 18:41:19.400 <TRACE> tor_bfd: Session to 172.20.0.2 changed state from Down to Init
2026-12-03 18:41:19.500 <TRACE> tor_bfd: Session to 172.20.0.2 changed state from Init to Up
2026-12-03 18:41:20.011 <TRACE> tor_bfd: Session to fd00:50::2 changed state from Up to AdminDown
2026-12-03 18:41:21.011 <TRACE> tor_bfd: Session to 172.20.0.2 changed state from Up to Down
"""


def status(peers: dict) -> dict:
    """A speaker /status document with the fields bench._bfd reads."""
    out = []
    for addr, (state, since, bstate, downs) in peers.items():
        bfd = None if bstate is None else {"state": bstate, "since": 1.0, "minRx": 300, "minTx": 300, "multiplier": 3,
                                           "multihop": False, "diagnostics": "no diagnostic", "downs": downs,
                                           "heldDown": False, "droppedPaths": 0, "droppedAt": None, "error": ""}
        out.append({"address": addr, "asn": 65000, "state": state, "since": since, "paths": 99, "bfd": bfd})
    return {"node": "node0", "peers": out}


def test_parse_bfd_sessions():
    assert b.parse_bfd_sessions(SESSIONS) == {"fd00:50::2": b.BirdBfd("Up", "18:43:21.261"),
                                              "172.20.0.2": b.BirdBfd("Init", "18:43:21.261")}
    assert b.parse_bfd_sessions(SESSIONS_LONG_TIME) == {"172.20.0.2": b.BirdBfd("Down", "2026-12-03 18:43:21")}
    assert b.parse_bfd_sessions("BIRD 2.0.12 ready.\ntor_bfd:\nIP address  Interface  State  Since  Interval  Timeout\n") == {}


def test_tor_transitions_and_downs():
    assert b.tor_transitions(TRACE)[:2] == [("172.20.0.2", "Down", "Up"), ("fd00:50::2", "Down", "Up")]
    # Up -> Down twice for the IPv4 session, Up -> AdminDown once for the IPv6 one; Down -> Init is none
    assert b.count_tor_downs(TRACE) == {"172.20.0.2": 2, "fd00:50::2": 1}
    assert b.count_tor_downs("") == {}


def test_count_bgp_downs():
    text = TRACE + """2026-12-03 18:40:08.000 <TRACE> pod_4: State changed to start
2026-12-03 18:40:08.500 <TRACE> pod_4: State changed to up
2026-12-03 18:40:08.500 <TRACE> pod_6: State changed to up
2026-12-03 18:41:18.910 <TRACE> pod_4: State changed to stop
2026-12-03 18:41:18.911 <TRACE> pod_4: State changed to down
2026-12-03 18:41:19.000 <TRACE> pod_4: State changed to start
2026-12-03 18:41:20.000 <TRACE> bird_4: State changed to down
"""
    assert b.count_bgp_downs(text, ("pod_4", "pod_6")) == {"pod_4": 1, "pod_6": 0}
    assert b.count_bgp_downs("", ("pod_4",)) == {"pod_4": 0}


def test_parse_protocols():
    got = b.parse_protocols(PROTOCOLS, ("pod_4", "pod_6"))
    assert got == {"pod_4": ("up", "18:43:20.593 Established"),
                   "pod_6": ("start", "18:43:20.592 Active Socket: Connection refused")}


def test_speaker_peers():
    got = b.speaker_peers(status({"172.20.0.1": ("up", 10.0, "up", 2), "fd00:50::1": ("up", 11.0, None, 0)}))
    assert got["172.20.0.1"] == b.SpeakerPeer("up", 10.0, "up", 2, "")
    assert got["fd00:50::1"] == b.SpeakerPeer("up", 11.0, "", 0, "")  # a peer without BFD


SP, TOR = ("172.20.0.1", "fd00:50::1"), ("172.20.0.2", "fd00:50::2")


def snap(speaker: dict, tor_state=("Up", "Up"), tor_since="18:43:21.261", protocols=None, tor_downs=None) -> b.Snapshot:
    return b.Snapshot(
        speaker=b.speaker_peers(status(speaker)),
        tor_bfd={a: b.BirdBfd(s, tor_since) for a, s in zip(TOR, tor_state)},
        tor_protocols=protocols or {"pod_4": ("up", "18:43:20.593 Established"), "pod_6": ("up", "18:43:20.592 Established")},
        tor_log_downs=tor_downs or {a: 0 for a in TOR})


def test_all_up_needs_both_ends():
    up = {a: ("up", 1.0, "up", 0) for a in SP}
    assert b.all_up(snap(up), SP, TOR)
    assert not b.all_up(snap(up, tor_state=("Up", "Init")), SP, TOR)
    half = dict(up, **{"fd00:50::1": ("up", 1.0, "down", 0)})
    assert not b.all_up(snap(half), SP, TOR)
    assert not b.all_up(snap({SP[0]: ("up", 1.0, "up", 0)}), SP, TOR)  # a peer missing from the status
    why = b.why_not_up(snap(half, tor_state=("Up", "Init")), SP, TOR)
    assert why == "speaker: 172.20.0.1 up, fd00:50::1 down; ToR: 172.20.0.2 Up, fd00:50::2 Init"


def test_delta_quiet_run():
    before = snap({a: ("up", 1.0, "up", 0) for a in SP})
    d = b.delta(before, before)
    assert (d["bfd_downs_speaker"], d["bfd_downs_tor"], d["session_resets_speaker"], d["session_resets_tor"]) == (0, 0, 0, 0)
    assert d["sessions_changed_speaker"] == {} and d["sessions_changed_tor"] == {}
    assert d["tor_bfd_sessions_changed"] == 0
    assert d["bfd_state_after"] == {"172.20.0.1": "up", "fd00:50::1": "up"}
    assert d["tor_bfd_state_after"] == {"172.20.0.2": "Up", "fd00:50::2": "Up"}


def test_delta_counts_a_flap_on_both_ends_and_the_resets():
    before = snap({a: ("up", 1.0, "up", 1) for a in SP}, tor_downs={TOR[0]: 1, TOR[1]: 0})
    after = snap({SP[0]: ("up", 5.0, "up", 3), SP[1]: ("up", 1.0, "up", 1)}, tor_since="18:50:00.000",
                 protocols={"pod_4": ("up", "18:50:01.000 Established"), "pod_6": ("up", "18:43:20.592 Established")},
                 tor_downs={TOR[0]: 3, TOR[1]: 0})
    d = b.delta(before, after)
    assert d["bfd_downs_speaker"] == 2 and d["bfd_downs_speaker_by_peer"] == {"172.20.0.1": 2, "fd00:50::1": 0}
    assert d["bfd_downs_tor"] == 2 and d["bfd_downs_tor_by_peer"] == {"172.20.0.2": 2, "fd00:50::2": 0}
    assert d["session_resets_speaker"] == 1 and d["session_resets_tor"] == 1
    assert d["sessions_changed_speaker"] == {"172.20.0.1": ["up since 1.0", "up since 5.0"]}
    assert d["sessions_changed_tor"] == {"pod_4": ["up 18:43:20.593 Established", "up 18:50:01.000 Established"]}
    assert d["tor_bfd_sessions_changed"] == 2  # both show another Since
    assert d["tor_bgp_downs_traced"] == {}  # snapshots without the BGP trace


def test_delta_a_session_down_at_the_end_is_a_reset():
    before = snap({a: ("up", 1.0, "up", 0) for a in SP})
    after = snap({SP[0]: ("down", 1.0, "down", 1), SP[1]: ("up", 1.0, "up", 0)},
                 protocols={"pod_4": ("start", "18:43:20.593 Active"), "pod_6": ("up", "18:43:20.592 Established")})
    d = b.delta(before, after)
    assert d["session_resets_speaker"] == 1 and d["session_resets_tor"] == 1 and d["bfd_downs_speaker"] == 1


def test_lag_summary():
    samples = [(float(t), ms) for t, ms in enumerate([1.0, 2.0, 150.0, 400.0, 1000.0, 3.0])]
    s = b.lag_summary(samples)
    assert s == {"probes": 6, "p50_ms": 150.0, "p99_ms": 1000.0, "max_ms": 1000.0,
                 "over_100ms": 3, "over_300ms": 2, "over_900ms": 1}
    assert b.lag_summary(samples, start=4.0)["probes"] == 2
    assert b.lag_summary(samples, end=1.0)["max_ms"] == 2.0
    assert b.lag_summary([], 0, 1) == {"probes": 0}


LOG = """2026-12-03 18:42:20,377 WARNING speaker.listwatch nodes.watch.error cannot reach the Kubernetes API at https://127.0.0.1:6443: connection reset by the server; retrying in 0.5s
2026-12-03 18:42:23,020 INFO speaker.listwatch nodes.watch.expired resourceVersion=102 reason=too old resource version: 102 (103) relisting
2026-12-03 18:42:23,047 INFO speaker.listwatch nodes.list via=watch-list count=5000 changed=0 deleted=0 resourceVersion=5003 seconds=1.027
"""


def test_list_line_and_cause():
    m = re.search(b.LIST_LINE, LOG.encode())
    assert b.list_fields(m) == {"via": "watch-list", "count": 5000, "changed": 0, "deleted": 0, "seconds": 1.027}
    assert b.relist_cause(LOG) == "410"
    assert b.relist_cause(LOG.splitlines()[0]) == "error"
    http410 = "x WARNING speaker.listwatch nodes.watch.error the API answered 410 Gone; retrying in 0.4s"
    assert b.relist_cause(http410) == "410"
    assert b.relist_cause("x INFO speaker.listwatch services.watch.expired relisting") == ""  # another watch


def test_tor_config_with_bfd_only_on_the_podbgp_sessions():
    nodes = w.nodes(20)
    plain = w.tor_config(nodes, nodes[3:4], "/x/tor.log")
    assert "bfd" not in plain
    text = w.tor_config(nodes, nodes[3:4], "/x/tor.log", bfd_log="/x/tor-bfd.log")
    assert 'log "/x/tor-bfd.log" { trace };' in text
    assert 'interface "*" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; };' in text
    blocks = {m.group(1): m.group(0) for m in re.finditer(r"protocol bgp (\w+) \{.*?\n\}", text, re.S)}
    assert sorted(blocks) == ["bird_4", "bird_6", "pod_4", "pod_6"]
    assert all(("bfd on;" in blk) == name.startswith("pod") for name, blk in blocks.items())
    assert all(("debug { states };" in blk) == name.startswith("pod") for name, blk in blocks.items())
    assert text.count("protocol bfd ") == 1


def test_speaker_config_with_bfd():
    text = w.speaker_config("/run/x", "127.0.0.1:9", peer_extra=w.speaker_bfd_extra())
    peers = [ln for ln in text.splitlines() if "address:" in ln]
    assert len(peers) == 2 and all("bfd: {minRx: 300, minTx: 300, multiplier: 3}}" in ln for ln in peers)


def test_bump_resource_version(tmp_path):
    path = tmp_path / "nodes.json"
    state = {"resourceVersion": "5001", "nodes": {"node0": {"metadata": {"name": "node0", "resourceVersion": "5001"}}}}
    path.write_text(json.dumps(state, separators=(",", ":")) + "\n")
    assert w.bump_resource_version(str(path)) == 5002
    assert json.loads(path.read_text()) == dict(state, resourceVersion="5002")  # the objects as they were
    assert w.bump_resource_version(str(path), by=998) == 6000
    path.write_text('{"nodes": {}}')
    with pytest.raises(ValueError):
        w.bump_resource_version(str(path))


def test_annotate_nodes(tmp_path):
    path = tmp_path / "nodes.json"
    nodes = {f"node{i}": w.node_object(n, 0.0, i + 1) for i, n in enumerate(w.nodes(20)[:3])}
    path.write_text(json.dumps({"resourceVersion": "4", "nodes": nodes}))
    assert w.annotate_nodes(str(path), "podbgp.io/bench-relist", "1") == 5
    state = json.loads(path.read_text())
    assert state["resourceVersion"] == "5" and sorted(state["nodes"]) == ["node0", "node1", "node2"]
    for name, obj in state["nodes"].items():
        assert obj["metadata"]["annotations"]["podbgp.io/bench-relist"] == "1"
        assert obj["metadata"]["resourceVersion"] == "5"
        assert obj["spec"] == nodes[name]["spec"] and obj["status"] == nodes[name]["status"]
