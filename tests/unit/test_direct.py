"""Direct mode: the routes come from the Node objects of the nodes on a connected subnet, through
the same policy, ownership and reconciler as BGP's paths (speaker.direct, its wiring in speaker.app)."""
import asyncio
import ipaddress as ia

import pytest

from reconciler.monitor import KernelEvents
from reconciler.types import KernelRoute
from speaker import config as cfgmod
from speaker import endpoint, status
from speaker.app import Speaker
from speaker.cni import ConflistWriter
from speaker.direct import DirectSource, node_paths
from speaker.nodes import NodeInfo, NodeView
from tests.unit.test_app import FakeKernel, NodeEvent, Snapshot, node, settle
from tests.unit.test_own_node import RecordingClient, until

N, A = ia.ip_network, ia.ip_address
LAN = frozenset({N("192.168.50.0/24"), N("fd00:50::/64")})


def info(name, cidrs, addrs):
    return NodeInfo(name, tuple(map(N, cidrs)), tuple(map(A, addrs)))


# ---- the pure core ----------------------------------------------------------------------------

@pytest.mark.parametrize("cidrs, addrs, routed, reason", [
    (["10.42.2.0/24", "fd00:42:0:2::/64"], ["192.168.50.12", "fd00:50::12"],
     {"10.42.2.0/24": "192.168.50.12", "fd00:42:0:2::/64": "fd00:50::12"}, None),
    (["10.42.9.0/24"], ["10.99.0.5"], {},
     "InternalIP 10.99.0.5 is on no connected subnet of this node; not routed in direct mode"),
    (["10.42.9.0/24", "fd00:42:0:9::/64"], ["10.99.0.5", "fd99::5"], {},
     "InternalIPs 10.99.0.5, fd99::5 are on no connected subnet of this node; not routed in direct mode"),
    (["10.42.2.0/24", "fd00:42:0:2::/64"], ["192.168.50.12", "fd99::12"], {"10.42.2.0/24": "192.168.50.12"},
     "InternalIP fd99::12 is on no connected subnet of this node; fd00:42:0:2::/64 not routed in direct mode"),
    (["10.42.2.0/24"], ["10.99.0.5", "192.168.50.12"], {"10.42.2.0/24": "192.168.50.12"}, None),  # the on-link one
    (["fd00:42:0:2::/64"], ["192.168.50.12"], {}, None),  # no IPv6 InternalIP: NodeView's unusable, not off-link
    ([], ["10.99.0.5"], {}, None),  # nothing to route, nothing to report
])
def test_node_paths_on_link_and_off_link(cidrs, addrs, routed, reason):
    for _ in range(2):  # pure: the same answer twice
        paths, why = node_paths(info("n2", cidrs, addrs), LAN)
        assert {str(p): str(x.next_hop) for p, x in paths.items()} == routed
        assert all(x.peer == "n2" and x.prefix == p for p, x in paths.items())
        assert why == reason


def source(me="n1", connected=LAN):
    view = NodeView()
    reports = []
    src = DirectSource(me, view.nodes, connected, on_offlink=lambda n, r: reports.append((n, r)))
    return view, src, reports


def put(view, src, nodeinfo):
    return view.upsert(nodeinfo) | src.node_changed(nodeinfo.name)


def test_own_cidrs_are_never_paths_and_a_node_change_touches_only_its_prefixes():
    view, src, _ = source()
    put(view, src, info("n1", ["10.42.1.0/24"], ["192.168.50.11"]))
    assert src.rib.count() == 0
    assert put(view, src, info("n2", ["10.42.2.0/24"], ["192.168.50.12"])) == {N("10.42.2.0/24")}
    assert put(view, src, info("n3", ["10.42.3.0/24"], ["192.168.50.13"])) == {N("10.42.3.0/24")}
    assert src.node_changed("n2") == set()  # unchanged: nothing to mark
    # n2's CIDR moves: its old and new CIDRs, nothing of n3's
    assert put(view, src, info("n2", ["10.42.4.0/24"], ["192.168.50.12"])) == {N("10.42.2.0/24"), N("10.42.4.0/24")}
    assert sorted((str(p.prefix), p.peer) for p in src.rib.paths()) == [("10.42.3.0/24", "n3"), ("10.42.4.0/24", "n2")]


