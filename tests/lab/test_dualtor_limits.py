"""maxPrefixes with teardown against an FRR and a BIRD ToR (issue 14, must-show 5), in
lab/mixedtor.clab.yml: three nodes, each on two ToRs, tor1 FRR 8.4 and tor2 BIRD 2.

For each ToR in turn: node1's Node gets a podbgp.io/peers annotation giving its IPv4 session to
that ToR `maxPrefixes: {ipv4: LIMIT, action: teardown, restartAfter: RESTART_AFTER}`; the ToR
leaks LEAK IPv4 /24s outside the cluster (FRR: blackholes in its kernel, `redistribute kernel`
turned on with vtysh; BIRD: a disabled static protocol added beside its config, `birdc enable`).
What a user would check:
- node1's session to that ToR goes down, the ToR shows the Cease it received ("maximum number of
  prefixes reached", 6/1), node1's status shows the peer over its limit and when it resumes;
- node1's other sessions and the other nodes' sessions to the leaking ToR (no limit) stay up;
- every Pod route of node1 stays in its kernel the whole time, through the other ToR, and Pod
  pings node1 -> node2 and node3 lose (nearly) nothing;
- the leak stopped, the session is Established again restartAfter after the teardown and every
  Pod route has both ToRs as next hops again.
"""
import json
import os
import threading
import time

import pytest

from lab import runner
from tests.lab.conftest import poll, topology_lab
from tests.lab.pinger import Pinger, pod

NODES = ("node1", "node2", "node3")
TORS = {"tor1": ("192.168.51.1", "fd00:51::1"), "tor2": ("192.168.52.1", "fd00:52::1")}
NODE1_AT = {"tor1": "192.168.51.11", "tor2": "192.168.52.11"}  # node1's address on each ToR's segment
LIMIT, LEAK, RESTART_AFTER = 50, 300, 6
LEAKED = [f"11.{1 + i // 256}.{i % 256}.0/24" for i in range(LEAK)]  # outside the cluster CIDRs
PING_INTERVAL = 0.02
MAX_LOST = 5  # per flow: 0.1 s of traffic at 50/s


@pytest.fixture(scope="module")
def mixedtor():
    yield from topology_lab("mixedtor.clab.yml", "pbm")


# ---- each ToR's leak and what it says it received ------------------------------------------------

class FrrLeak:
    """tor1 (FRR): blackholes in its kernel, given to BGP by `redistribute kernel`."""

    def __init__(self, lab) -> None:
        self.lab, self.ns = lab, lab.nodes["tor1"]["netns"]

    def on(self) -> None:
        routes = "".join(f"route replace blackhole {p}\n" for p in LEAKED)
        runner.run(["ip", "-n", self.ns, "-batch", "-"], input=routes)
        self._redistribute("")

    def off(self) -> None:
        self._redistribute("no ")
        runner.run(["ip", "-n", self.ns, "route", "flush", "root", "11.0.0.0/8"], check=False)

    def _redistribute(self, no: str) -> None:
        d = runner.frr_dir(self.lab, "tor1")
        runner.run(["vtysh", "--vty_socket", d, "--config_dir", d, "-c", "conf t", "-c", "router bgp 65000",
                    "-c", "address-family ipv4 unicast", "-c", f"{no}redistribute kernel"], netns=self.ns)

    def cease(self) -> str:
        """The NOTIFICATION FRR last received from node1 ('' before any)."""
        doc = json.loads(runner.vtysh(self.lab, "tor1", f"show bgp neighbor {NODE1_AT['tor1']} json") or "{}")
        peer = doc.get(NODE1_AT["tor1"], {})
        if not peer.get("lastNotificationReason"):
            return ""
        return (f"{peer['lastNotificationReason']} (code/subcode {peer.get('lastErrorCodeSubcode')}; "
                f"{peer.get('lastResetDueTo')})")

    def cleanup(self) -> None:
        self.off()


