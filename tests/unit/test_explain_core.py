"""`podbgp explain PREFIX`: the document speaker.explain builds from a Speaker wired with fakes
(Kubernetes, ExaBGP, kernel), the /explain endpoint, the command's output; and each peer's
`since` in /status."""
import asyncio
import ipaddress as ia
import json
import threading
import time

import pytest
from click.testing import CliRunner

from bgp import bfd
from bgp.types import EorEvent, OpenEvent, Path, SessionState, StateEvent, UpdateEvent
from reconciler.kernel import ApplyResult
from reconciler.policy import PERMANENT
from reconciler.types import KernelRoute, Reason, ReconcilerError
from speaker import config as cfgmod
from speaker import explain as ex
from speaker import endpoint, status
from speaker.app import Speaker
from speaker.cli import main
from tests.unit.test_app import FakeExaBGP, Snapshot, node

N, A = ia.ip_network, ia.ip_address
TOR, TOR2 = "192.168.50.1", "192.168.50.2"
NODES = [node("node1", ["10.42.1.0/24", "fd00:42:0:1::/64"], ["192.168.50.11", "fd00:50::11"]),
         node("node2", ["10.42.2.0/24", "fd00:42:0:2::/64"], ["192.168.50.12", "fd00:50::12"]),
         node("node3", ["10.42.3.0/24"], ["192.168.50.13"]),
         node("node4", ["10.42.4.0/24"], ["192.168.50.14", "192.168.50.24"]),  # two InternalIPs: ECMP
         node("nodeA", ["10.42.8.0/24"], ["192.168.50.31"]),  # overlapping claims: disputed
         node("nodeB", ["10.42.8.0/23"], ["192.168.50.32"]),
         node("nov6", ["10.42.9.0/24", "fd00:42:0:9::/64"], ["192.168.50.19"])]  # no IPv6 InternalIP


class Kernel:
    """Our routes as written; foreign routes as given; refuses the prefixes in `refuse`; a read
    at a prefix fails with `unreadable` if set."""

    def __init__(self, foreign=(), ours=(), refuse=()):
        self.routes = {r.prefix: r for r in ours}
        self.foreign = list(foreign)
        self.refuse = {N(p) for p in refuse}
        self.unreadable = None
        self.reads = []

    def snapshot(self):
        return list(self.routes.values()), list(self.foreign)

    def connected(self):
        return frozenset({N("192.168.50.0/24"), N("10.42.250.0/24")})

    def apply(self, plan):
        failed = {}
        for r in plan.delete:
            self.routes.pop(r.prefix, None)
        for r in plan.replace:
            if r.prefix in self.refuse:
                failed[r] = 101
            else:
                self.routes[r.prefix] = KernelRoute(r.prefix, r.gateways, r.metric, 80, 254)
        return ApplyResult(replaced=len(plan.replace) - len(failed), deleted=len(plan.delete), failed=failed)

    def routes_at(self, prefix):
        self.reads.append(prefix)
        if self.unreadable:
            raise ReconcilerError(self.unreadable)
        return [r for r in list(self.routes.values()) + self.foreign if r.prefix == prefix]


def static(prefix, via, metric=20):
    return KernelRoute(N(prefix), (A(via),), metric, 4, 254)


def make(tmp_path, kernel=None):
    cfg = cfgmod.parse({"nodeName": "node1", "asn": 65001,
                        "peers": [{"address": TOR, "asn": 65000}, {"address": TOR2, "asn": 65000}],
                        "clusterCIDRs": ["10.42.0.0/16", "fd00:42::/48"],
                        "serviceCIDRs": ["10.43.0.0/16", "fd00:43::/112"],
                        "runtimeDir": str(tmp_path), "convergenceTimeout": 30})
    kernel = kernel or Kernel()
    return Speaker(cfg, kernel, lambda emit: (lambda: None), env={}, bgp_factory=FakeExaBGP), kernel


