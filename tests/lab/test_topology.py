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