class BirdLeak:
    """tor2 (BIRD): static protocol leak4, added disabled beside its config (its `include
    "leak*.conf"`), then enabled and disabled with birdc."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.path = os.path.join(runner.bird_dir(lab, "tor2"), "leak4.conf")

    def on(self) -> None:
        if not os.path.exists(self.path):
            with open(self.path, "w") as f:
                f.write("protocol static leak4 {\n  ipv4;\n  disabled;\n"
                        + "".join(f"  route {p} blackhole;\n" for p in LEAKED) + "}\n")
            assert "Reconfigured" in runner.birdc(self.lab, "tor2", "configure")
        assert "enabled" in runner.birdc(self.lab, "tor2", "enable", "leak4")

    def off(self) -> None:
        runner.birdc(self.lab, "tor2", "disable", "leak4", check=False)

    def cease(self) -> str:
        """The Last error line of node1's IPv4 protocol ('' when none)."""
        out = runner.birdc(self.lab, "tor2", "show", "protocols", "all", "node1_4")
        return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.strip().startswith("Last error:")), "")

    def cleanup(self) -> None:
        self.off()
        if os.path.exists(self.path):
            os.unlink(self.path)
            runner.birdc(self.lab, "tor2", "configure", check=False)


LEAKS = {"tor1": FrrLeak, "tor2": BirdLeak}
MAKE = {"tor1": "FRR", "tor2": "BIRD"}


# ---- what node1 sees ---------------------------------------------------------------------------

def hops(lab, node) -> dict[str, set[str]]:
    """Each podbgp route of node's kernel: prefix -> its gateways."""
    out = {}
    for fam in ("-4", "-6"):
        res = runner.run(["ip", "-n", lab.nodes[node]["netns"], "-j", fam, "route", "show", "proto", "80"])
        for r in json.loads(res.stdout or "[]"):
            out[r["dst"]] = {h["gateway"] for h in r.get("nexthops", [])} or {r.get("gateway")}
    return out


def others(lab, node) -> set[str]:
    return {c for n in NODES if n != node for c in lab.nodes[n]["pod_cidrs"].split(",")}


def ecmp(lab, node) -> bool:
    """Every other node's PodCIDR in node's kernel with both ToRs as next hops."""
    got = hops(lab, node)
    return all(got.get(p) == {TORS["tor1"][":" in p], TORS["tor2"][":" in p]} for p in others(lab, node))


def peers(lab, node) -> dict[str, dict]:
    return {p["address"]: p for p in runner.speaker_status(lab, node)["peers"]}


def all_up(lab) -> bool:
    return all(all(p["state"] == "up" for p in peers(lab, n).values()) for n in NODES)


