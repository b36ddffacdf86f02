"""Who the node peers with: global peers by nodeSelector, the Node's podbgp.io/peers annotation,
the iBGP mesh, router ID, passwords from the Secret; and the speaker recomputing them only when
something they depend on changed."""
import asyncio
import ipaddress as ia
import logging

import pytest

from speaker import config as cfgmod
from speaker import peers as peersmod
from speaker import status
from speaker.app import Speaker
from speaker.nodes import NodeInfo, parse_node
from speaker.peers import Mesh, plan
from speaker.selector import parse as sel
from tests.unit.test_app import FakeExaBGP, FakeKernel, NodeEvent, Snapshot, node, settle

A = ia.ip_address
N = ia.ip_network
SECRET = "s3cr3t-Pa55"


def cfg(**kw):
    raw = {"nodeName": "node1", "asn": 64512, "peers": [{"address": "192.168.50.1", "asn": 65000}],
           "clusterCIDRs": ["10.42.0.0/16", "fd00:42::/48"], **kw}
    return cfgmod.parse({k: v for k, v in raw.items() if v is not None})


def info(name="node1", addrs=("192.168.50.11",), labels=None, annotations=None, cidr=None):
    n = name[-1]
    return NodeInfo(name=name, pod_cidrs=(N(cidr or f"10.42.{n}.0/24"),), addresses=tuple(A(a) for a in addrs),
                    annotations=tuple(sorted((annotations or {}).items())), labels=tuple(sorted((labels or {}).items())))


def secrets(**files):
    return lambda key: files.get(key)


NONE = secrets()


def summary(p):
    return [(str(x.address), x.asn, str(x.local_address), x.local_asn) for x in p.peers]


# ---- labels on NodeInfo -------------------------------------------------------------------------

def test_parse_node_keeps_every_label_and_only_our_annotations():
    raw = node("node1", ["10.42.1.0/24"], ["192.168.50.11"])
    raw["metadata"]["labels"] = {"rack": "r1", "kubernetes.io/hostname": "node1"}
    raw["metadata"]["annotations"] = {"podbgp.io/asn": "65001", "node.alpha.kubernetes.io/ttl": "0"}
    got = parse_node(raw)
    assert got.labels == (("kubernetes.io/hostname", "node1"), ("rack", "r1"))
    assert got.annotations == (("podbgp.io/asn", "65001"),)
    assert parse_node(node("node1", ["10.42.1.0/24"], ["192.168.50.11"])).labels == ()


# ---- global peers and nodeSelector --------------------------------------------------------------

def test_global_peers_apply_to_the_nodes_their_selector_matches():
    c = cfg(peers=[{"address": "192.168.50.1", "asn": 65000, "nodeSelector": "rack=r1"},
                   {"address": "192.168.50.2", "asn": 65000, "nodeSelector": "rack in (r2, r3)"},
                   {"address": "fd00:50::1", "asn": 65000}])
    me = info(addrs=("192.168.50.11", "fd00:50::11"), labels={"rack": "r2"})
    assert [str(p.address) for p in plan(c, me, {}, NONE).peers] == ["192.168.50.2", "fd00:50::1"]
    me = info(addrs=("192.168.50.11", "fd00:50::11"), labels={"rack": "r1"})
    assert [str(p.address) for p in plan(c, me, {}, NONE).peers] == ["192.168.50.1", "fd00:50::1"]


def test_one_address_twice_split_by_selectors_is_one_session_per_node():
    c = cfg(peers=[{"address": "192.168.50.1", "asn": 65000, "nodeSelector": "rack=r1"},
                   {"address": "192.168.50.1", "asn": 65100, "nodeSelector": "rack=r2"}])
    assert summary(plan(c, info(labels={"rack": "r2"}), {}, NONE))[0][1] == 65100
    both = plan(c, info(labels={"rack": "r2"}), {}, NONE)
    assert both.errors == ()


def test_session_fields_reach_the_peer_config():
    c = cfg(peers=[{"address": "192.168.50.1", "asn": 65000, "holdTime": 30, "port": 1179, "multihop": 2}],
            gracefulRestart=60)
    (p,) = plan(c, info(), {}, NONE).peers
    assert (p.hold_time, p.multihop, p.graceful_restart, p.families, p.password) == (30, 2, 60, frozenset({"ipv4"}), None)
    assert (p.local_asn, str(p.local_address), str(p.router_id)) == (64512, "192.168.50.11", "192.168.50.11")
    assert (p.port, p.keepalive) == (1179, 10)


