"""bench.services' pure parts: the layout, the objects, the announcement model, the churn, the
matching of writes to UPDATEs, the verdicts and the receiver's BGP parsing."""
from __future__ import annotations

import io
import socket
import struct
from collections import Counter

import pytest

from bench import _services_world as w


def test_endpoint_counts_default_layout():
    counts = w.endpoint_counts(10000, 50000)
    assert sum(counts) == 50000 and len(counts) == 10000
    assert Counter(counts) == {100: 404, 5: 1, 1: 9595}
    assert max(counts) <= w.SLICE_MAX


@pytest.mark.parametrize("services,endpoints", [(10, 5), (10, 10), (10, 1000), (7, 300), (1, 1)])
def test_endpoint_counts_exact_total(services, endpoints):
    counts = w.endpoint_counts(services, endpoints)
    assert sum(counts) == endpoints and len(counts) == services and max(counts) <= w.SLICE_MAX


def test_endpoint_counts_refuses_too_many():
    with pytest.raises(ValueError):
        w.endpoint_counts(2, 201)


def test_layout_and_expected_announcements():
    svcs = w.layout(10000, 50000, 100)
    assert len({s.ip for s in svcs}) == 10000 and all(s.ip in w.POOL for s in svcs)
    assert str(svcs[0].ip) == "100.64.0.1"  # never the pool's network address
    m = w.Model(svcs)
    # every Cluster Service (5,000), the 202 Local ones of 100 endpoints, the 95 small Local ones on node0
    assert len(m.expected()) == 5000 + 202 + 95


def test_objects():
    s = w.layout(4, 202, 3)[0]
    svc = w.service_object(s)
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["externalTrafficPolicy"] == "Local"
    assert "loadBalancerClass" not in svc["spec"]
    assert w.status_patch(s) == {"status": {"loadBalancer": {"ingress": [{"ip": "100.64.0.1", "ipMode": "VIP"}]}}}
    states = [w.READY] * len(s.nodes)
    states[1] = w.TERMINATING
    sl = w.slice_object(s, states)
    assert sl["metadata"]["labels"]["kubernetes.io/service-name"] == s.name
    assert len(sl["endpoints"]) == 100 and sl["addressType"] == "IPv4"
    assert sl["endpoints"][1]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    assert {e["nodeName"] for e in sl["endpoints"]} == {"node0", "node1", "node2"}


def test_model_rules():
    svcs = w.layout(4, 8, 2)  # counts [5,1,1,1]: svc0 Local on nodes 0,1,0,1,0; svc1 Cluster; svc2 Local on node0; svc3 Cluster
    m = w.Model(svcs)
    assert m.announced(0) and m.announced(2)
    m.states[2][0] = w.TERMINATING  # the last local ready endpoint terminating: withdrawn at once
    assert not m.announced(2)
    m.states[1][0] = w.NOT_READY  # Cluster with no ready endpoint anywhere
    assert not m.announced(1)
    svcs = w.layout(5, 5, 3)  # svc4 is Local with its only endpoint on node1: not node0's to announce
    assert svcs[4].local and svcs[4].nodes == (1,) and not w.Model(svcs).announced(4)


def test_churn_flips_and_stays_balanced():
    m = w.Model(w.layout(2000, 10000, 100))
    start = m.expected()
    c = w.Churn(m)
    flips = Counter()
    for k in range(3000):
        ch = c.next(k * 0.02)
        before = ch.flips
        flips[before] += 1
    assert 0.05 < (flips["A"] + flips["W"]) / 3000 < 0.15
    assert abs(len(m.expected()) - len(start)) < 0.05 * len(start)


def test_churn_decider_flip_back_restores():
    m = w.Model(w.layout(200, 1000, 10))
    c = w.Churn(m)
    i = c.deciders[0][0]
    assert c.flip_decider(i).flips == "W"
    assert c.flip_decider(i).flips == "A"
    assert all(x == w.READY for x in m.states[i])


def test_match_pairs_in_order_and_reports_missing():
    writes = [("100.64.0.1/32", "W", 10.0), ("100.64.0.1/32", "A", 11.0), ("100.64.0.2/32", "W", 12.0)]
    events = [(11.02, "A", "100.64.0.1/32"), (10.005, "W", "100.64.0.1/32"), (9.0, "A", "100.64.0.2/32")]
    assert w.match(writes, events) == [5.0, 20.0, None]


def test_stats():
    assert w.stats([]) == {"n": 0, "median": None, "p95": None, "max": None}
    st = w.stats([float(x) for x in range(1, 101)])
    assert st == {"n": 100, "median": 50.5, "p95": 95.0, "max": 100.0}


def test_verdicts():
    r = {"churn": {"speaker_cpu_pct": 4.0}, "change_to_wire_ms": {"p95": 50.0, "max": 120.0},
         "memory": {"speaker_added_mib": 31.0}, "start": {"expected": 5, "announced": 5, "complete": True}}
    v = w.verdicts(r)
    assert v["speaker_cpu_pct_under_churn"]["pass"] and v["change_to_wire_ms_p95"]["pass"]
    assert not v["change_to_wire_ms_max"]["pass"] and not v["memory_added_by_services_mib"]["pass"]
    assert v["all_announced"]["pass"]
    assert not w.verdicts({})["speaker_cpu_pct_under_churn"]["pass"]


