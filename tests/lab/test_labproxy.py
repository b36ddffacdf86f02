"""The lab's data plane for Services: every Pod answers HTTP on 8080 with its name, and lab.proxy
(the nftables stand-in for kube-proxy) sends a Service's cluster IPs to its endpoints as the
EndpointSlices say: ready ones at random, not a terminating one while a ready one exists,
only local ones for internalTrafficPolicy Local.

Services and EndpointSlices are written as the endpoint controller would, with the Python client.
"""
from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from lab import runner
from tests.waiting import poll

pytestmark = pytest.mark.lab
NODES = ("node1", "node2", "node3")


@pytest.fixture(scope="module")
def api(lab):
    from kubernetes import client, config
    c = config.new_client_from_config(config_file=lab.kubeconfig)
    yield client.CoreV1Api(c), client.DiscoveryV1Api(c)
    c.close()


@pytest.fixture
def ns(api):
    """A namespace name unique to the test; its Services and slices are deleted afterwards."""
    core, disc = api
    name = f"p{uuid.uuid4().hex[:8]}"
    yield name
    for s in disc.list_namespaced_endpoint_slice(name).items:
        disc.delete_namespaced_endpoint_slice(s.metadata.name, name)
    for s in core.list_namespaced_service(name).items:
        core.delete_namespaced_service(s.metadata.name, name)


def pod(lab, name: str) -> dict:
    return next(p for p in lab.pods if p["name"] == name)