def test_deleted_node_loses_its_paths_and_its_off_link_report():
    view, src, reports = source()
    put(view, src, info("n2", ["10.42.2.0/24"], ["192.168.50.12"]))
    put(view, src, info("ghost", ["10.42.9.0/24"], ["10.99.0.5"]))
    assert set(src.offlink) == {"ghost"} and reports[-1][0] == "ghost"
    assert view.delete("n2") | src.node_changed("n2") == {N("10.42.2.0/24")}
    view.delete("ghost")
    assert src.node_changed("ghost") == set() and src.offlink == {} and reports[-1] == ("ghost", None)
    assert src.rib.count() == 0 and not list(src.rib.prefixes())


def test_internal_ip_change_moves_the_next_hop_and_can_take_a_node_off_link():
    view, src, reports = source()
    put(view, src, info("n2", ["10.42.2.0/24"], ["192.168.50.12"]))
    assert put(view, src, info("n2", ["10.42.2.0/24"], ["192.168.50.22"])) == {N("10.42.2.0/24")}
    assert [str(p.next_hop) for p in src.rib.paths_for(N("10.42.2.0/24"))] == ["192.168.50.22"]
    assert N("10.42.2.0/24") in put(view, src, info("n2", ["10.42.2.0/24"], ["10.99.0.12"]))
    assert list(src.rib.paths_for(N("10.42.2.0/24"))) == [] and "n2" in src.offlink
    assert src.counters["nodes_offlink"] == 1 and reports == [("n2", src.offlink["n2"])]


def test_a_connected_subnet_change_flips_on_link_ness_both_ways():
    view, src, reports = source(connected={N("192.168.50.0/24")})
    put(view, src, info("n2", ["10.42.2.0/24"], ["192.168.50.12"]))
    put(view, src, info("n3", ["10.42.3.0/24"], ["10.99.0.13"]))
    assert set(src.offlink) == {"n3"}
    assert src.set_connected({N("192.168.50.0/24")}) == set()  # unchanged: nothing re-evaluated
    assert src.set_connected({N("192.168.50.0/24"), N("10.99.0.0/24")}) == {N("10.42.3.0/24")}
    assert src.offlink == {} and reports[-1] == ("n3", None)
    assert src.set_connected({N("10.99.0.0/24")}) == {N("10.42.2.0/24")}
    assert set(src.offlink) == {"n2"}
    assert [p.peer for p in src.rib.paths()] == ["n3"]


# ---- the speaker in direct mode -----------------------------------------------------------------

class Kernel(FakeKernel):
    def __init__(self, connected=LAN):
        super().__init__()
        self.nets = frozenset(connected)

    def connected(self):
        return self.nets


class Monitor:
    def __init__(self):
        self.events = KernelEvents()

    def fileno(self):
        return -1

    def drain(self):
        out, self.events = self.events, KernelEvents()
        return out


def make(tmp_path, kernel=None, client=False, **kw):
    cfg = cfgmod.parse({"nodeName": "node1", "mode": "direct", "clusterCIDRs": ["10.42.0.0/16", "fd00:42::/48"],
                        "serviceCIDRs": ["10.43.0.0/16"], "runtimeDir": str(tmp_path),
                        "cni": {"confPath": str(tmp_path / "net.d/10-podbgp.conflist")}, **kw})
    kernel = kernel or Kernel()
    ref = []
    fake = RecordingClient(ref) if client else None

    def no_bgp(*_a, **_k):
        raise AssertionError("direct mode started ExaBGP")

    sp = Speaker(cfg, kernel, lambda emit: (lambda: None), env={}, bgp_factory=no_bgp, monitor=Monitor(),
                 cni=ConflistWriter(cfg.cni), node_client=fake)
    ref.append(sp)
    return sp, kernel, fake


