"""iBGP full mesh, no ToR (lab/mesh.clab.yml): four nodes on one segment, each peering with the
other Nodes' InternalIPs per family. A Node leaving or joining changes only the sessions to it:
no other session of any node resets (its `since` stays) and traffic between the others flows on."""
import json

import pytest

from lab import demo, runner
from tests.lab.conftest import poll, topology_lab
from tests.lab.pinger import traffic

NODES = ("node1", "node2", "node3", "node4")
ADDR = {f"node{i}": (f"192.168.50.1{i}", f"fd00:50::1{i}") for i in range(1, 5)}
NODE4 = {"10.42.4.0/24", "fd00:42:0:4::/64"}


@pytest.fixture(scope="module")
def mesh():
    lab = topology_lab("mesh.clab.yml", "pbm")
    state = next(lab)
    try:
        poll(lambda: all(all(p["state"] == "up" for p in peers(state, n).values()) for n in NODES), timeout=30)
        yield state
    finally:
        lab.close()  # down, on every path


def peers(lab, node) -> dict:
    return {p["address"]: p for p in runner.speaker_status(lab, node)["peers"]}


def test_every_node_peers_with_every_other_per_family_and_pods_reach_pods(mesh):
    for node in NODES:
        got = peers(mesh, node)
        want = {a for other in NODES if other != node for a in ADDR[other]}
        assert set(got) == want, node
        assert {(p["state"], p["asn"], p["localAsn"]) for p in got.values()} == {("up", 64512, 64512)}
    ok, total, lines = demo.matrix(mesh)
    assert total == 24 and ok == total, "\n".join(lines)
    doc = runner.speaker_status(mesh, "node1")
    assert {r["prefix"]: r["via"] for r in doc["installed"]}["10.42.4.0/24"] == ["192.168.50.14"]


def test_node4_leaving_and_joining_touches_only_the_sessions_to_node4(mesh):
    before = {n: {a: p["since"] for a, p in peers(mesh, n).items()} for n in ("node1", "node2", "node3")}
    exabgp = {n: runner.speaker_status(mesh, n)["exabgpPid"] for n in ("node1", "node2", "node3")}
    node4 = json.loads(runner.kubectl(mesh, "get", "node", "node4", "-o", "json").stdout)
    res = {}
    with traffic(mesh, res, interval=0.02):  # 50 packets/s node1-pod1 -> node2-pod1, per family
        runner.kubectl(mesh, "delete", "node", "node4", "--wait=false")
        poll(lambda: all(not set(ADDR["node4"]) & set(peers(mesh, n)) for n in ("node1", "node2", "node3")),
             timeout=15)
        poll(lambda: all(not NODE4 & demo.installed(mesh, n) for n in ("node1", "node2", "node3")), timeout=15)
        for key in ("resourceVersion", "uid", "creationTimestamp"):
            node4["metadata"].pop(key, None)
        runner.kubectl(mesh, "create", "-f", "-", input=json.dumps(node4))
        poll(lambda: all(all(peers(mesh, n).get(a, {}).get("state") == "up" for a in ADDR["node4"])
                         for n in ("node1", "node2", "node3")), timeout=30)
        poll(lambda: all(NODE4 <= demo.installed(mesh, n) for n in ("node1", "node2", "node3")), timeout=15)
    assert res["ipv4"].lost == 0 and res["ipv6"].lost == 0, res
    for n in ("node1", "node2", "node3"):
        after = {a: p["since"] for a, p in peers(mesh, n).items()}
        untouched = {a: s for a, s in before[n].items() if a not in ADDR["node4"]}
        assert {a: after[a] for a in untouched} == untouched, n  # no other session reset
        assert runner.speaker_status(mesh, n)["exabgpPid"] == exabgp[n]  # reloaded, not restarted


