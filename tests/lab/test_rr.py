"""Route-reflector ToRs: iBGP in AS 64512 to two FRR reflectors (lab/rr.clab.yml). Next hops come
through unchanged, each PodCIDR is learned from both reflectors, and losing one reflector loses
no packet."""
import signal

import pytest

from lab import demo, runner
from tests.lab.conftest import poll, topology_lab
from tests.lab.pinger import traffic

OWNERS = {"10.42.2.0/24": "192.168.50.12", "10.42.3.0/24": "192.168.50.13",
          "fd00:42:0:2::/64": "fd00:50::12", "fd00:42:0:3::/64": "fd00:50::13"}
REFLECTORS = {"192.168.50.1", "192.168.50.2", "fd00:50::1", "fd00:50::2"}


@pytest.fixture(scope="module")
def rr():
    yield from topology_lab("rr.clab.yml", "pbr")


def test_ping_matrix_complete_through_reflectors(rr):
    ok, total, lines = demo.matrix(rr)
    assert total == 12 and ok == total, "\n".join(lines)


def test_each_podcidr_comes_from_both_reflectors_with_the_owner_as_next_hop(rr):
    doc = runner.speaker_status(rr, "node1")
    assert {p["address"]: (p["state"], p["asn"], p["localAsn"]) for p in doc["peers"]} == {
        a: ("up", 64512, 64512) for a in REFLECTORS}
    learned = {}
    for path in doc["learned"]:
        learned.setdefault(path["prefix"], set()).add((path["peer"], path["nextHop"]))
    for prefix, owner in OWNERS.items():
        fam = "." if "." in owner else ":"
        assert learned[prefix] == {(peer, owner) for peer in REFLECTORS if fam in peer}, prefix
    assert {r["prefix"]: r["via"] for r in doc["installed"]} == {p: [o] for p, o in OWNERS.items()}


def test_one_reflector_lost_under_traffic_loses_no_packet(rr):
    res = {}
    try:
        with traffic(rr, res, interval=0.02):  # 50 packets/s each way per family
            runner.stop_frr(rr, "rr1", daemons=("bgpd",), sig=signal.SIGTERM)
            poll(lambda: {p["address"]: p["state"] for p in runner.speaker_status(rr, "node1")["peers"]}
                 .get("192.168.50.1") != "up", timeout=15)
            assert OWNERS.keys() <= demo.installed(rr, "node1")
        assert res["ipv4"].sent > 50 and res["ipv6"].sent > 50
        assert res["ipv4"].lost == 0 and res["ipv6"].lost == 0, res
        doc = runner.speaker_status(rr, "node1")
        assert all(p["nextHop"] != "" for p in doc["learned"])
        assert {p["peer"] for p in doc["learned"] if not p["stale"]} <= {"192.168.50.2", "fd00:50::2"}
    finally:
        if "frr:rr1:bgpd" not in rr.pids:
            runner.start_frr(rr, "rr1", daemons=("bgpd",))
    poll(lambda: all(p["state"] == "up" for p in runner.speaker_status(rr, "node1")["peers"]), timeout=30)