NODES = [node("node1", ["10.42.1.0/24", "fd00:42:0:1::/64"], ["192.168.50.11", "fd00:50::11"]),
         node("node2", ["10.42.2.0/24", "fd00:42:0:2::/64"], ["192.168.50.12", "fd00:50::12"]),
         node("node3", ["10.42.3.0/24", "fd00:42:0:3::/64"], ["192.168.50.13", "fd00:50::13"])]
ROUTES = {"10.42.2.0/24": ("192.168.50.12",), "fd00:42:0:2::/64": ("fd00:50::12",),
          "10.42.3.0/24": ("192.168.50.13",), "fd00:42:0:3::/64": ("fd00:50::13",)}


def table(kernel):
    return {str(p): tuple(map(str, r.gateways)) for p, r in kernel.routes.items()}


def test_config_without_peers_or_asn_is_direct():
    cfg = cfgmod.parse({"nodeName": "node1", "mode": "direct", "clusterCIDRs": ["10.42.0.0/16"]})
    assert cfg.mode == "direct" and cfg.peers == () and cfg.asn is None


def test_routes_from_the_node_list_without_bgp_then_conflist_and_condition(tmp_path):
    async def body():
        sp, kernel, fake = make(tmp_path, client=True)
        sp.on_watch(NodeEvent("ADDED", NODES[1]))
        await settle()
        assert kernel.applied == 0 and not fake.calls  # nothing before the first full list
        assert endpoint.respond(sp, "/readyz")[0].startswith("503")
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        await settle()
        assert table(kernel) == ROUTES and sp.source.converged and sp.reconciler.converged
        assert sp.source.pid is None and sp.bgp is None and sp.source.peers() == ()
        await until(lambda: fake.calls)
        assert fake.calls[0]["conflist"] and fake.calls[0]["type"] == "NetworkUnavailable"
        applied = kernel.applied
        sp.on_watch(Snapshot(tuple(NODES), "11"))  # the same list again: nothing to do
        await settle()
        assert kernel.applied == applied and table(kernel) == ROUTES
        doc = status.status_doc(sp)
        assert doc["mode"] == "direct" and doc["converged"] and doc["peers"] == [] and doc["exabgpPid"] is None
        assert endpoint.respond(sp, "/readyz")[0] == "200 OK"  # no session to wait for
        assert {x["prefix"]: (x["peer"], x["nextHop"]) for x in doc["learned"]} == {
            p: ("node2" if gw[0].endswith("12") else "node3", gw[0]) for p, gw in ROUTES.items()}
        assert {r["prefix"] for r in doc["installed"]} == set(ROUTES)
        text = endpoint.respond(sp, "/metrics")[2].decode()
        assert "podbgp_converged 1.0" in text and "podbgp_installed_routes 4.0" in text
    asyncio.run(body())


def test_node_deleted_route_gone_recreated_back(tmp_path):
    async def body():
        sp, kernel, _ = make(tmp_path)
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        await settle()
        sp.on_watch(NodeEvent("DELETED", NODES[2]))
        assert sp.reconciler.dirty == {N("10.42.3.0/24"), N("fd00:42:0:3::/64")}  # only node3's prefixes
        await settle()
        assert table(kernel) == {p: g for p, g in ROUTES.items() if not g[0].endswith("13")}
        sp.on_watch(NodeEvent("ADDED", NODES[2]))
        await settle()
        assert table(kernel) == ROUTES
    asyncio.run(body())


def test_a_restart_prunes_routes_of_nodes_gone_meanwhile(tmp_path):
    async def body():
        kernel = Kernel()
        gone = N("10.42.7.0/24")
        kernel.routes[gone] = KernelRoute(gone, (A("192.168.50.17"),), 20, 80, 254)
        sp, kernel, _ = make(tmp_path, kernel=kernel)
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        await settle()
        assert table(kernel) == ROUTES
    asyncio.run(body())