def test_a_node_on_two_segments_speaks_to_each_tor_from_its_address_there():
    c = cfg(peers=[{"address": a, "asn": 65000} for a in ("192.168.51.1", "192.168.52.1", "fd00:51::1", "fd00:52::1")])
    me = info(addrs=("192.168.51.11", "192.168.52.11", "fd00:51::11", "fd00:52::11"))
    assert summary(plan(c, me, {}, NONE)) == [
        ("192.168.51.1", 65000, "192.168.51.11", 64512), ("192.168.52.1", 65000, "192.168.52.11", 64512),
        ("fd00:51::1", 65000, "fd00:51::11", 64512), ("fd00:52::1", 65000, "fd00:52::11", 64512)]
    # the router ID stays the first InternalIP; a peer near neither address gets the first one
    assert {str(p.router_id) for p in plan(c, me, {}, NONE).peers} == {"192.168.51.11"}
    far = cfg(peers=[{"address": "10.9.9.9", "asn": 65000, "multihop": 3}])
    assert summary(plan(far, me, {}, NONE))[0][2] == "192.168.51.11"
    # an explicit nodeAddresses wins
    pinned = cfg(peers=[{"address": "192.168.52.1", "asn": 65000}], nodeAddresses=["192.168.51.11"])
    assert summary(plan(pinned, me, {}, NONE))[0][2] == "192.168.51.11"


def test_a_peer_of_a_family_the_node_lacks_is_left_out_and_reported():
    c = cfg(peers=[{"address": "192.168.50.1", "asn": 65000}, {"address": "fd00:50::1", "asn": 65000}])
    p = plan(c, info(), {}, NONE)
    assert summary(p) == [("192.168.50.1", 65000, "192.168.50.11", 64512)]
    assert dict(p.errors) == {"peer:fd00:50::1": "node node1: peers[1]: fd00:50::1 is IPv6 but the node has no "
                                                 "address of that family; this peer is left out"}


def test_no_as_number_means_waiting():
    p = plan(cfg(asn=None), info(), {}, NONE)
    assert p.peers == () and p.waiting.startswith("node node1: no AS number")


def test_direct_mode_has_no_peers():
    assert plan(cfg(mode="direct"), info(), {}, NONE) == peersmod.Plan(())


# ---- the podbgp.io/peers annotation -------------------------------------------------------------

ANN_PEERS = """
- address: 192.168.60.1
  asn: 65010
  port: 1179
  holdTime: 90
  keepaliveTime: 30
  passwordKey: tor-b
- {address: 192.168.60.2, asn: 65011, ttlSecurity: 1}
"""


def test_annotation_peers_are_added_to_the_global_ones():
    me = info(annotations={"podbgp.io/peers": ANN_PEERS})
    p = plan(cfg(), me, {}, secrets(**{"tor-b": SECRET + "\n"}))
    assert [(a, asn) for a, asn, *_ in summary(p)] == [("192.168.50.1", 65000), ("192.168.60.1", 65010),
                                                         ("192.168.60.2", 65011)]
    by = {str(x.address): x for x in p.peers}
    assert by["192.168.60.1"].password == SECRET and by["192.168.60.1"].hold_time == 90
    assert (by["192.168.60.1"].port, by["192.168.60.1"].keepalive, by["192.168.50.1"].port) == (1179, 30, 179)
    assert by["192.168.60.2"].ttl_security == 1 and by["192.168.60.2"].password is None
    assert p.errors == ()


