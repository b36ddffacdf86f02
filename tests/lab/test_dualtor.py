"""A node on two ToRs (lab/dualtor.clab.yml): every Pod route has both ToRs as next hops, each
node's PodCIDR reaches both ToRs. One ToR going silent (bgpd hung, every packet to or through it
dropped, links up): with BFD (300 ms x 3) the flows through it lose at most a second and its paths
leave every node's kernel within a second; with BFD off (nodes labelled lab.podbgp.io/bfd=off) they
lose packets until the hold time expires. The ToR back: ECMP again, with no loss."""
import concurrent.futures
import ipaddress
import json
import os
import signal
import socket
import time

import pytest
from pyroute2 import NetNS

from lab import demo, runner
from tests.lab.conftest import poll, topology_lab
from tests.lab.pinger import Pinger, pod

NODES = ("node1", "node2", "node3")
TORS = {"tor1": ("192.168.51.1", "fd00:51::1"), "tor2": ("192.168.52.1", "fd00:52::1")}
HOLD = 9  # lab/podbgp-dualtor.yaml's holdTime and the ToRs' timers


@pytest.fixture(scope="module")
def dualtor():
    yield from topology_lab("dualtor.clab.yml", "pbd")


def cidrs(lab, node):
    return lab.nodes[node]["pod_cidrs"].split(",")


def hops(lab, node) -> dict[str, set[str]]:
    """Each podbgp route of node's kernel: prefix -> its gateways."""
    out = {}
    for fam in ("-4", "-6"):
        res = runner.run(["ip", "-j", fam, "route", "show", "proto", "80"], netns=lab.nodes[node]["netns"])
        for r in json.loads(res.stdout or "[]"):
            out[r["dst"]] = {h["gateway"] for h in r.get("nexthops", [])} or {r.get("gateway")}
    return out


def tor_paths(lab, tor, prefix) -> set[str]:
    """The peers a ToR holds a path to prefix from."""
    fam = "ipv6" if ":" in prefix else "ipv4"
    doc = json.loads(runner.vtysh(lab, tor, f"show bgp {fam} unicast {prefix} json") or "{}")
    return {p.get("peer", {}).get("peerId") for p in doc.get("paths", [])}


def want_hops(prefix):
    i = 1 if ":" in prefix else 0
    return {TORS["tor1"][i], TORS["tor2"][i]}


def test_ping_matrix_complete(dualtor):
    ok, total, lines = demo.matrix(dualtor)
    assert total == 12 and ok == total, "\n".join(lines)


def test_each_route_to_another_node_has_both_tors_as_next_hops(dualtor):
    for node in NODES:
        got = hops(dualtor, node)
        others = {c for other in NODES if other != node for c in cidrs(dualtor, other)}
        assert set(got) == others, node
        for prefix in others:
            assert got[prefix] == want_hops(prefix), (node, prefix, got[prefix])


def test_each_node_announces_its_podcidr_to_both_tors(dualtor):
    for k, node in enumerate(NODES, start=1):
        for n, tor in enumerate(TORS, start=1):
            for prefix, addr in zip(cidrs(dualtor, node), (f"192.168.5{n}.1{k}", f"fd00:5{n}::1{k}")):
                assert addr in tor_paths(dualtor, tor, prefix), (tor, prefix)


# ---- one ToR silent -------------------------------------------------------------------------

def _bridge(lab, node) -> str:
    """The node's Pod bridge: the interface holding an address of its PodCIDR."""
    net = ipaddress.ip_network(cidrs(lab, node)[0])
    for link in json.loads(runner.run(["ip", "-j", "addr", "show"], netns=lab.nodes[node]["netns"]).stdout):
        if any(a["family"] == "inet" and ipaddress.ip_address(a["local"]) in net for a in link.get("addr_info", [])):
            return link["ifname"]
    raise AssertionError(f"{node}: no Pod bridge")