class RouteWatch:
    """node1's podbgp routes sampled every 50 ms in a thread: (unix time, prefix -> gateways)."""

    def __init__(self, lab, node: str) -> None:
        self.samples: list[tuple[float, dict[str, set[str]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(lab, node), daemon=True)
        self._thread.start()

    def _run(self, lab, node) -> None:
        while not self._stop.wait(0.05):
            t = time.time()
            now = hops(lab, node)
            self.samples.append(((t + time.time()) / 2, now))  # the middle of the reading

    def stop(self) -> list[tuple[float, dict[str, set[str]]]]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.samples


def _annotate(lab, tor: str | None) -> None:
    """node1's IPv4 peer at tor gets the limit through the Node's annotation; None removes it."""
    if tor is None:
        runner.kubectl(lab, "annotate", "node", "node1", "podbgp.io/peers-")
        return
    peer = (f"[{{address: {TORS[tor][0]}, asn: 65000, holdTime: 9, maxPrefixes: "
            f"{{ipv4: {LIMIT}, action: teardown, restartAfter: {RESTART_AFTER}}}}}]")
    runner.kubectl(lab, "annotate", "--overwrite", "node", "node1", f"podbgp.io/peers={peer}")


# ---- the test ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tor", ["tor1", "tor2"])
def test_max_prefixes_teardown_keeps_the_pod_routes_through_the_other_tor(mixedtor, tor):
    lab, addr = mixedtor, TORS[tor][0]
    other = next(t for t in TORS if t != tor)
    leak = LEAKS[tor](lab)
    poll(lambda: all_up(lab) and ecmp(lab, "node1"), timeout=60, interval=0.2)
    _annotate(lab, tor)
    pingers: dict[str, Pinger] = {}
    watch = None
    try:
        poll(lambda: peers(lab, "node1")[addr].get("maxPrefixes") == {"ipv4": LIMIT}, timeout=30, interval=0.2)
        poll(lambda: all_up(lab) and ecmp(lab, "node1"), timeout=30, interval=0.2)
        before = {n: {a: p["since"] for a, p in peers(lab, n).items()} for n in NODES}
        src = pod(lab, "node1-pod1")
        pingers = {f"{d} {fam}": Pinger(src["netns"], pod(lab, d)[fam], interval=PING_INTERVAL)
                   for d in ("node2-pod1", "node3-pod1") for fam in ("ipv4", "ipv6")}
        watch = RouteWatch(lab, "node1")
        time.sleep(1.0)  # a baseline of replies and route samples

        t_leak = time.time()
        leak.on()
        poll(lambda: peers(lab, "node1")[addr].get("resumeAt"), timeout=30, interval=0.1)
        suspended = peers(lab, "node1")[addr]
        t_down = suspended["since"]
        poll(lambda: leak.cease(), timeout=10, interval=0.1)
        cease = leak.cease()
        leak.off()  # before the resume, or the session goes over again at once

        poll(lambda: peers(lab, "node1")[addr]["state"] == "up", timeout=RESTART_AFTER + 30, interval=0.2)
        t_up = peers(lab, "node1")[addr]["since"]
        t_ecmp = t_up + poll(lambda: ecmp(lab, "node1"), timeout=30, interval=0.05)
        time.sleep(1.0)  # replies after
        samples = watch.stop()
        results = {name: p.stop() for name, p in pingers.items()}
        after = {n: {a: p["since"] for a, p in peers(lab, n).items()} for n in NODES}
    finally:
        if watch:
            watch.stop()
        for p in pingers.values():
            p.kill()
        leak.cleanup()
        _annotate(lab, None)

    # what was seen, printed before any assertion
    v4, v6 = TORS[tor]
    missing = [(t, sorted(others(lab, "node1") - set(h))) for t, h in samples if not others(lab, "node1") <= set(h)]
    without = [t for t, h in samples if not any(v4 in g for g in h.values())]  # samples with the ToR's IPv4 path gone
    only_other = [t for t, h in samples if t_down + 0.5 < t < t_up
                  and all(g == {TORS[other][":" in p]} for p, g in h.items() if ":" not in p)]
    print(f"\n{MAKE[tor]} {tor}: leak of {LEAK} IPv4 routes, node1's maxPrefixes ipv4 {LIMIT}, teardown, "
          f"restartAfter {RESTART_AFTER} s")
    print(f"  session node1 -> {addr} torn down {t_down - t_leak:.2f} s after the leak began; "
          f"{tor} received: {cease!r}")
    print(f"  node1's status while suspended: state {suspended['state']}, overLimit {suspended['overLimit']!r}, "
          f"overBy {suspended['overBy']}, resumeAt teardown + {suspended['resumeAt'] - t_down:.1f} s")
    print(f"  Established again {t_up - t_down:.2f} s after the teardown; ECMP over both ToRs again "
          f"{t_ecmp - t_up:.2f} s after that")
    print(f"  node1's kernel sampled {len(samples)} times (every ~50 ms): other nodes' PodCIDRs missing in "
          f"{len(missing)}; {tor}'s IPv4 paths out of it in {len(without)} samples, from "
          f"{(without or [t_down])[0] - t_down:+.2f} s to {(without or [t_down])[-1] - t_down:+.2f} s of the teardown")
    for name, r in sorted(results.items()):
        print(f"  ping node1-pod1 -> {name:<15} sent {r.sent} lost {r.lost}")

    assert cease and "maximum number of prefixes reached" in cease.lower(), cease
    if tor == "tor1":
        assert "0601" in cease  # Cease (6), subcode 1
    assert t_down - t_leak < 10
    assert "ipv4" in suspended["overLimit"] and f"maxPrefixes {LIMIT}" in suspended["overLimit"], suspended
    assert suspended["overBy"] > 0
    assert abs(suspended["resumeAt"] - t_down - RESTART_AFTER) < 1.0
    assert RESTART_AFTER - 0.5 <= t_up - t_down <= RESTART_AFTER + 5
    assert not missing, missing[:3]  # every Pod route stayed, through the other ToR
    assert only_other, "the torn-down ToR's paths never left node1's kernel"
    for name, r in results.items():
        assert r.lost <= MAX_LOST, (name, r.sent, r.lost)
    # only node1's IPv4 session to the leaking ToR was reset: not its others, not the other nodes'
    # sessions to the same leak (no limit there: the leak is refused and counted, the sessions kept)
    changed = sorted((n, a) for n in NODES for a in before[n] if after[n][a] != before[n][a])
    assert changed == [("node1", addr)], changed
