"""Services over BGP in the default topology: the FRR ToR learns each Service IP from exactly the
nodes that serve it, the workstation reaches it through the ToR, the elected allocator hands out
LoadBalancer IPs, and a rolling update under load fails no request.

Services and EndpointSlices are written as the endpoint controller would (conditions, nodeName,
ports) through the official Python client; the lab's nftables stand-in for kube-proxy sends a
Service IP to the endpoints; every Pod answers HTTP on 8080 with its name.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from lab import runner
from tests.lab.conftest import poll, topology_lab

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE_IP = {"node1": "192.168.50.11", "node2": "192.168.50.12", "node3": "192.168.50.13"}
POOL = ipaddress.ip_network("203.0.113.0/24")
LEASE_NS, LEASE = "kube-system", "podbgp-allocator"
pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab():
    yield from topology_lab(prefix="pbs")


@pytest.fixture(scope="module")
def api(lab):
    from kubernetes import client, config
    c = config.new_client_from_config(config_file=lab.kubeconfig)
    yield client.CoreV1Api(c), client.DiscoveryV1Api(c), client.CoordinationV1Api(c)
    c.close()


@pytest.fixture
def ns(api):
    """A namespace name unique to the test; every Service and slice in it is deleted afterwards."""
    core, disc, _ = api
    name = f"t{uuid.uuid4().hex[:8]}"
    yield name
    for s in core.list_namespaced_service(name).items:
        core.delete_namespaced_service(s.metadata.name, name)
    for s in disc.list_namespaced_endpoint_slice(name).items:
        disc.delete_namespaced_endpoint_slice(s.metadata.name, name)


# ---- writing objects as the endpoint controller would -------------------------------------------

def service(core, ns: str, name: str, *, type_: str = "LoadBalancer", etp: str = "Local", port: int = 80,
            annotations: dict | None = None, external_ips: list[str] | None = None, lb_ip: str | None = None,
            labels: dict | None = None) -> dict:
    spec: dict = {"type": type_, "ports": [{"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP"}],
                  "selector": {"app": name}}
    if type_ in ("LoadBalancer", "NodePort") or external_ips:
        spec["externalTrafficPolicy"] = etp
    if external_ips:
        spec["externalIPs"] = external_ips
    if lb_ip:
        spec["loadBalancerIP"] = lb_ip
    body = {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}}, "spec": spec}
    return core.create_namespaced_service(ns, body).to_dict()


def endpoint(lab, pod: str, ready: bool = True, serving: bool | None = None, terminating: bool = False) -> dict:
    p = next(x for x in lab.pods if x["name"] == pod)
    return {"addresses": [p["ipv4"]], "nodeName": p["node"], "targetRef": {"kind": "Pod", "name": pod},
            "conditions": {"ready": ready, "serving": ready if serving is None else serving,
                           "terminating": terminating}}


def put_slice(disc, ns: str, svc: str, endpoints: list[dict]) -> None:
    """The Service's one IPv4 slice, created or replaced with these endpoints."""
    name = f"{svc}-v4"
    body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": svc,
                                                  "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "endpoints": endpoints, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
    try:
        old = disc.read_namespaced_endpoint_slice(name, ns)
    except Exception:
        disc.create_namespaced_endpoint_slice(ns, body)
        return
    body["metadata"]["resourceVersion"] = old.metadata.resource_version
    disc.replace_namespaced_endpoint_slice(name, ns, body)


def ingress_ip(core, ns: str, name: str, timeout: float = 15) -> str:
    found: list[str] = []

    def has() -> bool:
        ing = (core.read_namespaced_service(name, ns).status.load_balancer.ingress or [])
        found[:] = [i.ip for i in ing if i.ip]
        return bool(found)
    poll(has, timeout=timeout)
    return found[0]


# ---- what the network shows -------------------------------------------------------------------

