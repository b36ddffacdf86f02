"""Issue: nothing lost, nothing hijacked. Each event runs under a continuous 100 packets/s
Pod-to-Pod ping (IPv4 and IPv6, node1-pod1 -> node2-pod1); losses are counted by ping itself."""
import json
import os
import signal
import subprocess
import time


from lab import demo, runner
from tests.lab.conftest import poll
from tests.lab.pinger import traffic

NODES = ("node1", "node2", "node3")
NODE3 = {"10.42.3.0/24", "fd00:42:0:3::/64"}
NODE2 = {"10.42.2.0/24", "fd00:42:0:2::/64"}


def status(lab, node):
    try:
        return runner.speaker_status(lab, node)
    except (runner.LabError, subprocess.CalledProcessError, json.JSONDecodeError, subprocess.TimeoutExpired):
        return None


def established(lab, node):
    doc = status(lab, node)
    return bool(doc) and doc["converged"] and all(p["state"] == "up" for p in doc["peers"]) and doc


def routes(lab, node):
    return demo.installed(lab, node)


def table(lab, node):
    out = ""
    for fam in ("-4", "-6"):
        out += runner.run(["ip", fam, "route", "show", "proto", "80"], netns=lab.nodes[node]["netns"]).stdout
    return out


def recreate(lab, node_obj):
    for key in ("resourceVersion", "uid", "creationTimestamp"):
        node_obj["metadata"].pop(key, None)
    runner.kubectl(lab, "create", "-f", "-", input=json.dumps(node_obj))
    poll(lambda: all(NODE3 <= routes(lab, n) for n in ("node1", "node2")), timeout=10)


def test_1_speaker_sigterm_and_restart_loses_nothing(lab):
    res = {}
    with traffic(lab, res):
        runner.stop_speaker(lab, "node2", sig=signal.SIGTERM)
        assert NODE2 - {"x"} and {"10.42.1.0/24", "10.42.3.0/24"} <= routes(lab, "node2")  # kept on stop
        runner.start_speaker(lab, "node2")
        poll(lambda: established(lab, "node2"), timeout=30, interval=0.2)
    assert res["ipv4"].sent >= 100 and res["ipv4"].lost == 0 and res["ipv6"].lost == 0, res


def test_2_exabgp_sigkill_loses_nothing_and_comes_back(lab):
    before = status(lab, "node2")
    pid = before["exabgpPid"]
    res = {}
    with traffic(lab, res):
        os.kill(pid, signal.SIGKILL)
        poll(lambda: (d := status(lab, "node2")) and d["exabgpPid"] not in (None, pid)
             and all(p["state"] == "up" for p in d["peers"]), timeout=30, interval=0.1)
    after = status(lab, "node2")
    assert after["counters"]["exabgp_restarts"] >= 1
    assert res["ipv4"].lost == 0 and res["ipv6"].lost == 0, res
    summary = json.loads(runner.vtysh(lab, "tor", "show bgp ipv4 unicast summary json"))
    assert summary["peers"]["192.168.50.12"]["state"] == "Established"


def test_3_tor_bgpd_restart_loses_nothing(lab):
    res = {}
    with traffic(lab, res):
        runner.stop_frr(lab, "tor", daemons=("bgpd",))
        poll(lambda: all((d := status(lab, n)) and all(p["state"] != "up" for p in d["peers"]) for n in NODES),
             timeout=15, interval=0.2)
        time.sleep(3)  # the ToR stays down a while; the kernel routes must carry the traffic
        assert all(NODE2 <= routes(lab, n) for n in ("node1", "node3"))
        runner.start_frr(lab, "tor", daemons=("bgpd",))
        poll(lambda: all(established(lab, n) and all(p["state"] == "up" for p in status(lab, n)["peers"])
                         for n in NODES), timeout=60, interval=0.3)
    assert res["ipv4"].lost == 0 and res["ipv6"].lost == 0, res
    # stale paths were refreshed (or swept) once the ToR was back: nothing is left stale
    poll(lambda: not any(x["stale"] for x in status(lab, "node1")["learned"]), timeout=30, interval=0.5)