@pytest.mark.parametrize("text,message", [
    ("- address: 192.168.60.1\n  asn: [", "node node1: annotation podbgp.io/peers: not valid YAML (while parsing a "
                                          "flow node); its peers are left out"),
    ("address: 192.168.60.1", "node node1: annotation podbgp.io/peers: expected a YAML list of peers "
                              "({address, asn, ...}); the annotation's peers are left out"),
    ("[{address: 192.168.60.1, asn: 65010}, {address: 192.168.60.2}]",
     "node node1: annotation podbgp.io/peers[1].asn: None is not an integer; the annotation's peers are left out"),
    ("[{address: 192.168.60.1, asn: 65010, nodeSelector: a=b}]",
     "node node1: annotation podbgp.io/peers[0].nodeSelector: unknown setting; the annotation's peers are left out"),
    ("[{address: 192.168.60.1, asn: 65010, holdtime: 9}]",
     "node node1: annotation podbgp.io/peers[0].holdtime: unknown setting (did you mean holdTime?); the "
     "annotation's peers are left out"),
    (f"[{{address: 192.168.60.1, asn: 65010, password: {SECRET}}}]",
     "node node1: annotation podbgp.io/peers[0].password: a password must not sit in a ConfigMap or annotation; put "
     "it in the Secret podbgp-bgp-passwords and name its key with passwordKey; the annotation's peers are left out"),
])
def test_a_bad_annotation_is_reported_and_only_its_peers_left_out(text, message):
    p = plan(cfg(), info(annotations={"podbgp.io/peers": text}), {}, NONE)
    assert [a for a, *_ in summary(p)] == ["192.168.50.1"]
    assert dict(p.errors) == {"peers:node1": message}
    assert SECRET not in message


def test_an_empty_annotation_adds_nothing():
    assert plan(cfg(), info(annotations={"podbgp.io/peers": ""}), {}, NONE).errors == ()


def test_an_annotation_peer_wins_over_a_global_one_of_the_same_address():
    me = info(annotations={"podbgp.io/peers": "[{address: 192.168.50.1, asn: 65099}]"})
    p = plan(cfg(), me, {}, NONE)
    assert summary(p) == [("192.168.50.1", 65099, "192.168.50.11", 64512)]
    assert dict(p.errors) == {"peer:192.168.50.1": "node node1: peers[0]: 192.168.50.1 is already a peer of this node "
                                                   "(one session per address); this one is left out"}


# ---- router ID and AS ---------------------------------------------------------------------------

@pytest.mark.parametrize("ann,config_rid,rid,error", [
    (None, None, "192.168.50.11", None),
    ("10.255.0.1", None, "10.255.0.1", None),
    (" 10.255.0.1 ", "10.0.0.9", "10.255.0.1", None),
    (None, "10.0.0.9", "10.0.0.9", None),
    ("fd00::1", None, "192.168.50.11", "node node1: annotation podbgp.io/router-id='fd00::1' is not a non-zero IPv4 "
                                       "address (dotted quad); using 192.168.50.11"),
    ("0.0.0.0", "10.0.0.9", "10.0.0.9", "node node1: annotation podbgp.io/router-id='0.0.0.0' is not a non-zero "
                                        "IPv4 address (dotted quad); using 10.0.0.9"),
])
def test_router_id(ann, config_rid, rid, error):
    me = info(annotations={"podbgp.io/router-id": ann} if ann else None)
    p = plan(cfg(routerId=config_rid), me, {}, NONE)
    assert str(p.peers[0].router_id) == rid
    assert dict(p.errors).get("router-id:node1") == error


def test_without_any_address_there_is_no_router_id_and_nothing_to_open():
    p = plan(cfg(), info(addrs=()), {}, NONE)
    assert p.peers == () and p.waiting == "nodeAddresses: node node1 has no InternalIP and none is configured"


def test_in_a_mesh_every_node_uses_the_cluster_as_and_a_different_annotation_is_reported():
    me = info(annotations={"podbgp.io/asn": "65001"})
    p = plan(cfg(mesh=True), me, {}, NONE)
    assert {x.local_asn for x in p.peers} == {64512}
    assert dict(p.errors)["asn:node1"] == ("node node1: annotation podbgp.io/asn='65001' differs from the mesh's AS "
                                           "64512 (config asn), which every node uses; remove the annotation")
    assert "asn:node1" not in dict(plan(cfg(mesh=True), info(annotations={"podbgp.io/asn": "64512"}), {}, NONE).errors)
    # without a mesh the annotation still wins (per-node AS, eBGP to the ToR)
    assert plan(cfg(), me, {}, NONE).peers[0].local_asn == 65001


# ---- the mesh -----------------------------------------------------------------------------------

def members(*infos, scope=""):
    m = Mesh(sel(scope))
    for i in infos:
        m.put(i)
    return m.members


DUAL = ("192.168.50.1{}", "fd00:50::1{}")


def dual(name, labels=None):
    return info(name, tuple(a.format(name[-1]) for a in DUAL), labels=labels)


