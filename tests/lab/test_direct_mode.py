"""Direct mode, no BGP (lab/direct.clab.yml): three nodes on one bridge, each routing the other
Nodes' PodCIDRs straight to their InternalIPs from the Node objects. No ExaBGP runs; a Node
deleted takes its routes with it within a second; a Node off-link is reported, never routed.

Everything is checked as a user would: `podbgp status --json` on the node (runner.speaker_status),
the kernel's routes of protocol 80, the processes and sockets in the node's namespace, pings."""
import json
import time

import pytest

from lab import demo, runner
from tests.lab.conftest import poll, topology_lab

NODES = ("node1", "node2", "node3")
ADDR = {f"node{i}": (f"192.168.50.1{i}", f"fd00:50::1{i}") for i in range(1, 4)}
CIDRS = {f"node{i}": (f"10.42.{i}.0/24", f"fd00:42:0:{i}::/64") for i in range(1, 4)}
GHOST = {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": "ghost", "labels": {"kubernetes.io/hostname": "ghost"}},
         "spec": {"podCIDR": "10.42.9.0/24", "podCIDRs": ["10.42.9.0/24"]},
         "status": {"addresses": [{"type": "InternalIP", "address": "10.99.0.5"}]}}


@pytest.fixture(scope="module")
def direct():
    yield from topology_lab("direct.clab.yml", "pbd")


def routes(lab, node) -> dict[str, str]:
    """Our routes (protocol 80) on node: prefix -> gateway."""
    out = {}
    for fam in ("-4", "-6"):
        res = runner.run(["ip", "-j", fam, "route", "show", "proto", "80"], netns=lab.nodes[node]["netns"])
        for r in json.loads(res.stdout or "[]"):
            out[r["dst"]] = r.get("gateway") or ",".join(h["gateway"] for h in r.get("nexthops", []))
    return out


def owners_route(node) -> dict[str, str]:
    """What node should hold: every other node's PodCIDRs via that node's InternalIP."""
    return {c: a for other in NODES if other != node for c, a in zip(CIDRS[other], ADDR[other])}


def ghost_reported(lab, node) -> bool:
    """`podbgp status` on node names the ghost Node as off-link, with its InternalIP, as not routed."""
    why = runner.speaker_status(lab, node)["nodeErrors"].get("offlink:ghost") or ""
    return "10.99.0.5" in why and "not routed" in why


def test_ping_matrix_complete_without_bgp(direct):
    ok, total, lines = demo.matrix(direct)
    assert total == 20 and ok == total, "\n".join(lines)


def test_routes_are_ours_and_point_at_the_owners(direct):
    for node in NODES:
        assert routes(direct, node) == owners_route(node), node
        doc = runner.speaker_status(direct, node)
        assert doc["mode"] == "direct" and doc["converged"] and doc["nodeErrors"] == {} and doc["peers"] == []
        assert {r["prefix"]: r["via"] for r in doc["installed"]} == {p: [a] for p, a in owners_route(node).items()}
        assert {x["prefix"]: x["nextHop"] for x in doc["learned"]} == owners_route(node), doc["learned"]


def test_no_bgp_on_any_node(direct):
    """No peer in status, no ExaBGP process, no socket on TCP port 179 in any node's namespace."""
    for node in NODES:
        ns = direct.nodes[node]["netns"]
        assert runner.speaker_status(direct, node)["peers"] == [], node
        pids = runner.run(["ip", "netns", "pids", ns]).stdout.split()
        assert pids and not [p for p in pids if runner._is_exabgp(int(p))], node  # pids: the speaker at least
        bgp = runner.run(["ss", "-Htan", "( sport = :179 or dport = :179 )"], netns=ns).stdout
        assert bgp.strip() == "", (node, bgp)


def test_node_deleted_its_routes_leave_within_a_second_and_come_back(direct):
    node3 = json.loads(runner.kubectl(direct, "get", "node", "node3", "-o", "json").stdout)
    gone = set(CIDRS["node3"])
    try:
        start = time.monotonic()
        runner.kubectl(direct, "delete", "node", "node3", "--wait=false")
        returned = time.monotonic() - start
        poll(lambda: all(not gone & set(routes(direct, n)) for n in ("node1", "node2")), timeout=5, interval=0.01)
        took = time.monotonic() - start
        print(f"node3's routes left node1 and node2 {took * 1000:.0f} ms after kubectl delete started "
              f"({(took - returned) * 1000:.0f} ms after it returned)")
        assert took < 1.0, took
        assert all(set(routes(direct, n)) == set(owners_route(n)) - gone for n in ("node1", "node2"))
    finally:
        for key in ("resourceVersion", "uid", "creationTimestamp"):
            node3["metadata"].pop(key, None)
        if runner.kubectl(direct, "get", "node", "node3", check=False).returncode != 0:
            runner.kubectl(direct, "create", "-f", "-", input=json.dumps(node3))
    took = poll(lambda: all(routes(direct, n) == owners_route(n) for n in NODES), timeout=10, interval=0.01)
    print(f"node3's routes back on node1 and node2 {took * 1000:.0f} ms after it was created again")
    ok, total, lines = demo.matrix(direct)
    assert ok == total, "\n".join(lines)