async def up(sp, *routes, eor=True):
    """The Node list, both sessions up, these (prefix, next hop[, peer]) paths, then End-of-RIB."""
    sp.on_watch(Snapshot(tuple(NODES), "10"))
    for peer in (TOR, TOR2):
        sp.bgp.on_event(OpenEvent(peer, 120))
        sp.bgp.on_event(StateEvent(peer, SessionState.UP))
    offer(sp, *routes)
    if eor:
        for peer in (TOR, TOR2):
            sp.bgp.on_event(EorEvent(peer, "ipv4"))
    await asyncio.sleep(0.05)


def offer(sp, *routes):
    for prefix, hop, *peer in routes:
        peer = peer[0] if peer else TOR
        sp.bgp.on_event(UpdateEvent(peer, announced=(Path(peer, N(prefix), A(hop)),)))


def explain(sp, prefix, **kw):
    return ex.explain(sp, N(prefix), **kw)


def run(coro):
    return asyncio.run(coro)


# ---- verdicts ---------------------------------------------------------------------------------

def test_installed_prefix_names_owner_path_desired_and_kernel_route(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        await up(sp, ("10.42.2.0/24", "192.168.50.12"))
        doc = explain(sp, "10.42.2.0/24")
        assert (doc["verdict"], doc["summary"]) == ("installed", "installed via 192.168.50.12")
        assert doc["owner"] == {"state": "owned", "node": "node2", "internalIPs": ["192.168.50.12", "fd00:50::12"],
                                "cidr": "10.42.2.0/24", "reason": "10.42.2.0/24 is node2's PodCIDR"}
        (path,) = doc["paths"]
        assert path["peer"] == TOR and path["nextHop"] == "192.168.50.12" and path["verdict"] == "accepted"
        assert path["reason"] is None and path["peerState"] == "up" and path["stale"] is False
        assert abs(path["peerSince"] - time.time()) < 5
        assert doc["desired"] == {"via": ["192.168.50.12"], "metric": 20, "ecmp": False}
        k = doc["kernel"]
        assert k["source"] == "model" and k["routes"] == [
            {"owner": "podbgp", "protocol": 80, "protocolName": "podbgp", "metric": 20, "via": ["192.168.50.12"]}]
        assert not (k["blocked"] or k["failed"] or k["pending"]) and k["lastReconcile"] is not None
        assert doc["own"] == {"own": False, "announced": False}
        assert json.loads(json.dumps(doc)) == doc  # plain JSON values
    run(body())


def test_ecmp_over_two_peers_and_the_other_family(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        await up(sp, ("10.42.4.0/24", "192.168.50.24", TOR), ("10.42.4.0/24", "192.168.50.14", TOR2),
                 ("fd00:42:0:2::/64", "fd00:50::12"))
        doc = explain(sp, "10.42.4.0/24")
        assert doc["summary"] == "installed via 192.168.50.14, 192.168.50.24 (ECMP)"
        assert [p["peer"] for p in doc["paths"]] == [TOR, TOR2] and doc["desired"]["ecmp"]
        v6 = explain(sp, "fd00:42:0:2::/64")
        assert v6["summary"] == "installed via fd00:50::12" and v6["owner"]["node"] == "node2"
    run(body())


REJECTED = [
    # prefix, next hop, reason, the sentence that explains it
    ("10.42.3.0/24", "192.168.50.99", "next-hop-mismatch", "next hop 192.168.50.99 is not node3's InternalIP (192.168.50.13)"),
    ("10.42.2.128/25", TOR, "no-such-node",
     "10.42.2.128/25 is more specific than node2's PodCIDR 10.42.2.0/24; no Node holds it (a hijack?)"),
    ("10.42.77.0/24", "192.168.50.12", "no-such-node", "no Node holds it"),
    ("0.0.0.0/0", TOR, "default-route", "a default route is never installed"),
    ("10.43.7.0/24", TOR, "service-range", "10.43.7.0/24 overlaps the service range 10.43.0.0/16"),
    ("172.16.99.0/24", TOR, "outside-cluster-cidr", "172.16.99.0/24 is outside the cluster CIDRs (10.42.0.0/16)"),
    ("10.42.250.0/24", TOR, "overlaps-connected-subnet",
     "10.42.250.0/24 overlaps 10.42.250.0/24, a subnet connected to this node"),
    ("10.42.8.0/24", "192.168.50.31", "disputed-cidr",
     "10.42.8.0/24 is claimed by overlapping nodes nodeA, nodeB; neither is trusted"),
    ("fd00:42:0:9::/64", "fd00:50::19", "no-such-node", "node nov6: no InternalIP of IPv6 for podCIDR fd00:42:0:9::/64"),
    ("fd00:42:0:2::/64", "fe80::1", "link-local-next-hop", "next hop fe80::1 is link-local"),
    ("fd00:99::/64", "fd00:50::1", "outside-cluster-cidr", "fd00:99::/64 is outside the cluster CIDRs (fd00:42::/48)"),
    ("10.42.1.128/25", TOR, "own-cidr", "10.42.1.128/25 overlaps this node's own PodCIDR 10.42.1.0/24"),
]


@pytest.mark.parametrize("prefix, hop, reason, sentence", REJECTED)
def test_rejected_path_gives_the_policy_reason_and_a_sentence(tmp_path, prefix, hop, reason, sentence):
    async def body():
        sp, kernel = make(tmp_path)
        await up(sp, (prefix, hop))
        doc = explain(sp, prefix)
        if Reason(reason) in PERMANENT:  # refused whatever the Nodes say: counted, not stored
            assert doc["verdict"] == "rejected" and doc["summary"] == f"rejected: {sentence}; 1 such path from {TOR}"
            assert doc["paths"] == [] and doc["refused"] == {"reason": reason, "why": sentence,
                                                             "peers": [{"peer": TOR, "paths": 1}]}
            assert doc["desired"] is None and N(prefix) not in kernel.routes and not sp.reconciler.rejections()
            assert f"  refused  from {TOR}: 1 paths {reason} this session (counted, not stored)" in ex.render(doc)
            return
        assert doc["verdict"] == "rejected" and doc["summary"] == f"rejected: {sentence}"
        (path,) = doc["paths"]
        assert (path["verdict"], path["reason"], path["why"]) == ("rejected", reason, sentence)
        assert doc["desired"] is None and doc["kernel"]["routes"] == [] and N(prefix) not in kernel.routes
        # the same verdict the reconciler reached (policy.evaluate, not a copy of it)
        assert [(str(r.prefix), r.reason.value) for r in sp.reconciler.rejections()] == [(str(N(prefix)), reason)]
    run(body())


def test_more_specific_hijack_and_covering_prefix_say_so(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        await up(sp)
        inside = explain(sp, "10.42.2.128/25")["owner"]
        assert (inside["state"], inside["node"], inside["cidr"]) == ("inside", "node2", "10.42.2.0/24")
        covers = explain(sp, "10.42.0.0/21")["owner"]
        assert covers["state"] == "covers" and covers["covers"] == 4
        assert covers["reason"].startswith("no Node holds it; it covers 4 PodCIDR(s): 10.42.1.0/24 (node1), ")
    run(body())


def test_rejected_paths_beside_an_accepted_one_leave_it_installed(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        await up(sp, ("10.42.3.0/24", "192.168.50.13", TOR), ("10.42.3.0/24", "192.168.50.66", TOR2))
        doc = explain(sp, "10.42.3.0/24")
        assert doc["summary"] == "installed via 192.168.50.13"
        assert [(p["peer"], p["verdict"], p["reason"]) for p in doc["paths"]] == [
            (TOR, "accepted", None), (TOR2, "rejected", "next-hop-mismatch")]
    run(body())


def test_blocked_by_a_foreign_route_from_the_model_and_from_a_fresh_read(tmp_path):
    async def body():
        sp, kernel = make(tmp_path, Kernel(foreign=[static("10.42.3.0/24", TOR)]))
        await up(sp, ("10.42.3.0/24", "192.168.50.13"))
        assert N("10.42.3.0/24") not in kernel.routes
        doc = explain(sp, "10.42.3.0/24")  # the model knows where a foreign route sits, not its protocol
        assert (doc["verdict"], doc["summary"]) == ("blocked", "blocked by a foreign route at metric 20")
        assert doc["kernel"]["blocked"] and doc["kernel"]["routes"] == [
            {"owner": "foreign", "protocol": None, "protocolName": None, "metric": 20, "via": None}]
        fresh = explain(sp, "10.42.3.0/24", kernel=[static("10.42.3.0/24", TOR)])
        assert fresh["summary"] == "blocked by a foreign route (proto static) at metric 20"
        assert fresh["kernel"]["source"] == "netlink" and fresh["kernel"]["routes"] == [
            {"owner": "foreign", "protocol": 4, "protocolName": "static", "metric": 20, "via": [TOR]}]
        text = ex.render(fresh)
        assert text.splitlines()[0] == "10.42.3.0/24: blocked by a foreign route (proto static) at metric 20"
        assert "  kernel   foreign, proto static via 192.168.50.1 metric 20 (holds our key)\n" in text
        # the foreign route goes: ours comes back, and explain says so
        kernel.foreign = []
        sp.reconciler.kernel_route_event((4, int(A("10.42.3.0")), 24, 20), ours=False, deleted=True)
        await asyncio.sleep(0.05)
        assert explain(sp, "10.42.3.0/24")["summary"] == "installed via 192.168.50.13"
    run(body())


def test_foreign_route_at_a_better_metric_is_named_beside_ours(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        await up(sp, ("10.42.3.0/24", "192.168.50.13"))
        ours = KernelRoute(N("10.42.3.0/24"), (A("192.168.50.13"),), 20, 80, 254)
        doc = explain(sp, "10.42.3.0/24", kernel=[ours, static("10.42.3.0/24", TOR, metric=10)])
        assert doc["summary"] == "installed via 192.168.50.13; but a foreign route (proto static) at metric 10 wins"
        assert [h["metric"] for h in doc["kernel"]["routes"]] == [10, 20]
    run(body())


def test_own_podcidr_is_announced_never_installed(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        await up(sp, ("10.42.1.0/24", TOR))
        doc = explain(sp, "10.42.1.0/24")
        assert (doc["verdict"], doc["summary"]) == ("own", "this node's own PodCIDR: announced, never installed")
        assert doc["own"] == {"own": True, "announced": True}
        assert doc["paths"][0]["reason"] == "own-cidr"
        assert explain(sp, "fd00:42:0:1::/64")["verdict"] == "own"
    run(body())


@pytest.mark.parametrize("prefix, summary", [
    ("10.42.3.0/24", "no peer offers it (node3's PodCIDR)"),
    ("10.42.99.0/24", "no peer offers it; no Node holds it"),
    ("fd00:42:0:99::/64", "no peer offers it; no Node holds it"),
])
def test_unknown_prefix_no_peer_offers_it(tmp_path, prefix, summary):
    async def body():
        sp, _ = make(tmp_path)
        await up(sp)
        doc = explain(sp, prefix)
        assert (doc["verdict"], doc["summary"]) == ("absent", summary)
        assert doc["paths"] == [] and doc["desired"] is None and doc["kernel"]["routes"] == []
        assert "  path     none" in ex.render(doc)
    run(body())


def test_an_adopted_route_stays_until_convergence_and_explain_says_so(tmp_path):
    async def body():
        old = KernelRoute(N("10.42.3.0/24"), (A("192.168.50.13"),), 20, 80, 254)
        sp, _ = make(tmp_path, Kernel(ours=[old]))
        await up(sp, ("10.42.3.0/24", "192.168.50.66"), eor=False)
        assert explain(sp, "10.42.3.0/24")["summary"] == (
            "rejected: next hop 192.168.50.66 is not node3's InternalIP (192.168.50.13); "
            "our old route stays until the RIB has converged")
    run(body())


def test_a_route_the_kernel_refuses_is_failed(tmp_path):
    async def body():
        sp, _ = make(tmp_path, Kernel(refuse=["10.42.2.0/24"]))
        await up(sp, ("10.42.2.0/24", "192.168.50.12"))
        doc = explain(sp, "10.42.2.0/24")
        assert (doc["verdict"], doc["summary"]) == ("failed", "wanted via 192.168.50.12; the kernel refused it, retrying")
    run(body())


def test_render_puts_the_verdict_first_then_aligned_lines(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        await up(sp, ("10.42.2.0/24", "192.168.50.12"))
        doc = explain(sp, "10.42.2.0/24")
        lines = ex.render(doc, now=doc["kernel"]["lastReconcile"] + 3).splitlines()
        assert lines[0] == "10.42.2.0/24: installed via 192.168.50.12"
        assert lines[1:] == [
            "  owner    10.42.2.0/24 is node2's PodCIDR (InternalIP 192.168.50.12, fd00:50::12)",
            lines[2],
            "  desired  via 192.168.50.12 metric 20",
            "  kernel   podbgp, proto 80 via 192.168.50.12 metric 20",
            "           (the reconciler's model; last reconcile 3s ago)"]
        assert lines[2].startswith("  path     from 192.168.50.1 (up for ") and lines[2].endswith(
            "via 192.168.50.12: accepted")
    run(body())


# ---- input, the endpoint, the command -------------------------------------------------------

@pytest.mark.parametrize("text, want", [("10.42.2.0/24", "10.42.2.0/24"), (" fd00:42:0:2::/64 ", "fd00:42:0:2::/64"),
                                        ("10.42.2.7", "10.42.2.7/32"), ("FD00:42:0:2:0::/64", "fd00:42:0:2::/64")])
def test_prefixes_are_normalized(text, want):
    assert str(ex.parse_prefix(text)) == want


@pytest.mark.parametrize("text, message", [
    ("10.42.2.1/24", "explain: 10.42.2.1/24 has host bits set; did you mean 10.42.2.0/24?"),
    ("fd00:42::1/48", "explain: fd00:42::1/48 has host bits set; did you mean fd00:42::/48?"),
    ("10.42.2.0/33", "explain: '10.42.2.0/33' is not an IPv4 or IPv6 CIDR"),
    ("node2", "explain: 'node2' is not an IPv4 or IPv6 CIDR"),
])
def test_bad_prefixes_are_refused_with_one_line(text, message):
    with pytest.raises(ex.BadPrefix) as err:
        ex.parse_prefix(text)
    assert str(err.value) == message


def test_respond_400s_and_the_document(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        await up(sp, ("10.42.2.0/24", "192.168.50.12"))
        for query, line in [("", "explain: give exactly one prefix: /explain?prefix=CIDR"),
                            ("prefix=1&prefix=2", "explain: give exactly one prefix: /explain?prefix=CIDR"),
                            ("prefix=10.42.2.1%2F24", "explain: 10.42.2.1/24 has host bits set; did you mean 10.42.2.0/24?")]:
            code, ctype, data = await ex.respond(sp, query)
            assert (code, ctype, data.decode()) == ("400 Bad Request", "text/plain", line + "\n")
        code, ctype, data = await ex.respond(sp, "prefix=10.42.2.0/24")  # the table read at that prefix
        assert (code, ctype) == ("200 OK", "application/json")
        doc = json.loads(data)
        assert doc["summary"] == "installed via 192.168.50.12" and doc["kernel"]["source"] == "netlink"
        assert doc["kernel"]["routes"] == [
            {"owner": "podbgp", "protocol": 80, "protocolName": "podbgp", "metric": 20, "via": ["192.168.50.12"]}]
    run(body())


def test_a_failed_kernel_read_falls_back_on_the_model_and_says_why(tmp_path, caplog):
    async def body():
        sp, kernel = make(tmp_path, Kernel(foreign=[static("10.42.3.0/24", TOR)]))
        await up(sp, ("10.42.3.0/24", "192.168.50.13"))
        kernel.unreadable = "route dump of table 254 at 10.42.3.0/24 failed: [Errno 1] Operation not permitted"
        code, _, data = await ex.respond(sp, "prefix=10.42.3.0/24")
        doc = json.loads(data)
        assert code == "200 OK" and kernel.reads == [N("10.42.3.0/24")]
        assert doc["kernel"]["source"] == "model" and doc["kernel"]["error"] == kernel.unreadable
        assert doc["summary"] == "blocked by a foreign route at metric 20"  # the model knows the key, not the protocol
        text = ex.render(doc, now=doc["kernel"]["lastReconcile"] + 3)
        assert text.splitlines()[-1] == f"           (the reconciler's model; last reconcile 3s ago) {kernel.unreadable}"
        assert [r.message for r in caplog.records if r.name == "speaker.explain"] == [
            f"explain.kernel.failed prefix=10.42.3.0/24 error={kernel.unreadable}"]
    run(body())


async def http_get(sock, path):
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode().split("\r\n")[0], body


def test_the_endpoint_answers_explain_and_400s_bad_input(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        await up(sp, ("10.42.2.0/24", "192.168.50.12"))
        sock = str(tmp_path / "status.sock")
        server = await endpoint.serve_local(sp, sock)
        try:
            line, data = await http_get(sock, "/explain?prefix=10.42.2.0%2F24")
            assert line == "HTTP/1.1 200 OK" and json.loads(data)["verdict"] == "installed"
            line, data = await http_get(sock, "/explain?prefix=10.42.2.1/24")
            assert line == "HTTP/1.1 400 Bad Request" and data.count(b"\n") == 1 and b"did you mean 10.42.2.0/24" in data
            line, _ = await http_get(sock, "/explain")
            assert line == "HTTP/1.1 400 Bad Request"
            line, data = await http_get(sock, "/status?x=1")  # the other paths ignore a query, as before
            assert line == "HTTP/1.1 200 OK" and json.loads(data)["node"] == "node1"
        finally:
            server.close()
            await server.wait_closed()
    run(body())


@pytest.fixture
def served(tmp_path):
    """A Speaker with fakes and its local endpoint, on a loop in a thread; yields the socket's path."""
    ready, stop, box = threading.Event(), threading.Event(), {}

    async def main_():
        sp, _ = make(tmp_path, Kernel(foreign=[static("10.42.3.0/24", TOR)]))
        await up(sp, ("10.42.2.0/24", "192.168.50.12"), ("10.42.3.0/24", "192.168.50.13"),
                 ("10.42.2.128/25", TOR))
        box["socket"] = str(tmp_path / "status.sock")
        server = await endpoint.serve_local(sp, box["socket"])
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)
        server.close()
        await server.wait_closed()

    thread = threading.Thread(target=asyncio.run, args=(main_(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield box["socket"]
    stop.set()
    thread.join(10)


def test_the_command_prints_the_verdict_first_and_json(served):
    cli = CliRunner()
    res = cli.invoke(main, ["explain", "10.42.2.0/24", "--socket", served])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == "10.42.2.0/24: installed via 192.168.50.12"
    res = cli.invoke(main, ["explain", "10.42.2.128/25", "--socket", served])
    assert res.output.splitlines()[0] == ("10.42.2.128/25: rejected: 10.42.2.128/25 is more specific than node2's "
                                          "PodCIDR 10.42.2.0/24; no Node holds it (a hijack?)")
    res = cli.invoke(main, ["explain", "10.42.3.0/24", "--json", "--socket", served])
    doc = json.loads(res.output)  # the route table is read at the prefix: the foreign route's protocol is known
    assert (doc["verdict"], doc["summary"]) == ("blocked", "blocked by a foreign route (proto static) at metric 20")
    res = cli.invoke(main, ["explain", "10.42.2.1/24", "--socket", served])
    assert res.exit_code == 1
    assert res.output == "Error: explain: 10.42.2.1/24 has host bits set; did you mean 10.42.2.0/24?\n"


def test_the_command_says_when_no_speaker_answers(tmp_path):
    sock = str(tmp_path / "status.sock")
    res = CliRunner().invoke(main, ["explain", "10.42.2.0/24", "--socket", sock])
    assert res.exit_code == 1 and res.output.startswith(f"Error: no speaker answers on {sock}: ")


# ---- /status: each peer's since ---------------------------------------------------------------

def test_status_gives_each_peer_the_unix_time_it_entered_its_state(tmp_path):
    def peer(sp):
        return next(p for p in status.status_doc(sp)["peers"] if p["address"] == TOR)

    async def body():
        sp, _ = make(tmp_path)
        before = time.time()
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        await asyncio.sleep(0.05)
        idle = peer(sp)
        assert idle["state"] == "idle" and before <= idle["since"] <= time.time()
        await asyncio.sleep(0.02)
        sp.bgp.on_event(StateEvent(TOR, SessionState.UP))
        established = peer(sp)
        assert established["state"] == "up" and idle["since"] < established["since"] <= time.time()
        await asyncio.sleep(0.02)
        sp.bgp.on_event(StateEvent(TOR, SessionState.UP))  # the same state again: since stays
        sp.bgp.on_event(EorEvent(TOR, "ipv4"))
        assert peer(sp)["since"] == established["since"]
        sp.bgp.on_event(StateEvent(TOR, SessionState.DOWN, "hold timer expired"))
        down = peer(sp)
        assert down["state"] == "down" and down["since"] > established["since"]
        doc = json.loads(b"".join(status.status_chunks(sp)))  # as /status serves it
        assert next(p for p in doc["peers"] if p["address"] == TOR)["since"] == down["since"]
    run(body())


# ---- /status streamed ----------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 2, 3, 256])  # batch boundaries inside, at and past each list's end
def test_the_streamed_status_is_the_document_in_the_same_order(tmp_path, batch):
    async def body():
        sp, _ = make(tmp_path)
        # installed ones, an ECMP pair, rejected ones (own CIDR, next-hop mismatch), IPv6 before none
        await up(sp, ("10.42.2.0/24", "192.168.50.12"), ("10.42.2.0/24", "192.168.50.12", TOR2),
                 ("10.42.1.0/24", "192.168.50.12"), ("10.42.3.0/24", "192.168.50.99"),
                 ("fd00:42:0:2::/64", "fd00:50::12"))
        doc = status.status_doc(sp)
        assert len(doc["learned"]) == 5 and len(doc["rejected"]) == 2 and doc["installed"]
        assert [d["prefix"] for d in doc["learned"]] == ["10.42.1.0/24", "10.42.2.0/24", "10.42.2.0/24",
                                                          "10.42.3.0/24", "fd00:42:0:2::/64"]
        streamed = b"".join(status.status_chunks(sp, batch=batch))
        assert json.loads(streamed) == doc and list(json.loads(streamed)) == list(doc)
        sock = str(tmp_path / "status.sock")
        server = await endpoint.serve_local(sp, sock)  # served: close-delimited, parsed as the CLI does
        try:
            fetched = await asyncio.to_thread(endpoint.fetch, sock)
        finally:
            server.close()
        assert fetched == doc
        await sp.bgp.stop()
    run(body())


def test_a_path_dropped_by_bfd_is_named_until_bfd_is_up_again(tmp_path):
    from tests.unit.test_bfd_sessions import FakeEngine

    async def body():
        cfg = cfgmod.parse({"nodeName": "node1", "asn": 65001,
                            "peers": [{"address": TOR, "asn": 65000, "bfd": True}, {"address": TOR2, "asn": 65000}],
                            "clusterCIDRs": ["10.42.0.0/16", "fd00:42::/48"], "serviceCIDRs": ["10.43.0.0/16"],
                            "runtimeDir": str(tmp_path), "convergenceTimeout": 30})
        sp = Speaker(cfg, Kernel(), lambda emit: (lambda: None), env={}, bgp_factory=FakeExaBGP)
        sp.bgp.bfd_engine = FakeEngine
        await up(sp, ("10.42.2.0/24", "192.168.50.12"))
        eng = sp.bgp.bfd
        eng.on_event(bfd.BfdEvent(TOR, "up"))
        eng.on_event(bfd.BfdEvent(TOR, "down", 1))
        await asyncio.sleep(0.05)
        doc = explain(sp, "10.42.2.0/24")
        assert doc["verdict"] == "absent" and doc["bfd"][0]["peer"] == TOR
        assert doc["summary"] == ("no peer offers it (node2's PodCIDR); the path from 192.168.50.1 was dropped when "
                                  "its BFD session went down")
        assert "the path from 192.168.50.1 was dropped 0s ago: BFD down (control detection time expired)" in ex.render(doc)
        eng.on_event(bfd.BfdEvent(TOR, "up"))
        assert explain(sp, "10.42.2.0/24")["bfd"] == []
    run(body())