def test_internal_ip_change_moves_the_route_and_marks_only_that_node(tmp_path):
    async def body():
        sp, kernel, _ = make(tmp_path)
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        await settle()
        sp.on_watch(NodeEvent("MODIFIED", node("node2", ["10.42.2.0/24", "fd00:42:0:2::/64"],
                                                ["192.168.50.22", "fd00:50::12"])))
        assert sp.reconciler.dirty == {N("10.42.2.0/24")}
        await settle()
        assert table(kernel)["10.42.2.0/24"] == ("192.168.50.22",)
        assert table(kernel)["10.42.3.0/24"] == ("192.168.50.13",)
    asyncio.run(body())


def test_own_cidr_never_installed_and_disputed_refused(tmp_path):
    async def body():
        sp, kernel, _ = make(tmp_path)
        rogue = node("rogue", ["10.42.1.0/25"], ["192.168.50.66"])  # inside node1's own CIDR
        twin = node("twin", ["10.42.3.0/24"], ["192.168.50.33"])  # claims node3's CIDR too
        sp.on_watch(Snapshot(tuple(NODES) + (rogue, twin), "10"))
        await settle()
        assert table(kernel) == {p: g for p, g in ROUTES.items() if p != "10.42.3.0/24"}
        reasons = {(str(r.prefix), r.peer): r.reason.value for r in sp.reconciler.rejections()}
        assert reasons == {("10.42.1.0/25", "rogue"): "own-cidr", ("10.42.3.0/24", "node3"): "disputed-cidr",
                           ("10.42.3.0/24", "twin"): "disputed-cidr"}
        assert "disputed:10.42.3.0/24" in status.status_doc(sp)["nodeErrors"]
    asyncio.run(body())


def test_off_link_node_reported_counted_never_routed_and_an_address_brings_it_on_link(tmp_path):
    async def body():
        sp, kernel, _ = make(tmp_path)
        ghost = node("ghost", ["10.42.9.0/24"], ["10.99.0.5"])
        sp.on_watch(Snapshot(tuple(NODES) + (ghost,), "10"))
        await settle()
        assert table(kernel) == ROUTES
        errors = status.status_doc(sp)["nodeErrors"]
        assert errors == {"offlink:ghost": "InternalIP 10.99.0.5 is on no connected subnet of this node; "
                                           "not routed in direct mode"}
        assert sp.counters["nodes_offlink"] == 1
        kernel.nets = LAN | {N("10.99.0.0/24")}  # an address on 10.99.0.0/24 appears
        sp.monitor.events = KernelEvents(full="address")
        sp._on_kernel()
        await settle()
        assert table(kernel)["10.42.9.0/24"] == ("10.99.0.5",) and status.status_doc(sp)["nodeErrors"] == {}
        kernel.nets = LAN  # and goes again
        sp.monitor.events = KernelEvents(full="address")
        sp._on_kernel()
        await settle()
        assert table(kernel) == ROUTES and "offlink:ghost" in sp.node_errors
        sp.on_watch(NodeEvent("DELETED", ghost))
        assert "offlink:ghost" not in sp.node_errors
    asyncio.run(body())


def test_invalid_own_podcidr_refuses_to_start_in_direct_mode_too(tmp_path):
    async def body():
        sp, kernel, _ = make(tmp_path)
        sp.on_watch(Snapshot((node("node1", ["10.99.1.0/24"], ["192.168.50.11"]),), "10"))
        assert sp.exit_code == 2 and sp._stop.is_set()
    asyncio.run(body())


def test_invalid_own_podcidr_later_keeps_serving(tmp_path):
    async def body():
        sp, kernel, _ = make(tmp_path)
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        await settle()
        sp.on_watch(NodeEvent("MODIFIED", node("node1", ["10.99.1.0/24"], ["192.168.50.11"])))
        await settle()
        assert sp.exit_code == 0 and not sp._stop.is_set() and table(kernel) == ROUTES
    asyncio.run(body())