def test_mesh_peers_every_other_node_in_scope_per_family():
    c = cfg(mesh=True, peers=[])
    nodes = [dual("node1"), dual("node2"), info("node3", ("192.168.50.13",)), info("node4", ("fd00:50::14",))]
    p = plan(c, nodes[0], members(*nodes), NONE)
    assert summary(p) == [("192.168.50.12", 64512, "192.168.50.11", 64512), ("192.168.50.13", 64512, "192.168.50.11", 64512),
                          ("fd00:50::12", 64512, "fd00:50::11", 64512), ("fd00:50::14", 64512, "fd00:50::11", 64512)]
    assert {x.families for x in p.peers} == {frozenset({"ipv4"}), frozenset({"ipv6"})}
    assert all(x.listen for x in p.peers)  # mesh members connect both ways: each also listens
    # an IPv4-only node opens no IPv6 session and says nothing about it
    p = plan(c, nodes[2], members(*nodes), NONE)
    assert [a for a, *_ in summary(p)] == ["192.168.50.11", "192.168.50.12"] and p.errors == ()


def test_mesh_scope_by_selector_and_the_own_node_out_of_scope_opens_nothing():
    c = cfg(mesh=True, meshNodeSelector="mesh=yes")
    nodes = [info("node1", ("192.168.50.11",), {"mesh": "yes"}), info("node2", ("192.168.50.12",), {"mesh": "yes"}),
             info("node3", ("192.168.50.13",), {"mesh": "no"}), info("node4", ("192.168.50.14",))]
    m = members(*nodes, scope="mesh=yes")
    assert sorted(m) == ["node1", "node2"]
    assert [a for a, *_ in summary(plan(c, nodes[0], m, NONE))] == ["192.168.50.1", "192.168.50.12"]
    # node3 is out of scope: only the global peer, although others are in the mesh
    assert [a for a, *_ in summary(plan(c, nodes[2], m, NONE))] == ["192.168.50.1"]


def test_the_mesh_member_set_changes_only_when_scope_or_addresses_do():
    m = Mesh(sel("mesh=yes"))
    a = info("node2", ("192.168.50.12",), {"mesh": "yes"})
    assert m.put(a) is True
    assert m.put(a) is False  # a heartbeat
    assert m.put(info("node2", ("192.168.50.12",), {"mesh": "yes", "x": "y"}, cidr="10.42.9.0/24")) is False
    assert m.put(info("node2", ("192.168.50.22",), {"mesh": "yes"})) is True  # moved
    assert m.put(info("node2", ("192.168.50.22",), {"mesh": "no"})) is True  # left the scope
    assert m.put(info("node2", ("192.168.50.22",), {"mesh": "no"})) is False
    assert m.put(info("node3", (), {"mesh": "yes"})) is False  # no InternalIP yet
    assert m.put(a) is True and m.remove("node2") is True and m.remove("node2") is False
    off = Mesh(sel(""), enabled=False)
    assert off.put(a) is False and off.members == {}


# ---- passwords ----------------------------------------------------------------------------------

def test_the_password_is_read_from_the_secret_with_one_newline_stripped():
    c = cfg(peers=[{"address": "192.168.50.1", "asn": 65000, "passwordKey": "tor-a"}])
    assert plan(c, info(), {}, secrets(**{"tor-a": SECRET + "\n"})).peers[0].password == SECRET
    assert plan(c, info(), {}, secrets(**{"tor-a": SECRET + "\n\n"})).peers[0].password == SECRET + "\n"
    assert plan(c, info(), {}, secrets(**{"tor-a": SECRET})).peers[0].password == SECRET


@pytest.mark.parametrize("content,problem", [
    (None, "passwordKey 'tor-a' is not in /etc/podbgp/secrets (the Secret podbgp-bgp-passwords)"),
    ("\n", "passwordKey 'tor-a' in /etc/podbgp/secrets is empty"),
    ("x" * 81, "passwordKey 'tor-a': the password is longer than 80 bytes (TCP MD5's limit)"),
])
def test_a_peer_without_a_usable_password_is_never_opened(content, problem):
    c = cfg(peers=[{"address": "192.168.50.1", "asn": 65000, "passwordKey": "tor-a"},
                   {"address": "192.168.50.2", "asn": 65000}])
    p = plan(c, info(), {}, secrets(**({"tor-a": content} if content is not None else {})))
    assert [a for a, *_ in summary(p)] == ["192.168.50.2"]
    assert dict(p.errors) == {"peer:192.168.50.1": f"node node1: peers[0] 192.168.50.1: {problem}; no session "
                                                   "without its password"}


