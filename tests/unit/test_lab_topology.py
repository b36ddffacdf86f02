"""The lab's topology files as the runner reads them: which nodes are FRR, which BIRD; and the
BIRD configs parse (bird -p) when bird is installed."""
import os
import shutil
import subprocess

import pytest

from lab.topology import load

LAB = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "lab")


def test_mixedtor_has_an_frr_and_a_bird_tor():
    topo = load(os.path.join(LAB, "mixedtor.clab.yml"))
    kinds = {n.name: (n.role, n.is_frr, n.is_bird) for n in topo.nodes}
    assert kinds == {"tor1": ("tor", True, False), "tor2": ("tor", False, True), "node1": ("node", False, False),
                     "node2": ("node", False, False), "node3": ("node", False, False)}
    assert os.path.isfile(topo.node("tor1").bind_for("/etc/frr/frr.conf"))
    assert os.path.isfile(topo.node("tor2").bind_for("/etc/bird/bird.conf"))


def test_a_bird_image_makes_a_tor_without_a_role_label():
    from lab.topology import LabNode

    node = LabNode(name="r", kind="linux", image="pierky/bird:2.0.12", exec=(), labels=(), binds=())
    assert node.role == "tor" and node.is_bird and not node.is_frr


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird (bird2) not installed")
def test_the_bird_configs_parse():
    for name in sorted(os.listdir(os.path.join(LAB, "bird"))):
        proc = subprocess.run(["bird", "-p", "-c", os.path.join(LAB, "bird", name)], capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.stderr)