def tor_next_hops(lab, ip: str) -> set[str]:
    """The next hops of the ToR's kernel route to ip/32 (ECMP: one per node announcing it)."""
    out = runner.run(["ip", "route", "show", f"{ip}/32"], netns=lab.netns("tor")).stdout
    return set(re.findall(r"via (\S+)", out))


def status_or_none(lab, node: str) -> dict | None:
    """The speaker's status, or None while it does not answer (starting)."""
    try:
        return runner.speaker_status(lab, node)
    except runner.LabError:
        return None


def announces(lab, node: str, ip: str, key: str) -> bool:
    """The node's speaker announces ip/32 for the Service key."""
    return any(r["prefix"] == f"{ip}/32" and r["announced"] and key in r["services"]
               for r in runner.speaker_status(lab, node)["serviceRoutes"])


def pod_node(lab, pod: str) -> str:
    return next(x["node"] for x in lab.pods if x["name"] == pod)


def nodes_of(hops: set[str]) -> set[str]:
    return {n for n, a in NODE_IP.items() if a in hops}


def get_many(lab, ip: str, count: int) -> list[tuple[bool, str]]:
    """count requests from the workstation, each on its own connection, as fast as they go."""
    out = tempfile.mktemp(prefix="pbs-load-")
    try:
        subprocess.run(["ip", "netns", "exec", lab.netns("workstation"), sys.executable, "-m", "tests.lab.httpload",
                        f"http://{ip}/", "--rate", "200", "--count", str(count), "--seconds", "30", "--out", out],
                       cwd=ROOT, check=True, timeout=60)
        with open(out) as f:
            return [(r["ok"], r["body"]) for r in map(json.loads, f)]
    finally:
        if os.path.exists(out):
            os.unlink(out)


# ---- 1. LoadBalancer, eTP=Local: two nodes serve, two paths, every request answered ------------

def test_local_lb_is_announced_by_the_nodes_with_endpoints_and_every_request_answers(lab, api, ns):
    core, disc, _ = api
    service(core, ns, "web")
    ip = ingress_ip(core, ns, "web")
    assert ipaddress.ip_address(ip) in POOL
    put_slice(disc, ns, "web", [endpoint(lab, "node1-pod1"), endpoint(lab, "node2-pod1")])
    poll(lambda: nodes_of(tor_next_hops(lab, ip)) == {"node1", "node2"}, timeout=5)
    assert len(tor_next_hops(lab, ip)) == 2
    answers = get_many(lab, ip, 100)
    failed = [b for ok, b in answers if not ok]
    assert len(answers) == 100 and not failed, failed[:5]
    print(f"eTP=Local: ToR paths {sorted(tor_next_hops(lab, ip))}; 100 requests: "
          f"{ {b: sum(x == b for _, x in answers) for b in sorted({x for _, x in answers})} }")
    assert {b for _, b in answers} == {"node1-pod1", "node2-pod1"}
    # an endpoint on node3 adds the third path; removed, it goes again
    put_slice(disc, ns, "web", [endpoint(lab, "node1-pod1"), endpoint(lab, "node2-pod1"), endpoint(lab, "node3-pod1")])
    poll(lambda: nodes_of(tor_next_hops(lab, ip)) == {"node1", "node2", "node3"}, timeout=5)
    put_slice(disc, ns, "web", [endpoint(lab, "node1-pod1"), endpoint(lab, "node2-pod1")])
    poll(lambda: nodes_of(tor_next_hops(lab, ip)) == {"node1", "node2"}, timeout=5)
    doc = runner.speaker_status(lab, "node1")
    mine = [r for r in doc["serviceRoutes"] if r["prefix"] == f"{ip}/32"]
    assert mine and mine[0]["announced"] and f"{ns}/web" in mine[0]["services"], mine


# ---- a speaker restart withdraws nothing that is served -----------------------------------------