def _tor_of(lab, src, dst) -> str:
    """The ToR node1's kernel sends src -> dst (a forwarded IPv4 flow) through."""
    out = runner.run(["ip", "route", "get", dst["ipv4"], "from", src["ipv4"], "iif", _bridge(lab, src["node"])],
                     netns=lab.nodes[src["node"]]["netns"]).stdout
    return next(t for t, (v4, _) in TORS.items() if f"via {v4} " in out)


def _outage(replies: list[float], start: float, end: float) -> float:
    """The longest time without a reply around the event (from start to end, epoch seconds)."""
    times = [start] + [t for t in replies if start <= t <= end] + [end]
    return max(b - a for a, b in zip(times, times[1:]))


def _silence(lab, tor) -> None:
    """bgpd hung, and every packet to, from or through the ToR dropped (BFD's included), links up."""
    os.kill(lab.pids[f"frr:{tor}:bgpd"], signal.SIGSTOP)
    runner.run(["nft", "-f", "-"], netns=lab.nodes[tor]["netns"], input=(
        "table inet pbsilent {\n"
        " chain forwarding { type filter hook forward priority 0; policy drop; }\n"
        " chain incoming { type filter hook input priority 0; iifname != \"lo\" drop; }\n"
        " chain outgoing { type filter hook output priority 0; oifname != \"lo\" drop; }\n"
        "}\n"))


def _restore(lab, tor) -> None:
    runner.run(["nft", "delete", "table", "inet", "pbsilent"], netns=lab.nodes[tor]["netns"], check=False)
    os.kill(lab.pids[f"frr:{tor}:bgpd"], signal.SIGCONT)


def _gateways(ns) -> set[str]:
    """Every next hop of the podbgp routes (protocol 80) in a namespace, over netlink."""
    out = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ns.get_routes(family=family, proto=80):
            if (gw := r.get_attr("RTA_GATEWAY")) is not None:
                out.add(gw)
            for nh in r.get_attr("RTA_MULTIPATH") or ():
                if (gw := nh.get_attr("RTA_GATEWAY")) is not None:
                    out.add(gw)
    return out


def _bfd_states(lab, node) -> dict[str, str | None]:
    return {p["address"]: (p["bfd"] or {}).get("state") for p in runner.speaker_status(lab, node)["peers"]}


def _ecmp_everywhere(lab) -> bool:
    return all(g == want_hops(p) for node in NODES for p, g in hops(lab, node).items())


def _silent_tor(lab, label: str):
    """Ping node1-pod1 -> node2-pod1 and node3-pod1 (IPv4, IPv6) every 20 ms; silence the ToR the
    IPv4 flow to node2 goes through; wait until its paths are gone from every node; go on 1 s;
    bring it back and wait for ECMP everywhere, pinging on 2 s more. Prints what it saw."""
    src = pod(lab, "node1-pod1")
    dsts = [pod(lab, "node2-pod1"), pod(lab, "node3-pod1")]
    tor = _tor_of(lab, src, dsts[0])
    alive = next(t for t in TORS if t != tor)
    pingers = {f"{d['name']} {fam}": Pinger(src["netns"], d[fam], interval=0.02) for d in dsts for fam in ("ipv4", "ipv6")}
    silenced = False
    try:
        time.sleep(1.5)  # a baseline of replies
        silenced = True
        _silence(lab, tor)
        t0 = time.time()  # the drop rule is in force: the ToR is silent from here
        gone = {}

        def watch(node):  # the dead ToR's paths leave each node's kernel: one watcher per node,
            # reading the routes over one netlink socket in the node's namespace (a few ms a read)
            with NetNS(lab.nodes[node]["netns"]) as ns:
                poll(lambda: not set(TORS[tor]) & _gateways(ns), timeout=HOLD + 10, interval=0.005)
            gone[node] = time.time() - t0

        with concurrent.futures.ThreadPoolExecutor(len(NODES)) as pool:
            for f in [pool.submit(watch, n) for n in NODES]:
                f.result()
        for node in NODES:
            assert all(g == {TORS[alive][0]} or g == {TORS[alive][1]} for g in hops(lab, node).values()), node
        time.sleep(1.0)
        t1 = time.time()
        silenced = False
        _restore(lab, tor)
        back = poll(lambda: _ecmp_everywhere(lab), timeout=60, interval=0.1)
        time.sleep(2.0)
        t2 = time.time()
        results = {name: p.stop() for name, p in pingers.items()}
    finally:
        if silenced:
            _restore(lab, tor)
        for p in pingers.values():
            p.kill()
    outages = {name: _outage(r.replies, t0, t1) for name, r in results.items()}
    after = {name: _outage(r.replies, t1, t2) for name, r in results.items()}
    for name, r in sorted(results.items()):
        print(f"{label}, {tor} silent: {name:<18} sent {r.sent} lost {r.lost} ({r.lost * 0.02:.2f} s of traffic), "
              f"longest gap {outages[name]:.2f} s; after its return longest gap {after[name]:.2f} s")
    print(f"{label}, {tor} silent: its paths gone from the nodes' kernels after "
          + ", ".join(f"{n} {t:.2f} s" for n, t in gone.items()))
    print(f"{label}, {tor} back: ECMP again on every node {back:.2f} s after")
    return dsts, gone, outages, after, results


