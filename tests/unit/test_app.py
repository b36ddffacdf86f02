"""The speaker's wiring with fakes at its three boundaries (Kubernetes, ExaBGP, kernel)."""
import asyncio
import ipaddress as ia
import json

from reconciler.kernel import ApplyResult
from reconciler.types import KernelRoute
from speaker import config as cfgmod
from speaker.app import Speaker
from speaker.listwatch import ApiDown, changes as _changes
from speaker.nodewatch import parse as _parse

N = ia.ip_network


class FakeKernel:
    def __init__(self):
        self.routes = {}
        self.applied = 0

    def snapshot(self):
        return list(self.routes.values()), [KernelRoute(N("0.0.0.0/0"), (ia.ip_address("192.168.50.1"),), 0, 4, 254)]

    def connected(self):
        return frozenset({N("192.168.50.0/24")})

    def apply(self, plan):
        self.applied += 1
        for r in plan.delete:
            self.routes.pop(r.prefix)
        for r in plan.replace:
            self.routes[r.prefix] = KernelRoute(r.prefix, r.gateways, r.metric, 80, 254)
        return ApplyResult(replaced=len(plan.replace), deleted=len(plan.delete))

    def routes_at(self, prefix):
        return [r for r in list(self.routes.values()) + self.snapshot()[1] if r.prefix == prefix]


class FakeExaBGP:
    instances = []

    def __init__(self, runtime_dir, exabgp, on_line, on_connect, on_exit):
        self.on_line, self.on_connect, self.on_exit = on_line, on_connect, on_exit
        self.sent = []
        self.config = None
        self.pid = None
        self.proc = None
        FakeExaBGP.instances.append(self)

    async def start(self, text):
        self.config = text

    def send(self, lines):
        self.sent.extend(lines)
        return True

    async def stop(self):
        pass


def Snapshot(raws, _rv):
    """What the watcher emits once a full list is taken (every Node new to it)."""
    return _changes(dict(_parse(r) for r in raws), (), synced=True)


def NodeEvent(kind, raw):
    if kind == "DELETED":
        return _changes({}, (raw["metadata"]["name"],))
    return _changes(dict([_parse(raw)]), ())