def make_service(core, ns: str, name: str, itp: str | None = None) -> list[str]:
    spec = {"type": "ClusterIP", "ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    if itp:
        spec["internalTrafficPolicy"] = itp
    obj = core.create_namespaced_service(ns, {"apiVersion": "v1", "kind": "Service",
                                              "metadata": {"name": name}, "spec": spec})
    spec = core.api_client.sanitize_for_serialization(obj)["spec"]
    return list(spec.get("clusterIPs") or [spec["clusterIP"]])


def endpoint(p: dict, family: str, terminating: bool = False) -> dict:
    return {"addresses": [p["ipv4"] if family == "IPv4" else p["ipv6"]], "nodeName": p["node"],
            "targetRef": {"kind": "Pod", "name": p["name"]},
            "conditions": {"ready": not terminating, "serving": True, "terminating": terminating}}


def slice_body(svc: str, family: str, pods: list[dict], terminating: set[str] = frozenset()) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{svc}-{family.lower()}",
                         "labels": {"kubernetes.io/service-name": svc,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": family, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [endpoint(p, family, p["name"] in terminating) for p in pods]}


def put_slices(disc, ns: str, svc: str, pods: list[dict], terminating: set[str] = frozenset()) -> None:
    for family in ("IPv4", "IPv6"):
        body = slice_body(svc, family, pods, terminating)
        try:
            disc.replace_namespaced_endpoint_slice(body["metadata"]["name"], ns, body)
        except Exception as exc:  # the client's ApiException: 404 the first time
            if getattr(exc, "status", None) != 404:
                raise
            disc.create_namespaced_endpoint_slice(ns, body)


def answers(lab, node: str, ip: str, count: int = 12) -> list[str]:
    """count requests from node's netns to ip:80, each bounded to 1 s; failures as 'FAIL'."""
    url = f"http://[{ip}]/" if ":" in ip else f"http://{ip}/"
    script = f'for i in $(seq {count}); do curl -s -m 1 {url} || echo FAIL; done'
    out = runner.run(["sh", "-c", script], netns=lab.nodes[node]["netns"], timeout=count * 1.5 + 5).stdout
    return out.split()


def nft_table(lab, node: str) -> str:
    return runner.run(["nft", "list", "table", "inet", "podbgp-proxy"], netns=lab.nodes[node]["netns"]).stdout


def test_every_pod_answers_http_with_its_name(lab):
    for p in lab.pods:
        out = runner.run(["curl", "-s", "-m", "2", f"http://[{p['ipv6']}]:8080/"], netns=lab.nodes["node3"]["netns"])
        assert out.stdout == p["name"] + "\n"
    assert all(f"podhttp:{p['name']}" in lab.pids for p in lab.pods)


def test_stopping_and_starting_a_pods_server(lab):
    p = pod(lab, "node3-pod2")
    url = f"http://{p['ipv4']}:8080/"
    ns = lab.nodes["node1"]["netns"]
    runner.stop_pod_server(lab, p["name"])
    try:
        assert f"podhttp:{p['name']}" not in lab.pids
        assert runner.run(["curl", "-s", "-m", "2", url], netns=ns, check=False).returncode != 0
        runner.stop_pod_server(lab, p["name"])  # idempotent
    finally:
        runner.start_pod_server(lab, p["name"])
    assert runner.run(["curl", "-s", "-m", "2", url], netns=ns).stdout.strip() == p["name"]


def test_cluster_ip_to_ready_endpoints_then_not_to_a_terminating_one(lab, api, ns):
    core, disc = api
    ips = make_service(core, ns, "web")
    assert len(ips) == 2  # dual-stack
    a, b = pod(lab, "node1-pod1"), pod(lab, "node2-pod1")
    put_slices(disc, ns, "web", [a, b])
    for ip in ips:
        seen: set[str] = set()
        poll(lambda ip=ip, seen=seen: seen.update(answers(lab, "node1", ip)) or {a["name"], b["name"]} <= seen, 10,
             f"answers from both Pods through {ip}")
        assert "FAIL" not in answers(lab, "node1", ip)
    # node2's endpoint terminating but serving: only node1's is used while it is ready
    start = time.monotonic()
    put_slices(disc, ns, "web", [a, b], terminating={b["name"]})
    poll(lambda: b["ipv4"] not in nft_table(lab, "node1"), 2, "node1's table without the terminating endpoint")
    assert time.monotonic() - start < 1.0, "the change took more than a second to reach the kernel"
    for ip in ips:
        assert set(answers(lab, "node1", ip)) == {a["name"]}
    # every endpoint terminating: the serving ones are used (kube-proxy's fallback)
    put_slices(disc, ns, "web", [a, b], terminating={a["name"], b["name"]})
    seen = set()
    poll(lambda seen=seen: seen.update(answers(lab, "node1", ips[0])) or {a["name"], b["name"]} <= seen, 10,
         "both terminating-but-serving endpoints in use")


def test_internal_traffic_policy_local_only_local_pods(lab, api, ns):
    core, disc = api
    ips = make_service(core, ns, "local", itp="Local")
    pods = [pod(lab, "node1-pod1"), pod(lab, "node1-pod2"), pod(lab, "node2-pod1")]
    put_slices(disc, ns, "local", pods)
    for node, local in (("node1", {"node1-pod1", "node1-pod2"}), ("node2", {"node2-pod1"})):
        # the proxy has rendered the slice on this node before any request (else: no endpoint, rejected)
        poll(lambda node=node, local=local: all(pod(lab, p)["ipv4"] in nft_table(lab, node) for p in local), 5,
             f"{node}'s table with its local endpoints")
        seen: set[str] = set()
        poll(lambda node=node, local=local, seen=seen: seen.update(answers(lab, node, ips[0])) or local <= seen, 10,
             f"{node}'s own Pods through the Local Service")
        assert seen == local, f"{node} reached {seen}"
    # node3 has none: dropped there, not sent elsewhere
    out = subprocess.run(["ip", "netns", "exec", lab.nodes["node3"]["netns"], "curl", "-s", "-m", "1",
                          f"http://{ips[0]}/"], capture_output=True, text=True, timeout=10, check=False)
    assert out.returncode != 0 and out.stdout == ""


def make_external(core, ns: str, name: str, ip: str, etp: str) -> None:
    core.create_namespaced_service(ns, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {
        "type": "ClusterIP", "externalIPs": [ip], "externalTrafficPolicy": etp,
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})


def test_workstation_through_the_tor_ecmp_cluster_and_local(lab, api, ns):
    """The data plane under BGP, with static ECMP routes on the ToR standing in for the speakers'
    announcements (192.0.2.0/24 is outside every range they announce): external traffic reaches
    every node by L4 hash; Cluster policy is masqueraded to Pods anywhere (node3 has none),
    Local policy answers from the receiving node's own Pods."""
    core, disc = api
    tor, ws = lab.nodes["tor"]["netns"], lab.nodes["workstation"]["netns"]
    cluster_ip, local_ip = "192.0.2.10", "192.0.2.11"
    make_external(core, ns, "ext", cluster_ip, "Cluster")
    make_external(core, ns, "extlocal", local_ip, "Local")
    put_slices(disc, ns, "ext", [pod(lab, "node1-pod1"), pod(lab, "node2-pod1")])
    put_slices(disc, ns, "extlocal", [pod(lab, "node1-pod2"), pod(lab, "node2-pod2")])
    routes = [(tor, [cluster_ip, "nexthop", "via", "192.168.50.11", "nexthop", "via", "192.168.50.12",
                     "nexthop", "via", "192.168.50.13"]),
              (tor, [local_ip, "nexthop", "via", "192.168.50.11", "nexthop", "via", "192.168.50.12"]),
              (ws, ["192.0.2.0/24", "via", "192.168.50.1"])]
    added = []
    try:
        for netns, spec in routes:
            runner.run(["ip", "route", "add", *spec], netns=netns)
            added.append((netns, spec[0]))

        def from_ws(ip: str, count: int = 30) -> list[str]:
            script = f"for i in $(seq {count}); do curl -s -m 1 http://{ip}/ || echo FAIL; done"
            return runner.run(["sh", "-c", script], netns=ws, timeout=count * 1.5 + 5).stdout.split()

        poll(lambda: all(f"daddr {ip} " in nft_table(lab, n) for ip in (cluster_ip, local_ip) for n in NODES), 5,
             "both external Services in every node's table")
        got = from_ws(cluster_ip)
        assert "FAIL" not in got and set(got) == {"node1-pod1", "node2-pod1"}, got
        got = from_ws(local_ip)
        assert "FAIL" not in got and set(got) == {"node1-pod2", "node2-pod2"}, got  # both nodes: L4 hash
        # Local policy on a node without a local endpoint: dropped, not sent to another node
        runner.run(["ip", "route", "replace", local_ip, "via", "192.168.50.13"], netns=tor)
        assert set(from_ws(local_ip, 3)) == {"FAIL"}
    finally:
        for netns, dst in reversed(added):
            runner.run(["ip", "route", "del", dst], netns=netns, check=False)