def test_secret_files_reads_the_mounted_directory(tmp_path):
    (tmp_path / "tor-a").write_text(SECRET + "\n")
    read = peersmod.secret_files(str(tmp_path))
    assert read("tor-a") == SECRET + "\n" and read("absent") is None


# ---- the speaker: recomputed only when something they depend on changed --------------------------

def labelled(name, addr, labels=None, annotations=None, cidr=None):
    raw = node(name, [cidr or f"10.42.{name[-1]}.0/24"], [addr])
    raw["metadata"]["labels"] = labels or {}
    raw["metadata"]["annotations"] = annotations or {}
    return raw


class Exa(FakeExaBGP):
    def reconfigure(self, text):
        self.config = text


def make(tmp_path, **kw):
    c = cfg(runtimeDir=str(tmp_path), convergenceTimeout=30, secretsDir=str(tmp_path / "secrets"),
            serviceCIDRs=["10.43.0.0/16"], **kw)
    sp = Speaker(c, FakeKernel(), lambda emit: (lambda: None), env={}, bgp_factory=Exa)
    calls = []
    configure = sp.bgp.configure
    sp.bgp.configure = lambda peers: (calls.append([str(p.address) for p in peers]), configure(peers))[1]
    return sp, calls


def test_mesh_sessions_follow_joins_leaves_and_moves_but_not_other_events(tmp_path):
    async def body():
        sp, calls = make(tmp_path, mesh=True, peers=[], meshNodeSelector="mesh=yes")
        yes = {"mesh": "yes"}
        sp.on_watch(Snapshot((labelled("node1", "192.168.50.11", yes), labelled("node2", "192.168.50.12", yes),
                              labelled("node3", "192.168.50.13")), "1"))
        await settle()
        assert calls == [["192.168.50.12"]]
        sp.on_watch(NodeEvent("MODIFIED", labelled("node3", "192.168.50.13", {"other": "x"})))  # still out
        sp.on_watch(NodeEvent("MODIFIED", labelled("node2", "192.168.50.12", {**yes, "other": "x"})))  # same member
        sp.on_watch(NodeEvent("ADDED", labelled("node5", "192.168.50.15")))  # out of scope
        sp.on_watch(NodeEvent("DELETED", labelled("node5", "192.168.50.15")))
        await settle()
        assert calls == [["192.168.50.12"]]
        sp.on_watch(NodeEvent("MODIFIED", labelled("node3", "192.168.50.13", yes)))  # joins
        await settle()
        assert calls[-1] == ["192.168.50.12", "192.168.50.13"]
        sp.on_watch(NodeEvent("MODIFIED", labelled("node2", "192.168.50.22", yes)))  # moves
        await settle()
        assert calls[-1] == ["192.168.50.13", "192.168.50.22"]
        sp.on_watch(NodeEvent("DELETED", labelled("node3", "192.168.50.13", yes)))  # leaves
        await settle()
        assert calls[-1] == ["192.168.50.22"] and len(calls) == 4
        sp.on_watch(NodeEvent("MODIFIED", labelled("node1", "192.168.50.11", {})))  # the own node leaves
        await settle()
        assert len(calls) == 4 and sp.node_errors["bgp:node1"] == (  # ExaBGP keeps what it runs
            "node node1: no BGP peer for this node (no global peer whose nodeSelector matches its labels, no usable "
            "podbgp.io/peers annotation, no other node in the mesh); BGP waits for one")
        sp.condition.close()
    asyncio.run(body())


def test_without_a_mesh_other_nodes_never_reconfigure(tmp_path):
    async def body():
        sp, calls = make(tmp_path)
        sp.on_watch(Snapshot((labelled("node1", "192.168.50.11"), labelled("node2", "192.168.50.12")), "1"))
        await settle()
        for i in range(3, 10):
            sp.on_watch(NodeEvent("ADDED", labelled(f"node{i}", f"192.168.50.1{i}", {"x": "y"})))
        await settle()
        assert calls == [["192.168.50.1"]] and sp.mesh.members == {}
        sp.condition.close()
    asyncio.run(body())