def test_a_node_outside_the_mesh_scope_is_never_a_peer(mesh):
    ghost = {"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": "ghost", "labels": {"podbgp.io/mesh": "false"}},
             "spec": {"podCIDR": "10.42.9.0/24", "podCIDRs": ["10.42.9.0/24"]},
             "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.99"}]}}
    runner.kubectl(mesh, "create", "-f", "-", input=json.dumps(ghost))
    try:
        marker = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "marker"},
                  "spec": {"podCIDR": "10.42.8.0/24", "podCIDRs": ["10.42.8.0/24"]},
                  "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.98"}]}}
        runner.kubectl(mesh, "create", "-f", "-", input=json.dumps(marker))
        try:  # once the in-scope marker shows up as a peer, the ghost event has been seen too
            poll(lambda: "192.168.50.98" in peers(mesh, "node1"), timeout=15)
            assert "192.168.50.99" not in peers(mesh, "node1")
        finally:
            runner.kubectl(mesh, "delete", "node", "marker", "--wait=false")
    finally:
        runner.kubectl(mesh, "delete", "node", "ghost", "--wait=false")
    poll(lambda: "192.168.50.98" not in peers(mesh, "node1"), timeout=15)


def test_service_routes_reach_no_mesh_member_unless_a_peer_exports_them(mesh):
    """meshExportServices is false: every node serves the ExternalIP (eTP Cluster, one endpoint on
    node1) yet none sends it to a mesh member; node1's annotation peer node2 with exportServices:
    true then gets it, and refuses it for good: counted per peer and reason, never stored."""
    ns, ip = "meshsvc", "198.51.100.9"
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": ns},
           "spec": {"type": "ClusterIP", "externalIPs": [ip], "externalTrafficPolicy": "Cluster",
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    pod = next(p for p in mesh.pods if p["node"] == "node1")
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": "ext-1", "namespace": ns, "labels": {"kubernetes.io/service-name": "ext"}},
           "endpoints": [{"addresses": [pod["ipv4"]], "nodeName": "node1", "conditions": {"ready": True}}],
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
    route = f"{ip}/32"

    def announced(n):
        return any(r["prefix"] == route and r["announced"] for r in runner.speaker_status(mesh, n)["serviceRoutes"])

    def refused_from(n, peer):
        """Paths of the peer's session refused for good as Service addresses (counted, never stored)."""
        doc = runner.speaker_status(mesh, n)
        p = next((x for x in doc["peers"] if x["address"] == peer), None)
        stored = [x for x in doc["learned"] if x["prefix"] == route]
        assert not stored, stored  # a Service address learned from a peer is never even stored
        return (p or {}).get("refused", {}).get("service-address", 0)

    def held_refused(n, peer):
        p = next(x for x in runner.speaker_status(mesh, n)["peers"] if x["address"] == peer)
        return p["counted"].get("ipv4", 0) - p["paths"]

    for obj in (svc, eps):
        runner.kubectl(mesh, "apply", "-f", "-", input=json.dumps(obj))
    try:
        poll(lambda: all(announced(n) for n in NODES), timeout=15)
        peer = json.dumps([{"address": ADDR["node2"][0], "asn": 64512, "exportServices": True}])
        runner.kubectl(mesh, "annotate", "--overwrite", "node", "node1", f"podbgp.io/peers={peer}")
        try:
            poll(lambda: refused_from("node2", ADDR["node1"][0]) >= 1, timeout=30)
            # node1 sent the route to its exporting peer: the mesh members have had their chance
            assert refused_from("node3", ADDR["node1"][0]) == 0 and refused_from("node4", ADDR["node1"][0]) == 0
            assert route not in demo.installed(mesh, "node2")
        finally:
            runner.kubectl(mesh, "annotate", "node", "node1", "podbgp.io/peers-")
        # back to a mesh member: node1 withdraws it, so node2 holds no refused path from node1 (what
        # a peer holds counts toward maxPrefixes: paths in the RIB plus refused ones held)
        poll(lambda: held_refused("node2", ADDR["node1"][0]) == 0, timeout=30)
    finally:
        runner.kubectl(mesh, "delete", "service", "ext", "-n", ns, "--wait=false")
        runner.kubectl(mesh, "delete", "endpointslice", "ext-1", "-n", ns, "--wait=false")
