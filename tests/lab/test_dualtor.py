"""A node on two ToRs (lab/dualtor.clab.yml): every Pod route has both ToRs as next hops, each
node's PodCIDR reaches both ToRs, and one ToR going silent (control plane hung, forwarding dead,
links up) costs the flows through it their packets until the hold time expires: the nodes have no
BFD yet, so this is the "BFD off" baseline."""
import ipaddress
import json
import os
import signal
import time

import pytest

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


# ---- one ToR silent, no BFD on the nodes ----------------------------------------------------------

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
    os.kill(lab.pids[f"frr:{tor}:bgpd"], signal.SIGSTOP)
    runner.run(["nft", "-f", "-"], netns=lab.nodes[tor]["netns"], input=(
        "table inet pbsilent { chain silent { type filter hook forward priority 0; policy drop; }; }\n"))


def _restore(lab, tor) -> None:
    runner.run(["nft", "delete", "table", "inet", "pbsilent"], netns=lab.nodes[tor]["netns"], check=False)
    os.kill(lab.pids[f"frr:{tor}:bgpd"], signal.SIGCONT)


def test_silent_tor_without_bfd_loses_packets_until_the_hold_time(dualtor):
    src = pod(dualtor, "node1-pod1")
    dsts = [pod(dualtor, "node2-pod1"), pod(dualtor, "node3-pod1")]
    tor = _tor_of(dualtor, src, dsts[0])
    alive = next(t for t in TORS if t != tor)
    pingers = {f"{d['name']} {fam}": Pinger(src["netns"], d[fam], interval=0.02) for d in dsts for fam in ("ipv4", "ipv6")}
    silenced = False
    try:
        time.sleep(1.5)  # a baseline of replies
        t0 = time.time()
        silenced = True
        _silence(dualtor, tor)
        gone = {}
        for node in NODES:  # the dead ToR's paths leave each node's kernel when its hold timer expires
            poll(lambda n=node: not any(set(TORS[tor]) & g for g in hops(dualtor, n).values()),
                 timeout=HOLD + 10, interval=0.1)
            gone[node] = time.time() - t0
        t_gone = max(gone.values())
        for node in NODES:
            assert all(g == {TORS[alive][0]} or g == {TORS[alive][1]} for g in hops(dualtor, node).values()), node
        time.sleep(1.0)
        t1 = time.time()
        results = {name: p.stop() for name, p in pingers.items()}
    finally:
        if silenced:
            _restore(dualtor, tor)
        for p in pingers.values():
            p.kill()
    outages = {name: _outage(r.replies, t0, t1) for name, r in results.items()}
    for name, r in sorted(results.items()):
        print(f"BFD off, {tor} silent: {name:<18} sent {r.sent} lost {r.lost} ({r.lost * 0.02:.1f} s of traffic), "
              f"longest gap {outages[name]:.2f} s")
    print(f"BFD off, {tor} silent: its paths gone from the nodes' kernels after "
          + ", ".join(f"{n} {t:.2f} s" for n, t in gone.items()) + f" (hold time {HOLD} s)")
    assert HOLD - 4 <= t_gone <= HOLD + 4
    # the flow pinned to the dead ToR lost its packets for about the hold time; none for longer
    assert outages[f"{dsts[0]['name']} ipv4"] >= HOLD - 4
    assert max(outages.values()) <= HOLD + 4
    # the ToR back: both next hops again everywhere
    back = poll(lambda: all(g == want_hops(p) for node in NODES for p, g in hops(dualtor, node).items()),
                timeout=60, interval=0.2)
    print(f"BFD off, {tor} back: ECMP again on every node {back:.2f} s after")
