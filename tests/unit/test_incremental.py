"""Property: after any sequence of Node, BGP and kernel events, the incremental state equals a
full pass computed from scratch (ownership of every Node, policy over every path, a plan over
the whole table), and the kernel holds what that full pass would leave there."""
import ipaddress as ia

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.rib import Rib
from bgp.types import Path, UpdateEvent
from reconciler.kernel import ApplyResult
from reconciler.loop import Reconciler
from reconciler.plan import plan
from reconciler.policy import Policy, check
from reconciler.types import KernelRoute, Owner, Rejection, Route, ident_of
from speaker.nodes import NodeInfo, NodeView

N, A = ia.ip_network, ia.ip_address
CLUSTER = (N("10.42.0.0/16"), N("fd00:42::/48"))
SERVICE = (N("10.43.0.0/16"),)
METRIC = 20
CIDRS = [N(c) for c in ("10.42.1.0/24", "10.42.2.0/24", "10.42.3.0/24", "10.42.1.0/25", "10.42.0.0/23",
                        "10.42.4.0/24", "fd00:42:0:1::/64", "fd00:42:0:2::/64")]
OTHER = [N(c) for c in ("0.0.0.0/0", "10.43.1.0/24", "172.16.0.0/24", "10.42.9.0/24", "10.42.2.128/25")]
ADDRS = [A(a) for a in ("192.168.50.11", "192.168.50.12", "192.168.50.13", "fd00:50::12", "fd00:50::13",
                        "fe80::1")]
NAMES = ["n1", "n2", "n3", "n4"]
PEERS = ["192.168.50.1", "fd00:50::1"]


# ---- the from-scratch oracles: each verdict computed over everything at once -----------------

def ownership(nodes):
    """(owners {CIDR: (node, addresses)}, disputed {CIDR: nodes}, unusable {node: reason}) of
    these Nodes: overlapping claims trust neither side; a claim without an InternalIP of its
    family is unusable."""
    claims = sorted(((c, n) for n in nodes for c in n.pod_cidrs),
                    key=lambda cn: (cn[0].version, int(cn[0].network_address), cn[0].prefixlen, cn[1].name))
    disputed = {}
    for i, (c, n) in enumerate(claims):
        for d, m in claims[:i]:
            if d.version == c.version and d.overlaps(c) and m.name != n.name:
                disputed.setdefault(d, set()).update({m.name, n.name})
                disputed.setdefault(c, set()).update({m.name, n.name})
    owners, unusable = {}, {}
    for c, n in claims:
        if c in disputed:
            continue
        if n.address(c.version) is None:
            unusable[n.name] = f"node {n.name}: no InternalIP of IPv{c.version} for podCIDR {c}"
            continue
        owners[c] = (n.name, frozenset(a for a in n.addresses if a.version == c.version))
    return owners, {c: tuple(sorted(v)) for c, v in disputed.items()}, unusable


def desired_routes(policy, paths):
    """Kernel routes wanted for all these paths (ECMP where several next hops pass), and the rejections."""
    gateways, rejected = {}, []
    for path in paths:
        reason = check(policy, path)
        if reason is None:
            gateways.setdefault(path.prefix, set()).add(path.next_hop)
        else:
            rejected.append(Rejection(path.prefix, path.peer, path.next_hop, reason))
    return {p: Route(p, tuple(sorted(g)), policy.metric) for p, g in gateways.items()}, rejected


class FakeKernel:
    def __init__(self):
        self.ours: dict[tuple, KernelRoute] = {}  # by ident
        self.foreign: dict[tuple, KernelRoute] = {}
        self.connected_nets = frozenset({N("192.168.50.0/24")})

    def snapshot(self):
        return list(self.ours.values()), list(self.foreign.values())

    def connected(self):
        return self.connected_nets

    def apply(self, p):
        for r in p.replace:
            assert r.ident not in self.foreign, f"replaced the foreign route on {r.prefix}"
            self.ours[r.ident] = KernelRoute(r.prefix, r.gateways, r.metric, 80, 254)
        for r in p.delete:
            self.ours.pop(r.ident, None)
        return ApplyResult(replaced=len(p.replace), deleted=len(p.delete))

    def routes_at(self, prefix):
        return [r for r in list(self.ours.values()) + list(self.foreign.values()) if r.prefix == prefix]


