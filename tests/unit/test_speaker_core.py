import ipaddress as ia
import textwrap

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.types import Owner
from speaker import config as cfgmod
from speaker.cli import main
from speaker.config import ConfigError
from speaker.nodes import NodeError, NodeView, parse_node
from speaker.podcidr import derive, discover

N, A = ia.ip_network, ia.ip_address
BASE = {"nodeName": "node1", "asn": 65001, "peers": [{"address": "192.168.50.1", "asn": 65000}],
        "clusterCIDRs": ["10.42.0.0/16", "fd00:42::/48"], "serviceCIDRs": ["10.43.0.0/16", "fd00:43::/108"]}


def cfg(**kw):
    return cfgmod.parse({**BASE, **kw})


def test_valid_config_defaults():
    c = cfg()
    assert c.peers[0].hold_time == 9 and c.graceful_restart == 120 and c.route_protocol == 80
    assert c.strict_next_hop and not c.pod_cidr.derive


@pytest.mark.parametrize("change,field", [
    ({"serviceCIDRs": ["10.42.128.0/17"]}, "serviceCIDRs[0]"),
    ({"clusterCIDRs": ["10.42.0.0/16", "fd00:42::/48"], "serviceCIDRs": ["fd00:42:0:1::/112"]}, "serviceCIDRs[0]"),
    ({"clusterCIDRs": ["10.42.0.1/16"]}, "clusterCIDRs[0]"),
    ({"clusterCIDRs": ["10.42.0.0/33"]}, "clusterCIDRs[0]"),
    ({"clusterCIDRs": ["banana"]}, "clusterCIDRs[0]"),
    ({"clusterCIDRs": []}, "clusterCIDRs"),
    ({"clusterCIDRs": ["10.42.0.0/16", "10.44.0.0/16"]}, "clusterCIDRs"),
    ({"podCIDR": {"nodeLocal": ["10.99.1.0/24"]}}, "podCIDR.nodeLocal[0]"),
    ({"podCIDR": {"nodeLocal": ["10.42.1.1/24"]}}, "podCIDR.nodeLocal[0]"),
    ({"peers": []}, "peers"),
    ({"peers": [{"address": "192.168.50.300", "asn": 65000}]}, "peers[0].address"),
    ({"peers": [{"address": "192.168.50.1", "asn": 0}]}, "peers[0].asn"),
    ({"peers": [{"address": "192.168.50.1", "asn": 65000, "holdTime": 2}]}, "peers[0].holdTime"),
    ({"peers": [{"address": "192.168.50.1", "asn": 65000, "families": ["ipv6"]}]}, "peers[0].families"),
    ({"asn": "x"}, "asn"),
    ({"nodeName": ""}, "nodeName"),
    ({"bogus": 1}, "bogus"),
])
def test_config_refusals_name_the_field(change, field):
    with pytest.raises(ConfigError) as err:
        cfg(**change)
    assert str(err.value).startswith(field + ":"), str(err.value)
    assert "\n" not in str(err.value)


def test_env_and_flags_override_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(textwrap.dedent("""
        nodeName: fromfile
        asn: 65001
        peers: [{address: 192.168.50.1, asn: 65000}]
        clusterCIDRs: [10.42.0.0/16]
    """))
    c = cfgmod.load(str(f), env={"NODE_NAME": "fromenv", "PODBGP_ASN": "65010"}, overrides={"asn": 65020})
    assert (c.node_name, c.asn) == ("fromenv", 65020)


def test_config_check_command(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("nodeName: n1\nasn: 65001\npeers: [{address: 192.168.50.1, asn: 65000}]\n"
                    "clusterCIDRs: [10.42.0.0/16]\nserviceCIDRs: [10.43.0.0/16]\n")
    res = CliRunner().invoke(main, ["config", "check", str(good)])
    assert res.exit_code == 0 and "ok: node n1" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("10.43.0.0/16", "10.42.0.0/20"))
    res = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert res.exit_code != 0 and "serviceCIDRs[0]: 10.42.0.0/20 overlaps clusterCIDRs[0]" in res.output


def node(name, cidrs=(), addrs=()):
    return {"metadata": {"name": name}, "spec": {"podCIDR": cidrs[0] if cidrs else "", "podCIDRs": list(cidrs)},
            "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addrs]
                       + [{"type": "Hostname", "address": name}]}}


def test_parse_node_and_errors():
    n = parse_node(node("n2", ["10.42.2.0/24", "fd00:42:0:2::/64"], ["192.168.50.12", "fd00:50::12"]))
    assert n.pod_cidrs == (N("10.42.2.0/24"), N("fd00:42:0:2::/64")) and str(n.address(6)) == "fd00:50::12"
    for bad, field in [(node("x", ["10.42.2.1/24"]), "spec.podCIDRs[0]"), (node("x", ["nope"]), "spec.podCIDRs[0]"),
                       (node("x", ["10.42.2.0/24", "10.42.3.0/24"]), "spec.podCIDRs"),
                       (node("x", [], ["999.1.1.1"]), "status.addresses[0].address"), ({"metadata": {}}, "metadata.name")]:
        with pytest.raises(NodeError) as err:
            parse_node(bad)
        assert field in str(err.value)


