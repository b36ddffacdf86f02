"""`podbgp explain PREFIX` inside node1 of the lab: an installed prefix, rejected ones (a
more-specific hijack and a next hop that is not the owner's, both originated by the ToR), and one
blocked by a foreign route; `--json` parsed. Everything injected is removed on every path. And
where /explain and /status are served: on the node's Unix socket, not on the address a Pod reaches."""
import json
import os
import stat
import subprocess
import time

from lab import demo, runner
from tests.lab.conftest import poll

TOR = "192.168.50.1"


def explain(lab, prefix, *flags):
    proc = subprocess.run(runner.exec_argv(lab, "node1", ["podbgp", "explain", prefix, *flags]), capture_output=True,
                          text=True, env=runner.tool_env(), timeout=15)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def explain_json(lab, prefix):
    return json.loads(explain(lab, prefix, "--json"))


def tor_bgp(lab, *lines):
    """Configuration lines under the ToR's `router bgp 65000`, through vtysh."""
    cmd = []
    for line in ("configure terminal", "router bgp 65000", *lines):
        cmd += ["-c", line]
    d = runner.frr_dir(lab, "tor")
    runner.run(["vtysh", "--vty_socket", d, "--config_dir", d, *cmd], netns=lab.nodes["tor"]["netns"])


def test_installed_prefix_via_its_owner_v4_and_v6(lab):
    text = explain(lab, "10.42.2.0/24")
    print(f"\n$ podbgp explain 10.42.2.0/24\n{text}")
    assert text.splitlines()[0] == "10.42.2.0/24: installed via 192.168.50.12"
    doc = explain_json(lab, "10.42.2.0/24")
    print(f"$ podbgp explain 10.42.2.0/24 --json\n{json.dumps(doc, indent=2)}")
    assert doc["verdict"] == "installed" and doc["owner"]["node"] == "node2"
    assert [(p["peer"], p["nextHop"], p["verdict"]) for p in doc["paths"]] == [(TOR, "192.168.50.12", "accepted")]
    k = doc["kernel"]
    assert k["source"] == "netlink" and "error" not in k
    assert k["routes"] == [{"owner": "podbgp", "protocol": 80, "protocolName": "podbgp", "metric": 20,
                            "via": ["192.168.50.12"]}]
    v6 = explain_json(lab, "fd00:42:0:2::/64")
    assert v6["summary"] == "installed via fd00:50::12" and v6["paths"][0]["peer"] == "fd00:50::1"
    own = explain_json(lab, "10.42.1.0/24")
    assert own["verdict"] == "own" and own["own"] == {"own": True, "announced": True}
    # /status gives each peer the unix time it entered its state
    peers = runner.speaker_status(lab, "node1")["peers"]
    assert all(p["state"] == "up" and 0 < p["since"] <= time.time() for p in peers), peers


def test_rejected_hijack_and_next_hop_not_the_owner(lab):
    hijack, v6 = "10.42.2.128/25", "fd00:42:0:2::/64"
    try:
        tor_bgp(lab, "no bgp network import-check", "address-family ipv4 unicast", f"network {hijack}")
        tor_bgp(lab, "address-family ipv6 unicast", f"network {v6}")  # the ToR's own path wins over node2's
        poll(lambda: explain_json(lab, hijack)["verdict"] == "rejected"
             and explain_json(lab, v6)["verdict"] == "rejected", timeout=15, interval=0.2)
        text = explain(lab, hijack)
        print(f"\n$ podbgp explain {hijack}\n{text}")
        assert text.splitlines()[0] == (f"{hijack}: rejected: {hijack} is more specific than node2's PodCIDR "
                                        "10.42.2.0/24; no Node holds it (a hijack?)")
        doc = explain_json(lab, hijack)
        print(f"$ podbgp explain {hijack} --json\n{json.dumps(doc, indent=2)}")
        assert doc["owner"]["state"] == "inside" and doc["owner"]["cidr"] == "10.42.2.0/24"
        assert [(p["nextHop"], p["reason"]) for p in doc["paths"]] == [(TOR, "no-such-node")]
        assert doc["kernel"]["routes"] == [] and doc["desired"] is None
        text = explain(lab, v6)
        print(f"$ podbgp explain {v6}\n{text}")
        doc = explain_json(lab, v6)
        assert [(p["nextHop"], p["reason"]) for p in doc["paths"]] == [("fd00:50::1", "next-hop-mismatch")]
        assert doc["summary"] == "rejected: next hop fd00:50::1 is not node2's InternalIP (fd00:50::12)"
        assert v6 not in demo.installed(lab, "node1")
    finally:
        tor_bgp(lab, "address-family ipv4 unicast", f"no network {hijack}")
        tor_bgp(lab, "address-family ipv6 unicast", f"no network {v6}")
        tor_bgp(lab, "bgp network import-check")
    poll(lambda: explain_json(lab, v6)["summary"] == "installed via fd00:50::12", timeout=15, interval=0.2)
    assert explain_json(lab, hijack)["summary"] == "no peer offers it; no Node holds it; it is more specific than " \
                                                   "node2's PodCIDR 10.42.2.0/24 (a hijack?)"