def test_restart_keeps_the_routes_and_prunes_a_node_deleted_meanwhile(direct):
    node3 = json.loads(runner.kubectl(direct, "get", "node", "node3", "-o", "json").stdout)
    stopped = False
    try:
        runner.stop_speaker(direct, "node1")
        stopped = True
        assert routes(direct, "node1") == owners_route("node1")  # left in place on stop
        runner.kubectl(direct, "delete", "node", "node3", "--wait=false")
        runner.start_speaker(direct, "node1")
        stopped = False
        took = poll(lambda: routes(direct, "node1") == {c: a for c, a in owners_route("node1").items()
                                                        if c not in CIDRS["node3"]}, timeout=15, interval=0.05)
        print(f"node1's speaker restarted: node3's routes pruned {took:.2f}s after the start")
        assert runner.speaker_status(direct, "node1")["converged"]
    finally:
        if stopped:
            runner.start_speaker(direct, "node1")
        for key in ("resourceVersion", "uid", "creationTimestamp"):
            node3["metadata"].pop(key, None)
        if runner.kubectl(direct, "get", "node", "node3", check=False).returncode != 0:
            runner.kubectl(direct, "create", "-f", "-", input=json.dumps(node3))
    poll(lambda: all(routes(direct, n) == owners_route(n) for n in NODES), timeout=15, interval=0.05)


def test_off_link_node_reported_never_routed_until_an_address_puts_it_on_link(direct):
    ns1 = direct.nodes["node1"]["netns"]
    added = False
    try:
        runner.kubectl(direct, "create", "-f", "-", input=json.dumps(GHOST))
        for node in NODES:
            poll(lambda n=node: ghost_reported(direct, n), timeout=5, interval=0.05)
        for node in NODES:
            doc = runner.speaker_status(direct, node)
            assert "10.42.9.0/24" not in {r["prefix"] for r in doc["installed"]}, node
            assert "10.42.9.0/24" not in routes(direct, node), node
        # a full pass (the periodic resync) changes nothing about it
        resyncs = runner.speaker_status(direct, "node1")["counters"].get("resync", 0)
        poll(lambda: runner.speaker_status(direct, "node1")["counters"].get("resync", 0) > resyncs, timeout=15,
             interval=0.5)
        assert all("10.42.9.0/24" not in routes(direct, n) for n in NODES)
        assert ghost_reported(direct, "node1")
        # an address on 10.99.0.0/24 puts ghost on node1's link: routed there (and only there)
        runner.run(["ip", "addr", "add", "10.99.0.1/24", "dev", "eth1"], netns=ns1)
        added = True
        took = poll(lambda: routes(direct, "node1").get("10.42.9.0/24") == "10.99.0.5", timeout=5, interval=0.01)
        print(f"ghost routed on node1 {took * 1000:.0f} ms after the address was added")
        doc = runner.speaker_status(direct, "node1")
        assert "offlink:ghost" not in doc["nodeErrors"]
        assert {"prefix": "10.42.9.0/24", "via": ["10.99.0.5"]} in doc["installed"]
        assert all("10.42.9.0/24" not in routes(direct, n) for n in ("node2", "node3"))
        assert all(ghost_reported(direct, n) for n in ("node2", "node3"))
        runner.run(["ip", "addr", "del", "10.99.0.1/24", "dev", "eth1"], netns=ns1)
        added = False
        poll(lambda: "10.42.9.0/24" not in routes(direct, "node1"), timeout=5, interval=0.01)
        poll(lambda: ghost_reported(direct, "node1"), timeout=5, interval=0.05)
    finally:
        if added:
            runner.run(["ip", "addr", "del", "10.99.0.1/24", "dev", "eth1"], netns=ns1, check=False)
        runner.kubectl(direct, "delete", "node", "ghost", "--wait=false", check=False)
    poll(lambda: all("offlink:ghost" not in runner.speaker_status(direct, n)["nodeErrors"] for n in NODES), timeout=5,
         interval=0.05)
    assert all(routes(direct, n) == owners_route(n) for n in NODES)
