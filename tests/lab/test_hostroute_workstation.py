"""Issue 7, item 6: `podbgp host-route` on the lab's workstation (on the ToR's segment, no Node, no
speaker) routes it to the Pods through the nodes; pings reach a Pod on every node, IPv4 and IPv6."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lab import runner
from tests.lab.conftest import poll

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO = "81"


def ws_netns(lab):
    return lab.nodes["workstation"]["netns"]


def table(lab, proto=None):
    """{dst: gateway} of the workstation's main table (both families), optionally of one protocol."""
    out = {}
    for fam in ("-4", "-6"):
        extra = ["proto", proto] if proto else []
        res = runner.run(["ip", "-j", fam, "route", "show", "table", "main", *extra], netns=ws_netns(lab))
        out.update({r["dst"]: r.get("gateway") for r in json.loads(res.stdout or "[]")})
    return out


def node_routes(lab):
    """{podCIDR: the owning Node's InternalIP of the family}, from the Node objects themselves."""
    doc = json.loads(runner.kubectl(lab, "get", "nodes", "-o", "json").stdout)
    want = {}
    for item in doc["items"]:
        addrs = [a["address"] for a in item["status"]["addresses"] if a["type"] == "InternalIP"]
        for cidr in item["spec"]["podCIDRs"]:
            want[cidr] = next(a for a in addrs if (":" in a) == (":" in cidr))
    return want


def ping(lab, address):
    proc = subprocess.run(["ip", "netns", "exec", ws_netns(lab), "ping", "-n", "-q", "-c", "1", "-W", "1", address],
                          capture_output=True, text=True, timeout=10)
    return proc.returncode == 0


def ping_every_pod(lab, deadline=15.0):
    """Ping every Pod (so a Pod on every node), IPv4 and IPv6; each polled until it answers."""
    reached = []
    for pod in lab.pods:
        for fam in ("ipv4", "ipv6"):
            poll(lambda: ping(lab, pod[fam]), timeout=deadline, interval=0.1)
            reached.append(f"{pod['name']} {pod[fam]}")
    return reached


def host_route(lab, *args, log=None):
    argv = ["ip", "netns", "exec", ws_netns(lab), sys.executable, "-m", "speaker.cli", "host-route", *args]
    if log is None:
        return subprocess.run(argv, capture_output=True, text=True, env=runner.tool_env(), cwd=ROOT, timeout=60)
    # `ip netns exec` execs the command: this PID is host-route's own
    return subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=runner.tool_env(), cwd=ROOT)


@pytest.fixture
def clean_workstation(lab):
    """On every path: no host-route routes left behind in the (module-shared) workstation."""
    yield lab
    for fam in ("-4", "-6"):
        runner.run(["ip", fam, "route", "flush", "proto", PROTO], netns=ws_netns(lab), check=False)


def test_kubeconfig_foreground_routes_every_node_follows_nodes_and_removes_its_routes_on_sigterm(clean_workstation,
                                                                                                tmp_path):
    lab = clean_workstation
    want = node_routes(lab)
    assert len(want) == 6 and not set(want) & set(table(lab))  # the workstation starts without a way to the Pods
    with open(tmp_path / "host-route.log", "w+") as log:
        proc = host_route(lab, "--kubeconfig", os.path.join(lab.dir, "node-kubeconfig"), log=log)
        try:
            took = poll(lambda: table(lab, PROTO) == want or proc.poll() is not None, timeout=20)
            assert proc.poll() is None and table(lab, PROTO) == want, open(log.name).read()
            reached = ping_every_pod(lab)

            # following the Nodes: a deleted Node's routes go, a new Node's come
            node3 = json.loads(runner.kubectl(lab, "get", "node", "node3", "-o", "json").stdout)
            runner.kubectl(lab, "delete", "node", "node3", "--wait=false")
            gone = poll(lambda: table(lab, PROTO) == {c: g for c, g in want.items() if ".3." not in c
                                                      and ":3::" not in c}, timeout=10)
            for key in ("resourceVersion", "uid", "creationTimestamp"):
                node3["metadata"].pop(key, None)
            runner.kubectl(lab, "create", "-f", "-", input=json.dumps(node3))
            back = poll(lambda: table(lab, PROTO) == want, timeout=10)
            reached += ping_every_pod(lab)

            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                runner.stop_pid(proc.pid)
        log.seek(0)
        text = log.read()
    poll(lambda: not table(lab, PROTO), timeout=5)
    assert not set(want) & set(table(lab))  # no route to the Pod CIDRs at all
    assert not ping(lab, lab.pods[0]["ipv4"]) and not ping(lab, lab.pods[0]["ipv6"])
    assert "hostroute.ready nodes=3 added=6" in text and "hostroute.stopped removed=6 failed=0" in text, text
    print(f"routes in {took:.2f}s; node3's gone in {gone:.2f}s, back in {back:.2f}s; reached: {', '.join(reached)}")


def test_via_once_then_remove(clean_workstation):
    lab = clean_workstation
    want = {"10.42.2.0/24": "192.168.50.12", "fd00:42:0:2::/64": "fd00:50::12"}
    res = host_route(lab, "--via", "192.168.50.12", "--via", "fd00:50::12", "--once", *want)
    assert res.returncode == 0, res.stderr
    assert table(lab, PROTO) == want
    node2_pods = [p for p in lab.pods if p["node"] == "node2"]
    for pod in node2_pods:
        for fam in ("ipv4", "ipv6"):
            poll(lambda: ping(lab, pod[fam]), timeout=15, interval=0.1)
    res = host_route(lab, "--via", "192.168.50.12", "--via", "fd00:50::12", "--remove", *want)
    assert res.returncode == 0, res.stderr
    assert table(lab, PROTO) == {} and not set(want) & set(table(lab))
    started = time.monotonic()
    assert not ping(lab, node2_pods[0]["ipv4"]) and time.monotonic() - started < 5