def test_blocked_by_a_foreign_route_then_ours_comes_back(lab):
    n1 = lab.nodes["node1"]["netns"]
    prefix = "10.42.3.0/24"
    try:
        # our route holds the key (prefix, metric 20): `ip route add` would be refused (EEXIST);
        # replace puts the foreign route in its place, as an operator's static route would
        runner.run(["ip", "route", "replace", prefix, "via", TOR, "proto", "static", "metric", "20"], netns=n1)
        poll(lambda: explain_json(lab, prefix)["verdict"] == "blocked", timeout=10, interval=0.2)
        text = explain(lab, prefix)
        print(f"\n$ podbgp explain {prefix}\n{text}")
        assert text.splitlines()[0] == f"{prefix}: blocked by a foreign route (proto static) at metric 20"
        doc = explain_json(lab, prefix)
        print(f"$ podbgp explain {prefix} --json\n{json.dumps(doc, indent=2)}")
        assert doc["kernel"]["blocked"] and doc["desired"]["via"] == ["192.168.50.13"]
        assert doc["kernel"]["routes"] == [{"owner": "foreign", "protocol": 4, "protocolName": "static", "metric": 20,
                                            "via": [TOR]}]
        assert prefix not in demo.installed(lab, "node1")
        assert runner.speaker_status(lab, "node1")["blocked"] == [prefix]
    finally:
        runner.run(["ip", "route", "del", prefix, "proto", "static", "metric", "20"], netns=n1, check=False)
    poll(lambda: prefix in demo.installed(lab, "node1"), timeout=10, interval=0.1)
    text = explain(lab, prefix)
    print(f"$ podbgp explain {prefix}  # after ip route del\n{text}")
    assert text.splitlines()[0] == f"{prefix}: installed via 192.168.50.13"


def http_from(lab, pod, url):
    """curl in the Pod's network namespace: (HTTP code, body)."""
    out = runner.run(["curl", "-s", "-m", "3", "-w", "\n%{http_code}", url], netns=pod["netns"]).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body  # as served, its newline included


def test_from_a_pod_the_node_answers_metrics_but_not_status_or_explain(lab):
    """Issue 15, must-show 4: the node's statusAddress, as a Pod reaches it, serves Prometheus and
    the probes; /status and /explain (routes, peers, the policy's reasons) only on the node's
    Unix socket, through which `podbgp status` still shows the peers."""
    pod = next(p for p in lab.pods if p["node"] == "node1")
    node = json.loads(runner.kubectl(lab, "get", "node", "node1", "-o", "json").stdout)
    ip = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP" and ":" not in a["address"])
    print(f"\nfrom {pod['name']} ({pod['ipv4']}) to node1's InternalIP {ip}:9469")
    got = {}
    for path in ("/metrics", "/healthz", "/readyz", "/status", "/explain?prefix=10.42.1.0/24"):
        code, body = http_from(lab, pod, f"http://{ip}:9469{path}")
        got[path] = code, body
        first = next((line for line in body.splitlines() if not line.startswith("#")), "")
        print(f"  GET {path} -> {code} {first[:200]}")
    assert got["/metrics"][0] == 200 and "podbgp_peer_up{" in got["/metrics"][1]
    assert "# TYPE podbgp_installed_routes gauge" in got["/metrics"][1]
    assert got["/healthz"] == (200, "ok\n") and got["/readyz"] == (200, "ok\n")
    for path in ("/status", "/explain?prefix=10.42.1.0/24"):
        code, body = got[path]
        assert code == 404 and body.count("\n") == 1 and body.endswith("\n") and "Unix socket" in body and "podbgp status" in body, (path, body)
        assert "192.168.50" not in body and "10.42." not in body  # nothing of the node's peers or routes
    sock = runner.speaker_socket(lab, "node1")
    mode = os.stat(sock).st_mode
    print(f"  {sock}: mode {stat.S_IMODE(mode):04o}, uid {os.stat(sock).st_uid}")
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    proc = subprocess.run(runner.exec_argv(lab, "node1", ["podbgp", "status"]), capture_output=True, text=True,
                          env=runner.tool_env(), timeout=15)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.splitlines()
    print("$ podbgp status  # on node1, through the socket\n" + "\n".join(table[:5]))
    peers = [line.split()[:3] for line in table[table.index("PEER            ASN      STATE  PATHS  EOR") + 1:][:2]]
    assert peers == [["192.168.50.1", "65000", "up"], ["fd00:50::1", "65000", "up"]], table