def _prefix(net: str) -> bytes:
    addr, plen = net.split("/")
    plen = int(plen)
    raw = socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)
    return bytes([plen]) + raw[: (plen + 7) // 8]


def _update(withdrawn=(), announced=(), mp_reach=(), mp_unreach=()) -> bytes:
    wd = b"".join(_prefix(p) for p in withdrawn)
    attrs = struct.pack("!BBB", 0x40, 1, 1) + b"\x00"  # ORIGIN IGP
    if mp_reach:
        nh = socket.inet_pton(socket.AF_INET6, "fd00::1")
        val = struct.pack("!HBB", 2, 1, 16) + nh + b"\x00" + b"".join(_prefix(p) for p in mp_reach)
        attrs += struct.pack("!BBH", 0x90, 14, len(val)) + val  # extended length
    if mp_unreach:
        val = struct.pack("!HB", 2, 1) + b"".join(_prefix(p) for p in mp_unreach)
        attrs += struct.pack("!BBB", 0x80, 15, len(val)) + val
    nlri = b"".join(_prefix(p) for p in announced)
    return struct.pack("!H", len(wd)) + wd + struct.pack("!H", len(attrs)) + attrs + nlri


def test_parse_update():
    body = _update(withdrawn=["100.64.0.7/32"], announced=["100.64.0.1/32", "10.128.0.0/24"],
                   mp_reach=["fd00:42::/64"], mp_unreach=["fd00:43::/108"])
    announced, withdrawn = w.parse_update(body)
    assert announced == ["fd00:42::/64", "100.64.0.1/32", "10.128.0.0/24"]
    assert withdrawn == ["100.64.0.7/32", "fd00:43::/108"]
    assert w.parse_update(w.eor(1)[19:]) == ([], [])
    assert w.parse_update(w.eor(2)[19:]) == ([], [])


def test_split_messages_keeps_a_partial_one():
    a, b = w.bgp_message(w.BGP_KEEPALIVE), w.bgp_message(w.BGP_UPDATE, _update(announced=["100.64.0.1/32"]))
    buf = bytearray(a + b[:10])
    assert [k for k, _ in w.split_messages(buf)] == [w.BGP_KEEPALIVE]
    buf += b[10:]
    assert [k for k, _ in w.split_messages(buf)] == [w.BGP_UPDATE] and not buf
    with pytest.raises(ValueError):
        w.split_messages(bytearray(b"\x00" * 19))


def test_open_message():
    msg = w.open_message(65000, "172.20.0.1")
    (kind, body), = w.split_messages(bytearray(msg))
    assert kind == w.BGP_OPEN
    version, asn, hold, rid, plen = struct.unpack_from("!BHH4sB", body)
    assert (version, asn, hold, socket.inet_ntoa(rid)) == (4, 65000, 9, "172.20.0.1") and plen == len(body) - 10


def test_receiver_over_a_socket_pair():
    """The receiver loop against a fake speaker on loopback: OPEN, KEEPALIVE, UPDATE, close."""
    import threading
    import time as _t
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    port = ls.getsockname()[1]
    ls.close()
    out = io.StringIO()
    orig_bind = socket.socket.bind

    def bind(self, addr):  # the receiver binds port 179: move it to a free one for the test
        return orig_bind(self, (addr[0], port) if addr[1] == 179 else addr)

    socket.socket.bind = bind
    try:
        t = threading.Thread(target=w.receive, args=("127.0.0.1", 65000, out, 3.0), daemon=True)
        t.start()
        for _ in range(100):
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=2)
                break
            except OSError:
                _t.sleep(0.02)
        c.sendall(w.open_message(65001, "172.20.0.2") + w.bgp_message(w.BGP_KEEPALIVE))
        c.sendall(w.bgp_message(w.BGP_UPDATE, _update(announced=["100.64.0.1/32"])))
        c.sendall(w.bgp_message(w.BGP_UPDATE, _update(withdrawn=["100.64.0.1/32"])))
        _t.sleep(0.3)
        c.close()
        t.join(5)
    finally:
        socket.socket.bind = orig_bind
    kinds = [line.split()[1] for line in out.getvalue().splitlines()]
    assert kinds == ["LISTEN", "UP", "A", "W", "DOWN"]


def test_open_families():
    (_, body), = w.split_messages(bytearray(w.open_message(65000, "172.20.0.1")))
    assert w.open_families(body) == {1, 2}
    bare = struct.pack("!BHH4sB", 4, 65001, 9, socket.inet_aton("172.20.0.2"), 0)
    assert w.open_families(bare) == {1}


def test_profile_top():
    raw = ["main (a.py:1);loop (a.py:10);parse (b.py:5) 3\n",
           "main (a.py:1);loop (a.py:12);parse (b.py:7) 2\n",
           "main (a.py:1);idle (a.py:20) 5\n", "garbage\n"]
    p = w.profile_top(raw)
    assert p["samples"] == 10
    assert dict(p["inclusive"])["main (a.py)"] == 10 and dict(p["inclusive"])["loop (a.py)"] == 5
    assert p["self"][0] == ("idle (a.py)", 5) and dict(p["self"])["parse (b.py)"] == 5
