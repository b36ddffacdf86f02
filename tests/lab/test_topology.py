"""The runner realizes whatever the topology file says, not one built-in layout."""
import os
import uuid

from lab import demo, runner

HERE = os.path.dirname(os.path.abspath(__file__))


def test_another_topology_file_comes_up_and_routes():
    from lab.topology import load
    topo = load(os.path.join(HERE, "small.clab.yml"))
    assert [n.role for n in topo.nodes] == ["node", "node", "tor"]  # by image, without role labels
    name = f"pbs{uuid.uuid4().hex[:6]}"
    state = runner.up(os.path.join(HERE, "small.clab.yml"), name=name)
    try:
        assert sorted(state.nodes) == ["alpha", "beta", "leaf"] and len(state.pods) == 2
        demo.wait_routes(state, timeout=30)
        ok, total, lines = demo.matrix(state)
        assert total == 4 and ok == total, "\n".join(lines)
        assert "uplink" in runner.run(["ip", "route", "show", "proto", "80"], netns=state.nodes["alpha"]["netns"]).stdout
    finally:
        runner.down(name)
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(name)]


def test_one_as_for_every_node_needs_nothing_from_the_tor():
    """lab/sameas.clab.yml: every node in AS 64512 (config asn, no annotations), eBGP to the FRR
    ToR in AS 65000 configured as for one AS per node."""
    import json

    name = f"pbs{uuid.uuid4().hex[:6]}"
    state = runner.up(os.path.join(os.path.dirname(runner.DEFAULT_TOPOLOGY), "sameas.clab.yml"), name=name)
    try:
        demo.wait_routes(state, timeout=60)
        ok, total, lines = demo.matrix(state)
        assert total == 12 and ok == total, "\n".join(lines)
        doc = runner.speaker_status(state, "node1")
        assert {p["localAsn"] for p in doc["peers"]} == {64512}
        out = runner.vtysh(state, "tor", "show bgp ipv4 unicast json")
        as_paths = {p: r[0]["path"] for p, r in json.loads(out)["routes"].items()}
        assert as_paths["10.42.2.0/24"] == "64512"  # what the ToR passes on: the nodes' own AS in the path
        assert doc["rejectedByReason"] == {"own-cidr": 2}  # its own PodCIDRs came back and were refused
    finally:
        runner.down(name)