def test_a_speaker_restart_keeps_every_service_path_and_request(lab, api, ns):
    """node1's speaker stops and starts again: the ToR keeps node1's path all along (graceful
    restart, then End-of-RIB only once the restarted speaker has listed the Services again) and
    no request fails."""
    core, disc, _ = api
    service(core, ns, "rs")
    ip = ingress_ip(core, ns, "rs")
    put_slice(disc, ns, "rs", [endpoint(lab, "node1-pod1"), endpoint(lab, "node2-pod1")])
    # the address may be one an earlier test's Service just released: wait until both nodes announce
    # it for this Service, not for that one, before watching the ToR
    poll(lambda: all(announces(lab, n, ip, f"{ns}/rs") for n in ("node1", "node2")), timeout=5)
    poll(lambda: nodes_of(tor_next_hops(lab, ip)) == {"node1", "node2"}, timeout=5)
    seen: list[set[str]] = []
    at: list[float] = []
    done = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 90
        while not done.is_set() and time.monotonic() < deadline:
            at.append(time.time())
            seen.append(nodes_of(tor_next_hops(lab, ip)))
            done.wait(0.02)

    out = tempfile.mktemp(prefix="pbs-restart-")
    load = subprocess.Popen(["ip", "netns", "exec", lab.netns("workstation"), sys.executable, "-m", "tests.lab.httpload",
                             f"http://{ip}/", "--rate", "20", "--seconds", "90", "--out", out], cwd=ROOT)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        before = runner.speaker_status(lab, "node1")["exabgpPid"]
        poll(lambda: os.path.exists(out) and os.path.getsize(out) > 0, timeout=5)
        stopped_at = time.time()
        runner.stop_speaker(lab, "node1")
        runner.start_speaker(lab, "node1")
        poll(lambda: (status_or_none(lab, "node1") or {}).get("services", {}).get("live"), timeout=30)
        poll(lambda: all(p["state"] == "up" for p in runner.speaker_status(lab, "node1")["peers"]), timeout=30)
        assert runner.speaker_status(lab, "node1")["exabgpPid"] != before
        live_at = time.time()
        time.sleep(2.0)  # past the End-of-RIB: a sweep of the path would show now
    finally:
        done.set()
        watcher.join(5)
        load.terminate()
        load.wait(timeout=10)
    with open(out) as f:
        rows = [json.loads(x) for x in f]
    os.unlink(out)
    failed = [r for r in rows if not r["ok"]]
    print(f"speaker restart: {len(seen)} looks at the ToR, node1's path missing in "
          f"{sum('node1' not in s for s in seen)}; {len(rows)} requests, {len(failed)} failed")
    missing = [(round(t - stopped_at, 3), sorted(s)) for t, s in zip(at, seen) if s != {"node1", "node2"}]
    assert seen and not missing, (f"ToR paths other than node1+node2, seconds after the stop (live after "
                                  f"{live_at - stopped_at:.2f}s): {missing[:5]}")
    assert rows[0]["t"] < stopped_at and rows[-1]["t"] > live_at + 1 and not failed, failed[:5]


# ---- 2. a rolling update under 20 requests/s fails no request -----------------------------------