def node(name, cidrs, addrs):
    return {"metadata": {"name": name}, "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
            "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addrs]}}


NODES = [node("node1", ["10.42.1.0/24"], ["192.168.50.11"]), node("node2", ["10.42.2.0/24"], ["192.168.50.12"]),
         node("node3", ["10.42.3.0/24"], ["192.168.50.13"])]


def line(kind, **msg):
    base = {"exabgp": "5.0.0", "type": kind, "neighbor": {"address": {"local": "192.168.50.11", "peer": "192.168.50.1"},
                                                          "asn": {"local": 65001, "peer": 65000}, **msg}}
    return json.dumps(base)


def announce(prefix, nh):
    return line("update", message={"update": {"announce": {"ipv4 unicast": {nh: [{"nlri": prefix}]}}}})


EOR = line("update", message={"eor": {"afi": "ipv4", "safi": "unicast"}})


def opened(gr_time=120):
    caps = {"1": {"name": "multiprotocol", "families": ["ipv4/unicast"]}}
    if gr_time is not None:
        caps["64"] = {"name": "graceful restart", "time": gr_time, "address-family-flags": {"ipv4/unicast": []}}
    return line("open", direction="receive", open={"version": 4, "asn": 65000, "hold_time": 9,
                                                   "router_id": "192.168.50.1", "capabilities": caps})


UP = line("state", state="up")


def make(tmp_path, **kw):
    cfg = cfgmod.parse({"nodeName": "node1", "asn": 65001, "peers": [{"address": "192.168.50.1", "asn": 65000}],
                        "clusterCIDRs": ["10.42.0.0/16"], "serviceCIDRs": ["10.43.0.0/16"],
                        "runtimeDir": str(tmp_path), "convergenceTimeout": 30, **kw})
    kernel = FakeKernel()
    sp = Speaker(cfg, kernel, lambda emit: (lambda: None), env={}, bgp_factory=FakeExaBGP)
    return sp, kernel


DOWN = line("state", state="down", reason="closing connection")


async def established(sp, *routes, gr=120):
    """The Node list, then a session (advertising graceful restart `gr`) that sends routes and EoR."""
    sp.on_watch(Snapshot(tuple(NODES), "10"))
    sp.bgp.on_line(opened(gr))
    sp.bgp.on_line(UP)
    for prefix, nh in routes:
        sp.bgp.on_line(announce(prefix, nh))
    sp.bgp.on_line(EOR)
    await settle()


N2 = ("10.42.2.0/24", "192.168.50.12")
N3 = ("10.42.3.0/24", "192.168.50.13")


async def settle():
    await asyncio.sleep(0.05)


def run(coro):
    asyncio.run(coro)


def test_nothing_before_the_first_list_then_announce_before_eor(tmp_path):
    async def body():
        sp, kernel = make(tmp_path)
        sp.on_watch(NodeEvent("ADDED", NODES[0]))
        await settle()
        assert sp.bgp.exabgp is None and kernel.applied == 0
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        await settle()
        exa = sp.bgp.exabgp
        assert "neighbor 192.168.50.1" in exa.config and "local-address 192.168.50.11" in exa.config
        sp.bgp.on_line(line("state", state="up"))
        assert exa.sent == ["neighbor 192.168.50.1 announce route 10.42.1.0/24 next-hop self",
                            "neighbor 192.168.50.1 announce eor ipv4 unicast"]
    run(body())


def test_learned_routes_installed_only_when_vouched_and_pruned_after_convergence(tmp_path):
    async def body():
        sp, kernel = make(tmp_path)
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        sp.bgp.on_line(line("state", state="up"))
        for prefix, nh in [("10.42.2.0/24", "192.168.50.12"), ("10.42.3.0/24", "192.168.50.13"),
                           ("10.42.1.0/24", "192.168.50.11"), ("0.0.0.0/0", "192.168.50.1"),
                           ("10.42.2.0/24", "192.168.50.12"), ("10.42.99.0/24", "192.168.50.12")]:
            sp.bgp.on_line(announce(prefix, nh))
        await settle()
        assert sorted(map(str, kernel.routes)) == ["10.42.2.0/24", "10.42.3.0/24"]
        assert {r.value: n for r, n in sp.reconciler.counts().rejected_by_reason} == {
            "own-cidr": 1, "no-such-node": 1}
        # the default route is refused for good: counted for its peer, never in the RIB
        assert sp.bgp.peer("192.168.50.1").refused == (("default-route", 1),)
        assert not list(sp.bgp.paths_for(ia.ip_network("0.0.0.0/0")))
        sp.on_watch(NodeEvent("DELETED", NODES[2]))
        await settle()
        assert "10.42.3.0/24" in map(str, kernel.routes), "pruned before convergence"
        sp.bgp.on_line(EOR)
        await settle()
        assert sp.bgp.converged and sorted(map(str, kernel.routes)) == ["10.42.2.0/24"]
        sp.on_watch(NodeEvent("ADDED", NODES[2]))
        await settle()
        assert sorted(map(str, kernel.routes)) == ["10.42.2.0/24", "10.42.3.0/24"]
    run(body())


def test_api_outage_changes_no_route(tmp_path):
    async def body():
        sp, kernel = make(tmp_path)
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        sp.bgp.on_line(line("state", state="up"))
        sp.bgp.on_line(announce("10.42.2.0/24", "192.168.50.12"))
        sp.bgp.on_line(EOR)
        await settle()
        before = dict(kernel.routes)
        sp.on_watch(ApiDown("connection refused"))
        await settle()
        assert kernel.routes == before and not sp.api_up
    run(body())


def test_graceful_restart_keeps_paths_stale_then_sweeps_unrefreshed(tmp_path):
    async def body():
        sp, kernel = make(tmp_path)
        await established(sp, N2, N3, gr=120)
        sp.bgp.on_line(DOWN)
        await settle()
        assert sorted(map(str, kernel.routes)) == ["10.42.2.0/24", "10.42.3.0/24"]
        assert all(p.stale for p in sp.bgp.rib.paths())
        sp.bgp.on_line(line("state", state="up"))
        sp.bgp.on_line(announce("10.42.2.0/24", "192.168.50.12"))
        sp.bgp.on_line(EOR)
        await settle()
        assert sorted(map(str, kernel.routes)) == ["10.42.2.0/24"]
    run(body())


def test_session_down_without_graceful_restart_drops_paths(tmp_path):
    async def body():
        sp, kernel = make(tmp_path, gracefulRestart=0, convergenceTimeout=0.01)
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        sp.bgp.on_line(line("state", state="up"))
        assert sp.bgp.exabgp.sent == ["neighbor 192.168.50.1 announce route 10.42.1.0/24 next-hop self"]
        sp.bgp.on_line(announce("10.42.2.0/24", "192.168.50.12"))
        await settle()
        assert list(map(str, kernel.routes)) == ["10.42.2.0/24"]
        sp.bgp.on_line(DOWN)
        await settle()
        assert kernel.routes == {}
    run(body())


def test_bad_input_is_counted_not_fatal(tmp_path):
    async def body():
        sp, kernel = make(tmp_path)
        sp.on_watch(Snapshot(tuple(NODES) + ({"metadata": {"name": "bad"}, "spec": {"podCIDRs": ["x"]}},), "10"))
        sp.bgp.on_line('{"truncated": ')
        sp.bgp.on_line(line("surprise"))
        await settle()
        assert sp.counters["decode_errors"] == 1 and sp.counters["node_errors"] == 1
        assert "bad" in sp.node_errors and sp.bgp.exabgp is not None
    run(body())


def test_invalid_own_podcidr_refuses_to_start(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        sp.on_watch(Snapshot((node("node1", ["10.99.1.0/24"], ["192.168.50.11"]),), "10"))
        assert sp.exit_code == 2 and sp._stop.is_set() and sp.bgp.exabgp is None
    run(body())


def test_failed_reconnects_after_a_drop_keep_the_stale_paths(tmp_path):
    async def body():
        sp, kernel = make(tmp_path)
        await established(sp, N2, gr=120)
        sp.bgp.on_line(DOWN)
        for _ in range(3):  # the ToR is still away: connection attempts fail
            sp.bgp.on_line(line("state", state="connected"))
            sp.bgp.on_line(DOWN)
        await settle()
        assert list(map(str, kernel.routes)) == ["10.42.2.0/24"] and sp.bgp.rib.count() == 1
    run(body())


def test_stale_paths_last_the_restart_time_the_peer_advertised(tmp_path):
    async def body():
        sp, kernel = make(tmp_path)
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        sp.bgp.on_line(opened(1))  # the peer asks for a 1 s restart time
        sp.bgp.on_line(UP)
        sp.bgp.on_line(announce("10.42.2.0/24", "192.168.50.12"))
        sp.bgp.on_line(EOR)
        await settle()
        sp.bgp.on_line(DOWN)
        await settle()
        assert list(map(str, kernel.routes)) == ["10.42.2.0/24"]
        await asyncio.sleep(1.2)
        assert kernel.routes == {} and sp.bgp.rib.count() == 0
    run(body())


def test_peer_without_graceful_restart_loses_its_paths_at_once(tmp_path):
    async def body():
        sp, kernel = make(tmp_path)
        await established(sp, N2, gr=None)
        sp.bgp.on_line(DOWN)
        await settle()
        assert kernel.routes == {}
    run(body())


def test_status_and_metrics_report_peers_routes_rejections_and_errors(tmp_path):
    from speaker import endpoint, status

    async def body():
        sp, kernel = make(tmp_path)
        await established(sp, N2, ("0.0.0.0/0", "192.168.50.1"), ("10.42.3.0/24", "192.168.50.12"))
        sp.on_watch(NodeEvent("ADDED", {"metadata": {"name": "bad"}, "spec": {"podCIDRs": ["x"]}}))
        sp.bgp.on_line("{ truncated")
        await settle()
        doc = status.status_doc(sp)
        assert doc["peers"][0]["state"] == "up" and doc["peers"][0]["endOfRib"] == ["ipv4"]
        assert doc["announced"] == ["10.42.1.0/24"] and doc["converged"]
        assert [r["prefix"] for r in doc["installed"]] == ["10.42.2.0/24"]
        assert doc["rejectedByReason"] == {"next-hop-mismatch": 1}  # the RIB's; a default route is not stored:
        assert doc["refusedNotStored"] == {"default-route": 1} and doc["peers"][0]["refused"] == {"default-route": 1}
        assert "bad" in doc["nodeErrors"]
        text = endpoint.respond(sp, "/metrics")[2].decode()  # prometheus_client: labels sorted, values as floats
        assert 'podbgp_peer_up{asn="65000",peer="192.168.50.1"} 1.0' in text
        assert 'podbgp_rejected_routes{reason="next-hop-mismatch"} 1.0' in text
        assert 'podbgp_peer_refused_paths{peer="192.168.50.1",reason="default-route"} 1.0' in text
        assert 'podbgp_peer_prefixes{family="ipv4",peer="192.168.50.1"} 3.0' in text  # 2 held + the default
        assert "podbgp_installed_routes 1.0" in text
        assert 'podbgp_events_total{event="decode_errors"} 1.0' in text
        assert 'podbgp_events_total{event="node_errors"} 1.0' in text
        assert endpoint.respond(sp, "/readyz")[0] == "200 OK"
        table = status.render_table(doc)
        assert "10.42.3.0/24 via 192.168.50.12 from 192.168.50.1: next-hop-mismatch" in table
    run(body())