def test_own_node_changes_reconfigure_only_when_the_peers_differ(tmp_path):
    async def body():
        sp, calls = make(tmp_path, peers=[{"address": "192.168.50.1", "asn": 65000, "nodeSelector": "rack=r1"},
                                          {"address": "192.168.50.2", "asn": 65000, "nodeSelector": "rack=r2"}])
        sp.on_watch(Snapshot((labelled("node1", "192.168.50.11", {"rack": "r1"}),), "1"))
        await settle()
        sp.on_watch(NodeEvent("MODIFIED", labelled("node1", "192.168.50.11", {"rack": "r1", "x": "y"})))
        await settle()
        assert calls == [["192.168.50.1"]]
        sp.on_watch(NodeEvent("MODIFIED", labelled("node1", "192.168.50.11", {"rack": "r2"})))
        await settle()
        sp.on_watch(NodeEvent("MODIFIED", labelled("node1", "192.168.50.11", {"rack": "r2"}, {
            "podbgp.io/peers": "[{address: 192.168.60.1, asn: 65010}]"})))
        await settle()
        assert calls == [["192.168.50.1"], ["192.168.50.2"], ["192.168.50.2", "192.168.60.1"]]
        sp.condition.close()
    asyncio.run(body())


def test_problems_appear_in_status_and_leave_it_when_fixed(tmp_path):
    async def body():
        sp, calls = make(tmp_path, peers=[{"address": "192.168.50.1", "asn": 65000, "passwordKey": "tor-a"},
                                          {"address": "192.168.50.2", "asn": 65000}])
        bad = {"podbgp.io/peers": "{not: a list}", "podbgp.io/router-id": "x"}
        sp.on_watch(Snapshot((labelled("node1", "192.168.50.11", annotations=bad),), "1"))
        await settle()
        errors = status.status_doc(sp)["nodeErrors"]
        assert sorted(errors) == ["peer:192.168.50.1", "peers:node1", "router-id:node1"]
        assert calls == [["192.168.50.2"]]
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "tor-a").write_text(SECRET + "\n")
        sp.on_watch(NodeEvent("MODIFIED", labelled("node1", "192.168.50.11")))
        await settle()
        assert status.status_doc(sp)["nodeErrors"] == {}
        assert calls[-1] == ["192.168.50.1", "192.168.50.2"] and sp.bgp.configured[0].password == SECRET
        sp.condition.close()
    asyncio.run(body())


def test_a_secret_that_appears_later_is_picked_up_by_the_resync(tmp_path):
    async def body():
        sp, calls = make(tmp_path, peers=[{"address": "192.168.50.1", "asn": 65000, "passwordKey": "tor-a"}],
                         resyncInterval=0.05)
        task = asyncio.create_task(sp._resync_loop())
        sp.on_watch(Snapshot((labelled("node1", "192.168.50.11"),), "1"))
        await asyncio.sleep(0.2)
        assert calls == [] and "peer:192.168.50.1" in sp.node_errors and "bgp:node1" in sp.node_errors
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "tor-a").write_text(SECRET)
        await asyncio.sleep(0.2)
        assert calls == [["192.168.50.1"]] and "peer:192.168.50.1" not in sp.node_errors and not sp.node_errors
        task.cancel()
        sp.condition.close()
    asyncio.run(body())


def test_no_password_in_any_log_record_or_status_document(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    docs = []

    async def body():
        sp, _ = make(tmp_path, peers=[{"address": "192.168.50.1", "asn": 65000, "passwordKey": "tor-a"},
                                      {"address": "192.168.50.2", "asn": 65000, "passwordKey": "tor-b"}])
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "tor-a").write_text(SECRET + "\n")
        (tmp_path / "secrets" / "tor-b").write_text(SECRET + "x" * 80)  # too long: reported
        ann = {"podbgp.io/peers": f"[{{address: 192.168.60.1, asn: 65010, password: {SECRET}}}]"}
        sp.on_watch(Snapshot((labelled("node1", "192.168.50.11", annotations=ann),), "1"))
        await settle()
        assert sp.bgp.configured[0].password == SECRET
        docs.append(repr(status.status_doc(sp)))
        docs.append(repr(sp.node_errors))
        sp.condition.close()
    asyncio.run(body())
    text = "\n".join([r.getMessage() for r in caplog.records] + docs)
    assert "peer:192.168.50.2" in text and "peers:node1" in text
    assert SECRET not in text