def test_ownership_overlaps_trust_neither_and_nodes_without_address():
    nodes = [parse_node(node("a", ["10.42.1.0/24"], ["192.168.50.11"])),
             parse_node(node("b", ["10.42.1.0/25"], ["192.168.50.12"])),
             parse_node(node("c", ["10.42.3.0/24"], ["192.168.50.13", "fd00:50::13", "192.168.60.13"])),
             parse_node(node("d", ["10.42.4.0/24", "fd00:42:0:4::/64"], ["192.168.50.14"]))]
    view = NodeView()
    for attempt in range(2):  # the same Nodes again change nothing
        changed = set().union(*(view.upsert(n) for n in nodes))
        assert changed == (set() if attempt else {N(c) for c in (
            "10.42.1.0/24", "10.42.1.0/25", "10.42.3.0/24", "10.42.4.0/24", "fd00:42:0:4::/64")})
        assert view.owners == {N("10.42.3.0/24"): Owner("c", (A("192.168.50.13"), A("192.168.60.13"))),
                               N("10.42.4.0/24"): Owner("d", (A("192.168.50.14"),))}
        assert view.disputed == {N("10.42.1.0/24"): ("a", "b"), N("10.42.1.0/25"): ("a", "b")}
        assert view.unusable == {"d": "node d: no InternalIP of IPv6 for podCIDR fd00:42:0:4::/64"}
    assert view.delete("b") == {N("10.42.1.0/24"), N("10.42.1.0/25")}
    assert view.owners[N("10.42.1.0/24")] == Owner("a", (A("192.168.50.11"),)) and not view.disputed


node_values = st.recursive(st.none() | st.integers() | st.text(max_size=12) | st.sampled_from(
    ["10.42.1.0/24", "fd00::/64", "InternalIP", "192.168.50.1", "x/99"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["metadata", "name", "spec", "podCIDR", "podCIDRs", "status", "addresses", "type", "address", "annotations"]),
        inner, max_size=4), max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(node_values)
def test_fuzz_node_parser_only_node_error_escapes(obj):
    try:
        parse_node(obj)
    except NodeError:
        pass


def files(mapping):
    return lambda path: mapping.get(path)


def test_podcidr_chain_order_and_sources():
    c = cfg(podCIDR={"nodeLocal": ["10.42.5.0/24"]})
    me = parse_node(node("node1", ["10.42.1.0/24"], ["192.168.50.11"]))
    assert discover(c, me, {}, files({})).source == "node.spec.podCIDRs"
    assert discover(c, None, {"NODE_POD_CIDR": "10.42.6.0/24"}, files({})).source == "config podCIDR.nodeLocal"
    c = cfg()
    d = discover(c, None, {"NODE_POD_CIDR": "10.42.6.0/24, fd00:42:0:6::/64"}, files({}))
    assert d.source == "env NODE_POD_CIDR" and len(d.cidrs) == 2
    kubelet = {"/var/lib/kubelet/config.yaml": "kind: KubeletConfiguration\npodCIDR: 10.42.7.0/24\n"}
    assert discover(c, None, {}, files(kubelet)).cidrs == (N("10.42.7.0/24"),)
    k3s = {"/var/lib/rancher/k3s/agent/pod-cidr": "10.42.8.0/24\n"}
    assert discover(c, None, {}, files(k3s)).source.startswith("k3s file")
    assert discover(c, None, {}, files({})) is None


def test_podcidr_validation_refuses_bad_sources():
    c = cfg()
    with pytest.raises(ConfigError, match="outside the cluster CIDR"):
        discover(c, None, {"NODE_POD_CIDR": "10.50.0.0/24"}, files({}))
    with pytest.raises(ConfigError, match="host bits"):
        discover(c, None, {"NODE_POD_CIDR": "10.42.1.1/24"}, files({}))
    with pytest.raises(ConfigError, match="overlaps the Service CIDR 10.43.0.0/16"):
        discover(c, None, {"NODE_POD_CIDR": "10.43.1.0/24"}, files({}))


def test_derivation_is_opt_in_deterministic_and_detects_collisions():
    c = cfg(podCIDR={"deriveFromClusterCIDR": True, "nodeMaskV4": 24, "nodeMaskV6": 64})
    d = discover(c, None, {}, files({}))
    assert d.source == "derived from clusterCIDRs" and d.warning and len(d.cidrs) == 2
    assert d == discover(c, None, {}, files({}))
    tiny = cfg(clusterCIDRs=["10.42.0.0/23"], podCIDR={"deriveFromClusterCIDR": True, "nodeMaskV4": 24})
    with pytest.raises(ConfigError, match="collides"):
        derive(tiny, "node1", [f"other{i}" for i in range(8)], [])


def test_speaker_command_refuses_a_bad_config_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodeName: n1\nasn: 65001\npeers: [{address: 192.168.50.1, asn: 65000}]\n"
                   "clusterCIDRs: [10.42.0.0/16]\nserviceCIDRs: [10.42.0.0/24]\n")
    res = CliRunner().invoke(main, ["speaker", "--config", str(bad)])
    assert res.exit_code != 0
    assert res.output.strip().splitlines()[-1].startswith("Error: config refused: serviceCIDRs[0]:")