def test_rolling_update_under_load_fails_no_request(lab, api, ns):
    core, disc, _ = api
    since = {n: {p["address"]: p["since"] for p in runner.speaker_status(lab, n)["peers"]} for n in NODE_IP}
    service(core, ns, "roll")
    ip = ingress_ip(core, ns, "roll")
    live = ["node1-pod1", "node2-pod1"]
    put_slice(disc, ns, "roll", [endpoint(lab, p) for p in live])
    poll(lambda: nodes_of(tor_next_hops(lab, ip)) == {"node1", "node2"}, timeout=5)
    out = tempfile.mktemp(prefix="pbs-roll-")
    load = subprocess.Popen(["ip", "netns", "exec", lab.netns("workstation"), sys.executable, "-m", "tests.lab.httpload",
                             f"http://{ip}/", "--rate", "20", "--seconds", "90", "--out", out], cwd=ROOT)
    stopped: list[str] = []
    try:
        time.sleep(1.0)  # load before the first step (it is what the update runs under)
        for old, new in (("node1-pod1", "node3-pod1"), ("node2-pod1", "node1-pod2")):
            # surge: the new Pod is ready first, then the old one terminates, serving for 5 s
            live.append(new)
            put_slice(disc, ns, "roll", [endpoint(lab, p) for p in live])
            poll(lambda n=new: pod_node(lab, n) in nodes_of(tor_next_hops(lab, ip)), timeout=5)
            put_slice(disc, ns, "roll", [endpoint(lab, p, ready=p != old, serving=True, terminating=p == old)
                                         for p in live])
            t0 = time.monotonic()
            node = pod_node(lab, old)
            if node not in {pod_node(lab, p) for p in live if p != old}:
                poll(lambda n=node: n not in nodes_of(tor_next_hops(lab, ip)), timeout=1)
            time.sleep(max(0.0, 5.0 - (time.monotonic() - t0)))  # the grace period the Pod keeps serving
            live.remove(old)
            put_slice(disc, ns, "roll", [endpoint(lab, p) for p in live])
            # as a kubelet's SIGTERM comes after kube-proxy dropped the endpoint: the old Pod's
            # server stops once no node's proxy table sends to it (stopped at once, a request
            # DNATed to it just before was reset: 2 failed in one full run)
            gone = next(x["ipv4"] for x in lab.pods if x["name"] == old)
            poll(lambda a=gone: not any(f"to {a}:" in runner.run(["nft", "list", "table", "inet", "podbgp-proxy"],
                                                               netns=lab.nodes[n]["netns"]).stdout
                                        for n in ("node1", "node2", "node3")), timeout=5, interval=0.05)
            runner.stop_pod_server(lab, old)
            stopped.append(old)
        time.sleep(2.0)
    finally:
        load.terminate()
        load.wait(timeout=10)
        for pod in stopped:
            runner.start_pod_server(lab, pod)
    with open(out) as f:
        rows = [json.loads(x) for x in f]
    os.unlink(out)
    failed = [r for r in rows if not r["ok"]]
    print(f"rolling update: {len(rows)} requests at 20/s, {len(failed)} failed, answers by Pod: "
          f"{ {b: sum(r['body'] == b for r in rows) for b in sorted({r['body'] for r in rows})} }")
    assert len(rows) >= 20 * 10, len(rows)
    assert not failed, failed[:5]
    assert {r["body"] for r in rows} >= {"node1-pod1", "node3-pod1", "node1-pod2"}
    # Services and endpoints came and went: no session of any node was reset
    assert {n: {p["address"]: p["since"] for p in runner.speaker_status(lab, n)["peers"]} for n in NODE_IP} == since


# ---- 3. eTP=Cluster follows "any endpoint ready"; deletion; ExternalIPs -------------------------

def test_cluster_policy_withdraws_everywhere_without_endpoints_and_on_delete(lab, api, ns):
    core, disc, _ = api
    service(core, ns, "cl", etp="Cluster")
    ip = ingress_ip(core, ns, "cl")
    put_slice(disc, ns, "cl", [endpoint(lab, "node3-pod1")])
    poll(lambda: nodes_of(tor_next_hops(lab, ip)) == {"node1", "node2", "node3"}, timeout=5)
    assert {b for ok, b in get_many(lab, ip, 20) if ok} == {"node3-pod1"}
    put_slice(disc, ns, "cl", [])
    took = poll(lambda: not tor_next_hops(lab, ip), timeout=1, interval=0.005)
    put_slice(disc, ns, "cl", [endpoint(lab, "node2-pod2")])
    poll(lambda: len(tor_next_hops(lab, ip)) == 3, timeout=5)
    core.delete_namespaced_service("cl", ns)
    took_delete = poll(lambda: not tor_next_hops(lab, ip), timeout=1, interval=0.005)
    print(f"eTP=Cluster: last endpoint gone -> ToR route gone {took * 1000:.0f} ms; Service deleted -> {took_delete * 1000:.0f} ms")
    assert took < 1 and took_delete < 1