def test_4_uplink_flap_recovers_within_2s_of_link_up(lab):
    ns = lab.nodes["node2"]["netns"]
    res = {}
    with traffic(lab, res):
        runner.run(["ip", "link", "set", "eth1", "down"], netns=ns)
        poll(lambda: "10.42.1.0/24" not in routes(lab, "node2"), timeout=5)  # the kernel dropped them
        time.sleep(3)
        up_at = time.time()
        runner.run(["ip", "link", "set", "eth1", "up"], netns=ns)
        back = poll(lambda: {"10.42.1.0/24", "fd00:42:0:1::/64"} <= routes(lab, "node2"), timeout=2)
        poll(lambda: True, timeout=1)
        time.sleep(1.5)
    for fam in ("ipv4", "ipv6"):
        first = min(t for t in res[fam].replies if t > up_at)
        assert first - up_at < 2.0, (fam, first - up_at)
    print(f"routes back {back:.3f}s after link up; first replies after "
          f"{min(t for t in res['ipv4'].replies if t > up_at) - up_at:.3f}s (v4), "
          f"{min(t for t in res['ipv6'].replies if t > up_at) - up_at:.3f}s (v6)")


def test_5_api_outage_changes_nothing_and_deletions_land_on_return(lab):
    node3 = json.loads(runner.kubectl(lab, "get", "node", "node3", "-o", "json").stdout)
    before = {n: table(lab, n) for n in NODES}
    runner.stop_apiserver(lab)
    try:
        runner.delete_from_store(lab, "node3")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # nothing may change while the API is away
            assert {n: table(lab, n) for n in NODES} == before
            time.sleep(0.5)
    finally:
        runner.start_apiserver(lab)
    took = poll(lambda: all(not (NODE3 & routes(lab, n)) for n in ("node1", "node2")), timeout=2)
    assert NODE2 <= routes(lab, "node1") and {"10.42.1.0/24"} <= routes(lab, "node2")
    print(f"node3's routes left node1 and node2 {took:.3f}s after the API returned")
    recreate(lab, node3)


def test_6_speaker_sigkill_while_a_node_is_deleted_sweeps_only_that_node(lab):
    node3 = json.loads(runner.kubectl(lab, "get", "node", "node3", "-o", "json").stdout)
    res = {}
    with traffic(lab, res):
        runner.stop_speaker(lab, "node1", sig=signal.SIGKILL)
        runner.kubectl(lab, "delete", "node", "node3", "--wait=false")
        time.sleep(1)
        assert NODE3 <= routes(lab, "node1")  # nobody is there to remove it yet
        runner.start_speaker(lab, "node1")
        deadline = time.monotonic() + 40
        while NODE3 & routes(lab, "node1"):  # node2's routes never leave meanwhile
            assert NODE2 <= routes(lab, "node1")
            assert time.monotonic() < deadline, "node3's stale route was never swept"
            time.sleep(0.02)
        doc = status(lab, "node1")
        assert doc["converged"]
    assert res["ipv4"].lost == 0 and res["ipv6"].lost == 0, res
    recreate(lab, node3)


def tor_config(lab, *lines):
    cmd = []
    for a in ("configure terminal", *lines):
        cmd += ["-c", a]
    d = runner.frr_dir(lab, "tor")
    runner.run(["vtysh", "--vty_socket", d, "--config_dir", d, *cmd], netns=lab.nodes["tor"]["netns"])


def test_7_hijacks_are_refused_and_counted(lab):
    setup = ["route-map HIJACK permit 10", "set ip next-hop 192.168.50.12", "exit",
             "router bgp 65000", "no bgp network import-check", "address-family ipv4 unicast",
             "network 10.42.3.0/24 route-map HIJACK", "network 10.42.2.7/32"]
    try:
        tor_config(lab, *setup)

        def counted():
            d = status(lab, "node1")
            reasons = d["rejectedByReason"] if d else {}
            return reasons.get("next-hop-mismatch", 0) >= 1 and reasons.get("no-such-node", 0) >= 1 and d

        doc = poll(counted, timeout=15, interval=0.2) and status(lab, "node1")
        rejected = {(r["prefix"], r["nextHop"], r["reason"]) for r in doc["rejected"]}
        assert ("10.42.3.0/24", "192.168.50.12", "next-hop-mismatch") in rejected
        assert ("10.42.2.7/32", "192.168.50.1", "no-such-node") in rejected
        for n in NODES:
            assert "10.42.2.7/32" not in routes(lab, n)
            out = runner.run(["ip", "-j", "route", "show", "10.42.3.0/24"], netns=lab.nodes[n]["netns"]).stdout
            assert all(r.get("gateway") != "192.168.50.12" for r in json.loads(out or "[]")), n
    finally:
        tor_config(lab, "router bgp 65000", "address-family ipv4 unicast", "no network 10.42.3.0/24 route-map HIJACK",
                   "no network 10.42.2.7/32")
    poll(lambda: all(NODE3 <= routes(lab, n) for n in ("node1", "node2")), timeout=10)