class World:
    def __init__(self):
        self.kernel = FakeKernel()
        self.view = NodeView()
        self.rib = Rib()
        self.own: frozenset = frozenset()
        self.rec = Reconciler(self.kernel, self.rib, self.view.owners, self.view.disputed, CLUSTER, SERVICE,
                              metric=METRIC)
        self.rec.set_synced()

    # -- the events ----------------------------------------------------------------------------
    def do(self, op, run_pass=True):
        kind, *args = op
        rec = self.rec
        if kind == "node":
            name, v4, v6, addrs = args
            cidrs = tuple(c for c in (v4, v6) if c is not None)
            rec.mark(self.view.upsert(NodeInfo(name, cidrs, tuple(dict.fromkeys(addrs)))))
        elif kind == "delnode":
            rec.mark(self.view.delete(args[0]))
        elif kind == "announce":
            peer, prefix, nh = args
            if prefix.version == nh.version:
                rec.mark(self.rib.apply(UpdateEvent(peer, announced=(Path(peer, prefix, nh),))))
        elif kind == "withdraw":
            peer, prefix = args
            rec.mark(self.rib.apply(UpdateEvent(peer, withdrawn=(prefix,))))
        elif kind == "peerdown":
            peer, keep = args
            rec.mark(self.rib.peer_down(peer, keep_stale=keep))
        elif kind == "sweep":
            rec.mark(self.rib.sweep_stale(args[0]))
        elif kind == "foreign":
            prefix, present = args
            key = ident_of(prefix, METRIC)
            if present and key not in self.kernel.foreign:
                self.kernel.ours.pop(key, None)  # another daemon's replace takes the key
                self.kernel.foreign[key] = KernelRoute(prefix, (A("192.168.50.99") if prefix.version == 4 else
                                                                A("fd00:50::99"),), METRIC, 4, 254)
                rec.kernel_route_event(key, ours=False, deleted=False)
            elif not present and key in self.kernel.foreign:
                del self.kernel.foreign[key]
                rec.kernel_route_event(key, ours=False, deleted=True)
        elif kind == "zap":  # someone deletes one of our routes
            keys = sorted(self.kernel.ours)
            if keys:
                key = keys[args[0] % len(keys)]
                del self.kernel.ours[key]
                rec.kernel_route_event(key, ours=True, deleted=True)
        elif kind == "own":
            self.own = frozenset(args[0])
            rec.set_own(self.own)
        elif kind == "connected":
            self.kernel.connected_nets = frozenset(args[0])
            rec.request_full()  # an address event
        elif kind == "converged":
            rec.set_converged("test")
        elif kind == "resync":
            rec.request_full()
        if run_pass:
            rec.run_pass()

    # -- the same, from scratch ----------------------------------------------------------------
    def check(self):
        owners, disputed, unusable = ownership(self.view.nodes.values())
        assert {c: (o.node, frozenset(o.addresses)) for c, o in self.view.owners.items()} == owners
        assert dict(self.view.disputed) == disputed
        assert self.view.unusable == unusable
        policy = Policy(own=self.own, cluster=frozenset(CLUSTER), service=frozenset(SERVICE),
                        connected=self.kernel.connected_nets, disputed=frozenset(disputed), metric=METRIC,
                        owners={c: Owner(n, tuple(a)) for c, (n, a) in owners.items()})
        desired, rejected = desired_routes(policy, self.rib.paths())
        assert self.rec.desired == desired
        assert sorted(self.rec.rejections(), key=repr) == sorted(rejected, key=repr)
        ours, foreign = self.kernel.snapshot()
        left = plan(desired, ours, foreign, prune=self.rec.converged)
        assert not left.replace and not left.delete, left
        assert {r.prefix for r in left.blocked} == self.rec.blocked
        report = self.rec.report()
        net_key = lambda p: (p.version, int(p.network_address), p.prefixlen)  # noqa: E731
        assert report.blocked == tuple(sorted(self.rec.blocked, key=net_key))
        assert len(report.installed) == report.counts.installed == len(self.kernel.ours)
        assert {k: r.hops for k, r in self.rec.ours.items()} == {r.ident: r.hops for r in self.kernel.ours.values()}


cidr_v4 = st.sampled_from([c for c in CIDRS if c.version == 4])
cidr_v6 = st.sampled_from([c for c in CIDRS if c.version == 6])
prefixes = st.sampled_from(CIDRS + OTHER)
ops = st.one_of(
    st.tuples(st.just("node"), st.sampled_from(NAMES), st.none() | cidr_v4, st.none() | cidr_v6,
              st.lists(st.sampled_from(ADDRS), max_size=3)),
    st.tuples(st.just("delnode"), st.sampled_from(NAMES)),
    st.tuples(st.just("announce"), st.sampled_from(PEERS), prefixes, st.sampled_from(ADDRS)),
    st.tuples(st.just("withdraw"), st.sampled_from(PEERS), prefixes),
    st.tuples(st.just("peerdown"), st.sampled_from(PEERS), st.booleans()),
    st.tuples(st.just("sweep"), st.sampled_from(PEERS)),
    st.tuples(st.just("foreign"), prefixes, st.booleans()),
    st.tuples(st.just("zap"), st.integers(0, 20)),
    st.tuples(st.just("own"), st.sets(st.sampled_from(CIDRS), max_size=2)),
    st.tuples(st.just("connected"), st.sets(st.sampled_from([N("192.168.50.0/24"), N("10.42.3.0/24"),
                                                              N("fd00:50::/64")]), max_size=2)),
    st.tuples(st.just("converged")),
    st.tuples(st.just("resync")),
)


def vouched(world):
    """An announcement the API vouches for (most interesting paths are of this kind)."""
    infos = [n for n in world.view.nodes.values() if n.pod_cidrs and n.addresses]
    if not infos:
        return st.tuples(st.just("resync"))
    return st.sampled_from(infos).flatmap(lambda n: st.tuples(
        st.just("announce"), st.sampled_from(PEERS), st.sampled_from(n.pod_cidrs), st.sampled_from(n.addresses)))


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_incremental_equals_a_full_pass_from_scratch(data):
    world = World()
    steps = data.draw(st.integers(1, 80))
    for _ in range(steps):
        op = data.draw(st.one_of(ops, vouched(world), vouched(world)))
        # events coalesce: sometimes several arrive before the next pass runs
        if data.draw(st.integers(0, 3)) == 0:
            world.do(op, run_pass=False)
            continue
        world.do(op)
        world.check()


def test_the_property_sees_a_missed_verdict():
    """The check above is not vacuous: a view that forgets to report a deletion is caught."""
    world = World()
    for op in [("node", "n2", N("10.42.2.0/24"), None, [A("192.168.50.12")]),
               ("announce", PEERS[0], N("10.42.2.0/24"), A("192.168.50.12")), ("converged",)]:
        world.do(op)
        world.check()
    world.view.delete("n2")  # the change is not marked: the reconciler never hears of it
    world.rec.run_pass()
    try:
        world.check()
    except AssertionError:
        return
    raise AssertionError("a stale desired route went unnoticed")