def test_external_ips_inside_the_allowed_range_only(lab, api, ns):
    core, disc, _ = api
    service(core, ns, "ext", type_="ClusterIP", etp="Cluster", external_ips=["198.51.100.7", "192.0.2.7"])
    put_slice(disc, ns, "ext", [endpoint(lab, "node1-pod2")])
    poll(lambda: len(tor_next_hops(lab, "198.51.100.7")) == 3, timeout=5)
    assert not tor_next_hops(lab, "192.0.2.7")
    assert {b for ok, b in get_many(lab, "198.51.100.7", 10) if ok} == {"node1-pod2"}
    doc = runner.speaker_status(lab, "node2")
    assert "192.0.2.7/32" not in {r["prefix"] for r in doc["serviceRoutes"] if r["announced"]}
    why = doc["services"]["errors"].get(f"{ns}/ext", "")
    assert "192.0.2.7" in why and "allowedCIDRs" in why, doc["services"]["errors"]


# ---- 4. the allocator ---------------------------------------------------------------------------

def test_allocator_distinct_requested_shared_released_and_failover(lab, api, ns):
    core, disc, coord = api
    a = ingress_ip(core, ns, service(core, ns, "a")["metadata"]["name"])
    b = ingress_ip(core, ns, service(core, ns, "b")["metadata"]["name"])
    assert a != b and {ipaddress.ip_address(a), ipaddress.ip_address(b)} <= set(POOL.hosts())
    want = "203.0.113.200"
    c = ingress_ip(core, ns, service(core, ns, "c", annotations={"podbgp.io/load-balancer-ips": want})["metadata"]["name"])
    assert c == want
    s1 = ingress_ip(core, ns, service(core, ns, "s1", port=80, annotations={"podbgp.io/sharing-key": "k"})["metadata"]["name"])
    s2 = ingress_ip(core, ns, service(core, ns, "s2", port=443, annotations={"podbgp.io/sharing-key": "k"})["metadata"]["name"])
    assert s1 == s2 and s1 not in (a, b, c)
    core.delete_namespaced_service("a", ns)
    again = ingress_ip(core, ns, service(core, ns, "d")["metadata"]["name"])
    assert again == a  # the lowest free address: the one released
    # the allocating speaker is killed (no chance to release the Lease): another takes the Lease
    # and allocates the next Service
    holder = coord.read_namespaced_lease(LEASE, LEASE_NS).spec.holder_identity
    assert holder in NODE_IP
    runner.stop_speaker(lab, holder, sig=signal.SIGKILL)
    try:
        t0 = time.monotonic()
        e = ingress_ip(core, ns, service(core, ns, "e")["metadata"]["name"], timeout=20)
        took = time.monotonic() - t0
        new_holder = coord.read_namespaced_lease(LEASE, LEASE_NS).spec.holder_identity
        assert new_holder != holder and new_holder in NODE_IP
        print(f"allocator take-over after SIGKILL of {holder}'s speaker: {new_holder} allocated {e} in {took:.1f}s")
        assert took <= 15, took
        ips = [i.ip for s in core.list_namespaced_service(ns).items for i in (s.status.load_balancer.ingress or [])]
        by_ip: dict[str, set[str]] = {}
        for s in core.list_namespaced_service(ns).items:
            for i in s.status.load_balancer.ingress or []:
                by_ip.setdefault(i.ip, set()).add(s.metadata.name)
        assert all(len(v) == 1 or v == {"s1", "s2"} for v in by_ip.values()), by_ip
        assert e not in (again, b, c, s1) and len(ips) == len(set(ips)) + 1
    finally:
        runner.start_speaker(lab, holder)
