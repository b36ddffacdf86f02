"""The speaker with Services: nothing for them until both lists are complete (End-of-RIB waits
too), then deltas only; status and explain show each Service prefix and why."""
import asyncio

from speaker import explain, status
from speaker.listwatch import changes
from speaker.services import parse_service, slice_parser
from tests.unit.test_app import NODES, UP, Snapshot, make, opened, settle

SERVICES = {"loadBalancer": {"pools": [{"name": "default", "cidrs": ["203.0.113.0/24"], "communities": ["65000:7"]}]},
            "externalIPs": {"allowedCIDRs": ["198.51.100.0/24"]}}
PEER = "neighbor 192.168.50.1"

def svc(name, ip, etp="Local"):
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": etp, "clusterIPs": ["10.43.0.10"],
                     "ports": [{"port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}

def eps(service, name, *on):
    """A slice of one ready endpoint per node named in `on` ("node1-t": terminating on node1)."""
    endpoints = []
    for n in on:
        node, _, t = n.partition("-")
        endpoints.append({"addresses": ["10.42.9.9"], "nodeName": node,
                          "conditions": {"ready": not t, "serving": True, "terminating": bool(t)}})
    return {"metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": endpoints}

def services_event(*objs, synced=False, deleted=()):
    return changes(dict(parse_service(o) for o in objs), deleted, synced, "services")

def slices_event(*objs, synced=False, deleted=()):
    parse = slice_parser("node1")
    return changes(dict(parse(o) for o in objs), deleted, synced, "endpointslices")

def service_cmds(exa):
    return [c for c in exa.sent if "203.0.113." in c or "198.51.100." in c]

def test_service_routes_wait_for_both_lists_then_go_as_deltas(tmp_path):
    async def body():
        sp, _ = make(tmp_path, services=SERVICES)
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        exa = sp.bgp.exabgp
        sp.bgp.on_line(opened())
        sp.bgp.on_line(UP)
        await settle()
        # own PodCIDR goes out at once; End-of-RIB waits for the Services
        assert exa.sent == [f"{PEER} announce route 10.42.1.0/24 next-hop self"]
        sp.on_watch(services_event(svc("web", "203.0.113.5"), svc("far", "203.0.113.6"), synced=True))
        await settle()
        assert exa.sent == [f"{PEER} announce route 10.42.1.0/24 next-hop self"] and not sp.services_live
        sp.on_watch(slices_event(eps("web", "web-1", "node1", "node2"), eps("far", "far-1", "node2"), synced=True))
        await settle()
        assert sp.services_live
        # web has a ready endpoint here: announced with the pool's community; far has none here
        assert service_cmds(exa) == [f"{PEER} announce route 203.0.113.5/32 next-hop self community [65000:7]"]
        assert exa.sent[-1] == f"{PEER} announce eor ipv4 unicast"
        n = len(exa.sent)
        # the local endpoint starts terminating: withdrawn at once, nothing else sent
        sp.on_watch(slices_event(eps("web", "web-1", "node1-t", "node2")))
        await settle()
        assert exa.sent[n:] == [f"{PEER} withdraw route 203.0.113.5/32"]
        # a remote endpoint's change is no change for this node
        sp.on_watch(slices_event(eps("far", "far-1", "node2", "node3")))
        await settle()
        assert len(exa.sent) == n + 1
        # eTP=Cluster: from every node while one endpoint anywhere is ready; deleted: withdrawn
        sp.on_watch(services_event(svc("far", "203.0.113.6", etp="Cluster")))
        await settle()
        assert exa.sent[-1] == f"{PEER} announce route 203.0.113.6/32 next-hop self community [65000:7]"
        sp.on_watch(services_event(deleted=("default/far",)))
        await settle()
        assert exa.sent[-1] == f"{PEER} withdraw route 203.0.113.6/32"
        doc = status.status_doc(sp)
        routes = {r["prefix"]: r for r in doc["serviceRoutes"]}
        assert routes["203.0.113.5/32"]["announced"] is False and routes["203.0.113.5/32"]["services"] == ["default/web"]
        assert doc["services"]["live"] and doc["services"]["announced"] == 0
        assert [a for a in doc["announced"]] == ["10.42.1.0/24"]
        ex = explain.explain(sp, explain.parse_prefix("203.0.113.5"))
        assert ex["verdict"] == "service" and "default/web" in ex["summary"] and "not announced" in ex["summary"]
    asyncio.run(body())

def test_a_node_excluded_from_load_balancers_announces_no_service(tmp_path):
    async def body():
        sp, _ = make(tmp_path, services=SERVICES)
        me = dict(NODES[0], metadata={"name": "node1",
                                      "labels": {"node.kubernetes.io/exclude-from-external-load-balancers": ""}})
        sp.on_watch(Snapshot((me, *NODES[1:]), "10"))
        sp.bgp.on_line(opened())
        sp.bgp.on_line(UP)
        sp.on_watch(services_event(svc("web", "203.0.113.5", etp="Cluster"), synced=True))
        sp.on_watch(slices_event(eps("web", "web-1", "node2"), synced=True))
        await settle()
        assert service_cmds(sp.bgp.exabgp) == []
        # the label removed: announced, as a delta
        sp.on_watch(Snapshot(tuple(NODES), "11"))
        await settle()
        assert service_cmds(sp.bgp.exabgp) == [f"{PEER} announce route 203.0.113.5/32 next-hop self community [65000:7]"]
    asyncio.run(body())

def test_without_a_services_block_nothing_is_watched_and_eor_is_not_held(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        assert sp.services is None and status.status_doc(sp)["services"] is None
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        sp.bgp.on_line(opened())
        sp.bgp.on_line(UP)
        await settle()
        assert sp.bgp.exabgp.sent[-1] == f"{PEER} announce eor ipv4 unicast"
    asyncio.run(body())


class FakeAllocator:
    def __init__(self):
        self.started = self.closed = 0
        self.seen = []

    def start(self):
        self.started += 1

    def close(self):
        self.closed += 1

    def on_services(self, values, deleted=(), synced=False):
        self.seen.append((tuple(v.key for v in values), tuple(deleted), synced))

    def status(self):
        return {"leader": False}


def allocating(tmp_path, selector, labels):
    from speaker import app, config as cfgmod
    from tests.unit.test_app import FakeExaBGP, FakeKernel
    services = {**SERVICES, "loadBalancer": {**SERVICES["loadBalancer"], "allocate": True,
                                             "allocatorNodeSelector": selector}}
    cfg = cfgmod.parse({"nodeName": "node1", "asn": 65001, "peers": [{"address": "192.168.50.1", "asn": 65000}],
                        "clusterCIDRs": ["10.42.0.0/16"], "serviceCIDRs": ["10.43.0.0/16"], "runtimeDir": str(tmp_path),
                        "services": services})
    alloc = FakeAllocator()
    sp = app.Speaker(cfg, FakeKernel(), lambda emit: (lambda: None), env={}, bgp_factory=FakeExaBGP, allocator=alloc)
    me = dict(NODES[0], metadata={"name": "node1", "labels": labels})
    return sp, alloc, me


def test_only_nodes_in_the_allocator_selector_stand_for_election(tmp_path):
    async def body():
        sp, alloc, me = allocating(tmp_path, "podbgp.io/allocator=true", {"rack": "r1"})
        sp.on_watch(Snapshot((me, *NODES[1:]), "10"))
        sp.on_watch(services_event(svc("web", "203.0.113.5"), synced=True))
        await settle()
        assert sp.candidate is False and alloc.started == 0
        assert alloc.seen == [(("default/web",), (), True)]  # fed all the same: cheap, and ready if elected later
        sp.on_watch(Snapshot((dict(me, metadata={"name": "node1", "labels": {"podbgp.io/allocator": "true"}}),
                              *NODES[1:]), "11"))
        await settle()
        assert alloc.started == 0 and "allocator:candidate" in sp.node_errors  # takes effect at the next start

        sp2, alloc2, me2 = allocating(tmp_path, "podbgp.io/allocator=true", {"podbgp.io/allocator": "true"})
        sp2.on_watch(Snapshot((me2, *NODES[1:]), "10"))
        await settle()
        assert sp2.candidate is True and alloc2.started == 1
    asyncio.run(body())