def test_bfd_is_up_on_every_session(dualtor):
    for node in NODES:
        poll(lambda n=node: set(_bfd_states(dualtor, n).values()) == {"up"}, timeout=30, interval=0.2)
        doc = runner.speaker_status(dualtor, node)
        assert len(doc["peers"]) == 4 and all(p["bfd"]["minRx"] == 300 and p["bfd"]["multiplier"] == 3
                                              for p in doc["peers"])


def test_silent_tor_with_bfd_loses_at_most_a_second(dualtor):
    for node in NODES:
        poll(lambda n=node: set(_bfd_states(dualtor, n).values()) == {"up"}, timeout=30, interval=0.2)
    dsts, gone, outages, after, results = _silent_tor(dualtor, "BFD on")
    assert max(gone.values()) <= 1.0, gone
    assert max(outages.values()) <= 1.0, outages
    assert all(r.lost <= 50 for r in results.values()), {n: r.lost for n, r in results.items()}
    # the ToR back: ECMP with no loss (the longest gap after its return is a ping interval or so)
    assert max(after.values()) < 0.2, after
    for node in NODES:
        poll(lambda n=node: set(_bfd_states(dualtor, n).values()) == {"up"}, timeout=30, interval=0.2)
        assert any(p["bfd"]["downs"] >= 1 for p in runner.speaker_status(dualtor, node)["peers"]), node


def test_silent_tor_without_bfd_loses_packets_until_the_hold_time(dualtor):
    flipped = time.time()
    for node in NODES:
        runner.kubectl(dualtor, "label", "node", node, "lab.podbgp.io/bfd=off", "--overwrite")
    try:
        for node in NODES:
            poll(lambda n=node: set(_bfd_states(dualtor, n).values()) == {None}, timeout=30, interval=0.2)
        # the ToRs still ask for BFD: FRR takes the AdminDown of a removed BFD session as down and
        # resets the BGP session; wait until every session is Established again after the flip
        poll(lambda: all(p["state"] == "up" and p["since"] > flipped
                         for n in NODES for p in runner.speaker_status(dualtor, n)["peers"]), timeout=40, interval=0.2)
        assert poll(lambda: _ecmp_everywhere(dualtor), timeout=30, interval=0.1) is not None
        dsts, gone, outages, after, results = _silent_tor(dualtor, "BFD off")
    finally:
        for node in NODES:
            runner.kubectl(dualtor, "label", "node", node, "lab.podbgp.io/bfd-", check=False)
    print(f"BFD off: hold time {HOLD} s")
    assert HOLD - 4 <= max(gone.values()) <= HOLD + 4
    # the flow pinned to the dead ToR lost its packets for about the hold time; none for longer
    assert outages[f"{dsts[0]['name']} ipv4"] >= HOLD - 4
    assert max(outages.values()) <= HOLD + 4

