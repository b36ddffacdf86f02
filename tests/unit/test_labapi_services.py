"""The lab API server's Services, EndpointSlices, Leases and Events, through the official Python
client and kubectl: cluster IP and node port allocation as kube-apiserver does it, the status
subresource, label-selected lists and watches, 409 on a stale Lease, 410 after compaction."""
import ipaddress
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from lab.apiserver import serve
from lab.kubestore import Store

V4, V6 = "10.43.0.0/16", "fd00:43::/108"


def start(tmp_path, cidrs, name="state.json"):
    store = Store(str(tmp_path / name), history=50)
    servers, stopping = serve(store, [("127.0.0.1", 0, None)], service_cidrs=cidrs)
    port = servers[0].server_address[1]
    kc = tmp_path / "kubeconfig"
    kc.write_text(f"apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\n"
                  "contexts:\n- name: t\n  context: {cluster: t, user: t, namespace: default}\ncurrent-context: t\n"
                  "users:\n- name: t\n  user: {token: t}\n")
    return store, servers, stopping, str(kc)


def stop(store, servers, stopping):
    stopping.set()
    for s in servers:
        s.shutdown()
        s.server_close()
    store.close()


@pytest.fixture
def lab(tmp_path):
    """A dual-stack lab API server (IPv4 first); yields (store, kubeconfig, tmp_path)."""
    store, servers, stopping, kc = start(tmp_path, [V4, V6])
    yield store, kc, tmp_path
    stop(store, servers, stopping)


@pytest.fixture
def small(tmp_path):
    """A single-stack server with a Service range of 6 addresses."""
    store, servers, stopping, kc = start(tmp_path, ["10.96.0.0/29"])
    yield store, kc, tmp_path
    stop(store, servers, stopping)


def apis(kc):
    api = config.new_client_from_config(config_file=kc)
    return client.CoreV1Api(api), client.DiscoveryV1Api(api), client.CoordinationV1Api(api)


def svc(name, typ="ClusterIP", **spec):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": typ, "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": name}, **spec}}


def raw(kc, method, path, body=None):
    """A request as it goes on the wire (for what the typed client will not send); (status, message)."""
    host = config.new_client_from_config(config_file=kc).configuration.host
    req = urllib.request.Request(host + path, data=json.dumps(body).encode() if body is not None else None,
                                 method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()).get("message")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())["message"]


def error_of(call, *args, **kwargs):
    with pytest.raises(ApiException) as err:
        call(*args, **kwargs)
    return err.value.status, json.loads(err.value.body)["message"]


# -- Services ------------------------------------------------------------------------------------

def test_create_allocates_cluster_ips_per_family_and_fills_the_defaults(lab):
    _, kc, _ = lab
    core, _, _ = apis(kc)
    one = core.create_namespaced_service("default", svc("one")).to_dict()["spec"]
    assert one["ip_families"] == ["IPv4"] and one["ip_family_policy"] == "SingleStack"
    assert ipaddress.ip_address(one["cluster_ip"]) in ipaddress.ip_network(V4) and one["cluster_ips"] == [one["cluster_ip"]]
    assert one["session_affinity"] == "None" and one["internal_traffic_policy"] == "Cluster"
    assert one["external_traffic_policy"] is None and one["ports"][0]["protocol"] == "TCP"
    assert one["ports"][0]["node_port"] is None

    dual = core.create_namespaced_service("default", svc("dual", ipFamilyPolicy="PreferDualStack")).spec
    assert dual.ip_families == ["IPv4", "IPv6"] and len(dual.cluster_ips) == 2
    assert ipaddress.ip_address(dual.cluster_ips[1]) in ipaddress.ip_network(V6)
    v6 = core.create_namespaced_service("other", svc("v6", ipFamilies=["IPv6"], ipFamilyPolicy="RequireDualStack")).spec
    assert v6.ip_families == ["IPv6", "IPv4"] and ipaddress.ip_address(v6.cluster_ip).version == 6

    lb = core.create_namespaced_service("default", svc("lb", "LoadBalancer", externalTrafficPolicy="Local",
                                                       loadBalancerClass="podbgp.io/bgp",
                                                       ports=[{"name": "http", "port": 80},
                                                              {"name": "dns", "port": 53, "protocol": "UDP"}])).spec
    assert lb.allocate_load_balancer_node_ports is True and lb.external_traffic_policy == "Local"
    ports = [p.node_port for p in lb.ports] + [lb.health_check_node_port]
    assert len(set(ports)) == 3 and all(30000 <= p <= 32767 for p in ports)
    assert [p.target_port for p in lb.ports] == [80, 53]

    headless = core.create_namespaced_service("default", svc("headless", clusterIP="None")).spec
    assert headless.cluster_ip == "None" and headless.cluster_ips == ["None"]
    ext = core.create_namespaced_service("default", {"metadata": {"name": "ext"},
                                                     "spec": {"type": "ExternalName", "externalName": "example.com"}}).spec
    assert ext.cluster_ip is None and ext.ip_families is None

    ips = [ip for s in core.list_service_for_all_namespaces().items for ip in (s.spec.cluster_ips or []) if ip != "None"]
    assert len(ips) == len(set(ips)) == 6  # one, dual (2), v6 (2), lb


def test_requested_cluster_ips_and_the_refusals_kube_apiserver_gives(lab):
    _, kc, _ = lab
    core, _, _ = apis(kc)
    assert core.create_namespaced_service("default", svc("a", clusterIP="10.43.7.7")).spec.cluster_ip == "10.43.7.7"
    cases = [
        (svc("b", clusterIP="10.43.7.7"), 'Service "b" is invalid: spec.clusterIPs: Invalid value: []string{"10.43.7.7"}: '
         "failed to allocate IP 10.43.7.7: provided IP is already allocated"),
        (svc("c", clusterIP="10.44.0.1"), 'Service "c" is invalid: spec.clusterIPs: Invalid value: []string{"10.44.0.1"}: '
         "failed to allocate IP 10.44.0.1: the provided IP (10.44.0.1) is not in the valid range. "
         "The range of valid IPs is 10.43.0.0/16"),
        (svc("d", "ClusterIP", loadBalancerClass="x/y"),
         'Service "d" is invalid: spec.loadBalancerClass: Forbidden: may only be used when `type` is \'LoadBalancer\''),
        ({"metadata": {"name": "e"}, "spec": {"selector": {"a": "b"}}}, 'Service "e" is invalid: spec.ports: Required value'),
        (svc("f", ipFamilies=["IPv4", "IPv6"]), 'Service "f" is invalid: spec.ipFamilyPolicy: Invalid value: "SingleStack": '
         "must be RequireDualStack or PreferDualStack when multiple 'ipFamilies' are specified"),
    ]
    for body, message in cases:
        assert error_of(core.create_namespaced_service, "default", body) == (422, message)
    assert error_of(core.create_namespaced_service, "default", svc("a")) == (409, 'services "a" already exists')

    # clusterIP is immutable; leaving it out of a replace keeps it; status is ignored on the main resource
    cur = core.read_namespaced_service("a", "default")
    cur.spec.cluster_ip, cur.spec.cluster_ips = "10.43.7.8", ["10.43.7.8"]
    assert error_of(core.replace_namespaced_service, "a", "default", cur) == (
        422, 'Service "a" is invalid: spec.clusterIPs[0]: Invalid value: []string{"10.43.7.8"}: may not change once set')
    body = svc("a")
    body["metadata"]["resourceVersion"] = cur.metadata.resource_version
    body["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}
    again = core.replace_namespaced_service("a", "default", body)
    assert again.spec.cluster_ip == "10.43.7.7" and again.status.load_balancer.ingress is None


def test_require_dual_stack_on_a_single_stack_server_and_a_full_range_then_release_and_reuse(small):
    store, kc, _ = small
    core, _, _ = apis(kc)
    assert error_of(core.create_namespaced_service, "default", svc("x", ipFamilyPolicy="RequireDualStack")) == (
        422, 'Service "x" is invalid: spec.ipFamilyPolicy: Invalid value: "RequireDualStack": '
        "this cluster is not configured for dual-stack services")
    assert error_of(core.create_namespaced_service, "default", svc("x", ipFamilies=["IPv6"]))[0] == 422
    assert core.create_namespaced_service("default", svc("p", ipFamilyPolicy="PreferDualStack")).spec.ip_families == ["IPv4"]
    ips = {core.create_namespaced_service("default", svc(f"s{i}")).spec.cluster_ip for i in range(5)}
    ips.add(core.read_namespaced_service("p", "default").spec.cluster_ip)
    assert ips == {f"10.96.0.{i}" for i in range(1, 7)}  # not the network address, not the broadcast
    assert error_of(core.create_namespaced_service, "default", svc("full")) == (
        500, "Internal error occurred: failed to allocate a serviceIP: range is full")
    freed = core.read_namespaced_service("s2", "default").spec.cluster_ip
    core.delete_namespaced_service("s2", "default")
    assert core.create_namespaced_service("default", svc("next")).spec.cluster_ip == freed
    # a requested IP is free again once its Service is gone; an ExternalName Service holds none
    taken = core.read_namespaced_service("s3", "default").spec.cluster_ip
    assert error_of(core.create_namespaced_service, "default", svc("want", clusterIP=taken))[0] == 422
    core.delete_namespaced_service("s3", "default")
    assert core.create_namespaced_service("default", svc("want", clusterIP=taken)).spec.cluster_ip == taken
    core.create_namespaced_service("default", {"metadata": {"name": "ext"},
                                               "spec": {"type": "ExternalName", "externalName": "example.com"}})
    assert store.rules["services"].ranges["IPv4"][1].used == {int(ipaddress.ip_address(f"10.96.0.{i}")) for i in range(1, 7)}


def test_status_only_through_the_subresource_and_load_balancer_class_is_immutable(lab):
    _, kc, _ = lab
    core, _, _ = apis(kc)
    core.create_namespaced_service("default", svc("lb", "LoadBalancer", loadBalancerClass="podbgp.io/bgp"))
    got = core.patch_namespaced_service_status("lb", "default", {
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}, "spec": {"type": "ClusterIP"}})
    assert got.status.load_balancer.ingress[0].ip == "203.0.113.10" and got.status.load_balancer.ingress[0].ip_mode == "VIP"
    assert got.spec.type == "LoadBalancer"  # /status ignores the spec
    assert error_of(core.patch_namespaced_service_status, "lb", "default",
                    {"status": {"loadBalancer": {"ingress": [{"ip": "nope"}]}}}) == (
        422, 'Service "lb" is invalid: status.loadBalancer.ingress[0].ip: Invalid value: "nope": must be a valid IP address')
    assert error_of(core.patch_namespaced_service, "lb", "default", {"spec": {"loadBalancerClass": "other.io/x"}}) == (
        422, 'Service "lb" is invalid: spec.loadBalancerClass: Invalid value: "other.io/x": may not change once set')
    # a merge patch of the main resource keeps the cluster IPs, node ports and the status
    before = core.read_namespaced_service("lb", "default")
    after = core.patch_namespaced_service("lb", "default", {"metadata": {"labels": {"x": "y"}}})
    assert after.spec.cluster_ips == before.spec.cluster_ips and after.spec.ports == before.spec.ports
    assert after.status.load_balancer.ingress[0].ip == "203.0.113.10"
    assert int(after.metadata.resource_version) > int(before.metadata.resource_version)


def test_services_watch_in_order_by_namespace_and_410_after_compaction(lab):
    store, kc, _ = lab
    core, _, _ = apis(kc)
    core.create_namespaced_service("a", svc("one"))
    rv = core.list_service_for_all_namespaces().metadata.resource_version
    core.create_namespaced_service("b", svc("two"))
    core.patch_namespaced_service("one", "a", {"metadata": {"labels": {"k": "v"}}})
    core.delete_namespaced_service("two", "b")
    seen = [(e["type"], e["object"].metadata.namespace, e["object"].metadata.name)
            for e in watch.Watch().stream(core.list_service_for_all_namespaces, resource_version=rv, timeout_seconds=1,
                                          _request_timeout=10)]
    assert seen == [("ADDED", "b", "two"), ("MODIFIED", "a", "one"), ("DELETED", "b", "two")]
    only_a = [e["object"].metadata.name for e in watch.Watch().stream(
        core.list_namespaced_service, "a", resource_version=rv, timeout_seconds=1, _request_timeout=10)]
    assert only_a == ["one"]
    by_field = core.list_service_for_all_namespaces(field_selector="metadata.namespace=a")
    assert [s.metadata.name for s in by_field.items] == ["one"]
    assert [s.metadata.name for s in core.list_service_for_all_namespaces(label_selector="k in (v,w)").items] == ["one"]
    store.compact()
    resp = core.list_service_for_all_namespaces(watch=True, resource_version=rv, timeout_seconds=1,
                                                _preload_content=False, _request_timeout=10)
    events = [json.loads(line) for line in iter_resp_lines(resp)]
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


# -- EndpointSlices, Leases, Events ----------------------------------------------------------------

def eps(service, addrs, node="node1", family="IPv4", **extra):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"generateName": f"{service}-", "labels": {"kubernetes.io/service-name": service}},
            "addressType": family, "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}, "nodeName": node} for a in addrs], **extra}


def test_endpoint_slices_by_service_name_label_in_lists_and_watches(lab):
    _, kc, _ = lab
    _, disc, _ = apis(kc)
    made = disc.create_namespaced_endpoint_slice("default", eps("web", ["10.42.1.5", "10.42.2.5"]))
    assert made.metadata.name.startswith("web-") and len(made.metadata.name) == len("web-") + 5
    assert made.ports[0].protocol == "TCP" and made.endpoints[1].node_name == "node1"
    disc.create_namespaced_endpoint_slice("default", eps("web", ["fd00:42::5"], family="IPv6"))
    disc.create_namespaced_endpoint_slice("other", eps("db", ["10.42.3.5"]))
    rv = disc.list_endpoint_slice_for_all_namespaces().metadata.resource_version
    web = disc.list_endpoint_slice_for_all_namespaces(label_selector="kubernetes.io/service-name=web")
    assert sorted(s.address_type for s in web.items) == ["IPv4", "IPv6"]
    made.endpoints[0].conditions.ready = False
    made.endpoints[0].conditions.terminating = True
    disc.replace_namespaced_endpoint_slice(made.metadata.name, "default", made)
    disc.delete_namespaced_endpoint_slice(made.metadata.name, "default")
    disc.create_namespaced_endpoint_slice("other", eps("db", ["10.42.4.5"]))
    events = [(e["type"], e["object"].endpoints[0].conditions.terminating) for e in watch.Watch().stream(
        disc.list_endpoint_slice_for_all_namespaces, label_selector="kubernetes.io/service-name=web",
        resource_version=rv, timeout_seconds=1, _request_timeout=10)]
    assert events == [("MODIFIED", True), ("DELETED", True)]

    no_type = {k: v for k, v in eps("x", ["10.0.0.1"]).items() if k != "addressType"}  # the client refuses to send it
    status, text = raw(kc, "POST", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", no_type)
    assert status == 422 and text.endswith("addressType: Required value")
    for body, message in [
        ({**eps("x", ["10.0.0.1"]), "addressType": "IPv5"},
         'addressType: Unsupported value: "IPv5": supported values: "FQDN", "IPv4", "IPv6"'),
        (eps("x", ["fd00::1"]), 'endpoints[0].addresses[0]: Invalid value: "fd00::1": must be a valid IPv4 address'),
    ]:
        status, text = error_of(disc.create_namespaced_endpoint_slice, "default", body)
        assert status == 422 and text.startswith('EndpointSlice.discovery.k8s.io "x-') and text.endswith(message), text
    other = disc.list_namespaced_endpoint_slice("other").items[0]
    other.address_type = "IPv6"
    status, text = error_of(disc.replace_namespaced_endpoint_slice, other.metadata.name, "other", other)
    assert status == 422 and text.endswith('addressType: Invalid value: "IPv6": field is immutable')


def test_lease_take_over_with_a_stale_version_is_409(lab):
    _, kc, _ = lab
    _, _, coord = apis(kc)
    lease = coord.create_namespaced_lease("kube-system", {
        "metadata": {"name": "podbgp-allocator"},
        "spec": {"holderIdentity": "node1", "leaseDurationSeconds": 15, "leaseTransitions": 0}})
    a = coord.read_namespaced_lease("podbgp-allocator", "kube-system")
    b = coord.read_namespaced_lease("podbgp-allocator", "kube-system")
    a.spec.holder_identity, a.spec.lease_transitions = "node2", 1
    won = coord.replace_namespaced_lease("podbgp-allocator", "kube-system", a)
    assert won.spec.holder_identity == "node2" and won.metadata.resource_version != lease.metadata.resource_version
    b.spec.holder_identity = "node3"
    assert error_of(coord.replace_namespaced_lease, "podbgp-allocator", "kube-system", b) == (
        409, 'Operation cannot be fulfilled on leases.coordination.k8s.io "podbgp-allocator": the object has been '
        "modified; please apply your changes to the latest version and try again")
    assert coord.read_namespaced_lease("podbgp-allocator", "kube-system").spec.holder_identity == "node2"
    assert error_of(coord.read_namespaced_lease, "nope", "kube-system") == (
        404, 'leases.coordination.k8s.io "nope" not found')


def test_events_core_and_events_k8s_io(lab):
    _, kc, _ = lab
    core, _, _ = apis(kc)
    made = core.create_namespaced_event("default", {
        "metadata": {"generateName": "lb."}, "type": "Normal", "reason": "IPAllocated", "message": "203.0.113.1",
        "involvedObject": {"kind": "Service", "namespace": "default", "name": "lb"}})
    assert core.read_namespaced_event(made.metadata.name, "default").reason == "IPAllocated"
    assert [e.message for e in core.list_namespaced_event("default").items] == ["203.0.113.1"]
    ev1 = client.EventsV1Api(config.new_client_from_config(config_file=kc))
    ev1.create_namespaced_event("default", {"metadata": {"name": "x"}, "eventTime": "2026-12-03T00:00:00.000000Z",
                                            "reason": "R", "note": "n", "action": "A", "type": "Normal",
                                            "reportingController": "podbgp.io/allocator", "reportingInstance": "node1"})
    assert [e.note for e in ev1.list_event_for_all_namespaces().items] == ["n"]


def test_one_resource_version_across_kinds_and_state_survives_a_restart(tmp_path):
    store, servers, stopping, kc = start(tmp_path, [V4])
    core, disc, _ = apis(kc)
    ip = core.create_namespaced_service("default", svc("one")).spec.cluster_ip
    slice_rv = int(disc.create_namespaced_endpoint_slice("default", eps("one", ["10.42.1.1"])).metadata.resource_version)
    node_rv = int(core.create_node({"metadata": {"name": "n1"}}).metadata.resource_version)
    assert node_rv == slice_rv + 1
    stop(store, servers, stopping)
    store, servers, stopping, kc = start(tmp_path, [V4])
    try:
        core, disc, _ = apis(kc)
        assert core.read_namespaced_service("one", "default").spec.cluster_ip == ip
        assert len(disc.list_namespaced_endpoint_slice("default").items) == 1
        assert error_of(core.create_namespaced_service, "default", svc("two", clusterIP=ip))[0] == 422  # still held
        assert int(core.list_node().metadata.resource_version) == node_rv
    finally:
        stop(store, servers, stopping)


# -- kubectl v1.32 -------------------------------------------------------------------------------

SERVICE_YAML = """apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  type: LoadBalancer
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abcde
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.42.1.5]
  conditions: {ready: true}
  nodeName: node1
"""


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not on this machine")
def test_kubectl_apply_get_and_delete(lab):
    store, kc, tmp = lab
    env = {**os.environ, "KUBECACHEDIR": str(tmp / "kubecache")}

    def kubectl(*args, input=None, check=True):
        res = subprocess.run(["kubectl", "--kubeconfig", kc, *args], input=input, capture_output=True, text=True,
                             env=env, timeout=60)
        assert res.returncode == 0 or not check, res.stderr
        return res

    kubectl("apply", "-f", "-", input=SERVICE_YAML)
    got = json.loads(kubectl("get", "svc", "web", "-o", "json").stdout)
    assert got["spec"]["ipFamilies"] == ["IPv4", "IPv6"] and len(got["spec"]["clusterIPs"]) == 2
    assert "kubectl.kubernetes.io/last-applied-configuration" in got["metadata"]["annotations"]
    table = kubectl("get", "svc", "-A").stdout.splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    row = table[1].split()
    assert row[:5] == ["default", "web", "LoadBalancer", got["spec"]["clusterIP"], "<pending>"]
    assert row[5] == f"80:{got['spec']['ports'][0]['nodePort']}/TCP"
    slices = kubectl("get", "endpointslices", "-A").stdout.splitlines()
    assert slices[0].split()[:5] == ["NAMESPACE", "NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS"]
    assert slices[1].split()[:5] == ["default", "web-abcde", "IPv4", "8080", "10.42.1.5"]
    assert "clusterIP: " + got["spec"]["clusterIP"] in kubectl("get", "svc", "-o", "yaml").stdout

    # apply again with a change: a strategic merge patch that keeps the allocated values
    kubectl("apply", "-f", "-", input=SERVICE_YAML.replace("targetPort: 8080", "targetPort: 9090"))
    again = json.loads(kubectl("get", "svc", "web", "-o", "json").stdout)
    assert again["spec"]["ports"][0]["targetPort"] == 9090
    assert again["spec"]["clusterIPs"] == got["spec"]["clusterIPs"]
    assert again["spec"]["ports"][0]["nodePort"] == got["spec"]["ports"][0]["nodePort"]
    kubectl("label", "svc", "web", "team=net")
    kubectl("patch", "svc", "web", "--subresource=status", "--type=merge",
            "-p", '{"status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.7"}]}}}')
    assert "203.0.113.7" in kubectl("get", "svc", "web").stdout
    kubectl("delete", "svc", "web")
    kubectl("delete", "endpointslice", "web-abcde")
    assert "No resources found" in kubectl("get", "svc", "-A").stderr
    assert store.tables["services"].items == {}


# -- watch-list, paging, RBAC ---------------------------------------------------------------------

def test_watch_list_of_slices_ends_its_initial_events_with_an_annotated_bookmark(lab):
    store, kc, _ = lab
    _, disc, _ = apis(kc)
    for i in range(3):
        disc.create_namespaced_endpoint_slice(f"ns{i}", eps("web", [f"10.42.{i}.1"]))
    store.create({"metadata": {"name": "n1"}})  # another kind moves the version on, not this watch
    api = disc.api_client
    resp = api.call_api(*api.param_serialize(
        "GET", "/apis/discovery.k8s.io/v1/endpointslices",
        query_params=[("watch", "true"), ("sendInitialEvents", "true"), ("resourceVersionMatch", "NotOlderThan"),
                      ("allowWatchBookmarks", "true"), ("labelSelector", "kubernetes.io/service-name=web"),
                      ("timeoutSeconds", "1")]), _request_timeout=10)
    events = [json.loads(line) for line in iter_resp_lines(resp.response)]
    assert [e["type"] for e in events] == ["ADDED"] * 3 + ["BOOKMARK"]
    mark = events[3]["object"]
    assert mark["kind"] == "EndpointSlice" and mark["apiVersion"] == "discovery.k8s.io/v1"
    assert mark["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert mark["metadata"]["resourceVersion"] == str(store.rv)


def test_paged_cluster_wide_list_of_services_across_namespaces(lab):
    store, kc, _ = lab
    core, _, _ = apis(kc)
    for ns in ("b", "a", "c"):
        for i in range(2):
            core.create_namespaced_service(ns, svc(f"s{i}"))
    first = core.list_service_for_all_namespaces(limit=4)
    assert [(s.metadata.namespace, s.metadata.name) for s in first.items] == [
        ("a", "s0"), ("a", "s1"), ("b", "s0"), ("b", "s1")]
    assert first.metadata.remaining_item_count == 2
    core.delete_namespaced_service("s0", "c")  # after the first page: the pages keep the list's version
    rest = core.list_service_for_all_namespaces(limit=4, _continue=first.metadata._continue)
    assert [(s.metadata.namespace, s.metadata.name) for s in rest.items] == [("c", "s0"), ("c", "s1")]
    assert rest.metadata.resource_version == first.metadata.resource_version
    assert [s.metadata.name for s in core.list_namespaced_service("c").items] == ["s1"]


def test_rbac_of_a_service_account_by_group_namespace_and_subresource(tmp_path):
    from lab.apiserver import authorize
    from lab.kubestore import ApiError

    rules = [{"apiGroups": [""], "resources": ["services", "endpoints"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["services/status"], "verbs": ["patch", "update"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
             {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"],
              "resourceNames": ["podbgp-allocator"], "namespace": "kube-system"},  # a RoleBinding's (lab.daemonset.rbac)
             {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"], "namespace": "kube-system"},
             {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}]
    allowed = [("GET", "/api/v1/services", {}), ("GET", "/api/v1/namespaces/a/services", {"watch": "true"}),
               ("PATCH", "/api/v1/namespaces/a/services/x/status", {}),
               ("GET", "/apis/discovery.k8s.io/v1/endpointslices", {"watch": "1"}),
               ("PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/podbgp-allocator", {}),
               ("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases", {}),
               ("POST", "/api/v1/namespaces/a/events", {}), ("POST", "/apis/events.k8s.io/v1/namespaces/a/events", {}),
               ("GET", "/apis", {}), ("GET", "/apis/discovery.k8s.io/v1", {}), ("GET", "/openapi/v3/api/v1", {})]
    for method, path, q in allowed:
        authorize("u", rules, method, [p for p in path.split("/") if p], q)
    user = 'User "u" cannot'
    denied = [
        ("PATCH", "/api/v1/namespaces/a/services/x",
         f'services "x" is forbidden: {user} patch resource "services" in API group "" in the namespace "a"'),
        ("PUT", "/api/v1/namespaces/a/services/x", f'services "x" is forbidden: {user} update resource "services" '
         'in API group "" in the namespace "a"'),
        ("GET", "/api/v1/namespaces/a/services/x/status", f'services "x" is forbidden: {user} get resource '
         '"services/status" in API group "" in the namespace "a"'),
        ("GET", "/apis/discovery.k8s.io/v1/namespaces/a/endpointslices/s",
         f'endpointslices.discovery.k8s.io "s" is forbidden: {user} get resource "endpointslices" '
         'in API group "discovery.k8s.io" in the namespace "a"'),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/other",
         f'leases.coordination.k8s.io "other" is forbidden: {user} update resource "leases" '
         'in API group "coordination.k8s.io" in the namespace "kube-system"'),
        ("GET", "/apis/coordination.k8s.io/v1/leases",
         f'leases.coordination.k8s.io is forbidden: {user} list resource "leases" in API group "coordination.k8s.io" '
         "at the cluster scope"),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/default/leases/podbgp-allocator",
         f'leases.coordination.k8s.io "podbgp-allocator" is forbidden: {user} update resource "leases" '
         'in API group "coordination.k8s.io" in the namespace "default"'),
        ("POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases",
         f'leases.coordination.k8s.io is forbidden: {user} create resource "leases" '
         'in API group "coordination.k8s.io" in the namespace "default"'),
        ("PATCH", "/api/v1/nodes/n1/status",
         f'nodes "n1" is forbidden: {user} patch resource "nodes/status" in API group "" at the cluster scope'),
    ]
    for method, path, message in denied:
        with pytest.raises(ApiError) as err:
            authorize("u", rules, method, [p for p in path.split("/") if p], {})
        assert (err.value.code, err.value.message) == (403, message)

    # and on the wire: a service account token with these rules
    store = Store(None)
    servers, stopping = serve(store, [("127.0.0.1", 0, None)], token="admin", accounts=(("sa", "u", rules),))
    try:
        host = f"http://127.0.0.1:{servers[0].server_address[1]}"
        req = urllib.request.Request(f"{host}/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
                                     method="POST", headers={"Authorization": "Bearer sa"},
                                     data=json.dumps({"metadata": {"name": "podbgp-allocator"}, "spec": {}}).encode())
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 201
        req = urllib.request.Request(f"{host}/api/v1/namespaces/a/services/x", method="DELETE",
                                     headers={"Authorization": "Bearer sa"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        body = json.loads(err.value.read())
        assert err.value.code == 403 and body["details"] == {"name": "x", "kind": "services"}
    finally:
        stop(store, servers, stopping)


def test_the_server_process_takes_its_service_ranges_from_flags(tmp_path):
    import socket
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    base = [sys.executable, "-m", "lab.apiserver", "--state", str(tmp_path / "s.json")]
    bad = subprocess.run([*base, "--listen", "127.0.0.1:0", "--service-cidr", "10.43.0.0/16", "--service-cidr",
                          "10.44.0.0/16"], capture_output=True, text=True, cwd=root, timeout=30)
    assert bad.returncode == 2 and "at most one range per IP family" in bad.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*base, "--listen", f"127.0.0.1:{port}", "--service-cidr", "fd00:43::/108",
                             "--service-cidr", "10.43.0.0/16", "--service-node-port-range", "31000-31001"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=root)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        kc = tmp_path / "kubeconfig"
        kc.write_text(f"apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\n"
                      "contexts:\n- name: t\n  context: {cluster: t, user: t}\ncurrent-context: t\nusers:\n- name: t\n  user: {token: t}\n")
        core, _, _ = apis(str(kc))
        spec = core.create_namespaced_service("default", svc("np", "NodePort", ipFamilyPolicy="PreferDualStack")).spec
        assert spec.ip_families == ["IPv6", "IPv4"]  # the first range's family comes first
        assert ipaddress.ip_address(spec.cluster_ip) in ipaddress.ip_network("fd00:43::/108")
        assert spec.ports[0].node_port == 31000
        assert error_of(core.create_namespaced_service, "default", svc("np2", "NodePort", ports=[{"port": 1, "nodePort": 30000}])) == (
            422, 'Service "np2" is invalid: spec.ports[0].nodePort: Invalid value: 30000: provided port is not in the '
            "valid range. The range of valid ports is 31000-31001")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_type_changes_take_and_give_back_what_the_type_needs(small):
    store, kc, _ = small
    core, _, _ = apis(kc)
    rules = store.rules["services"]
    lb = core.create_namespaced_service("default", svc("x", "LoadBalancer", loadBalancerClass="podbgp.io/bgp",
                                                       externalTrafficPolicy="Local")).spec
    assert rules.ports.used == {lb.ports[0].node_port, lb.health_check_node_port}
    back = core.patch_namespaced_service("x", "default", {"spec": {"type": "ClusterIP"}}).spec
    assert back.ports[0].node_port is None and back.health_check_node_port is None
    assert back.allocate_load_balancer_node_ports is None and back.load_balancer_class is None
    assert back.external_traffic_policy is None and back.cluster_ip == lb.cluster_ip
    assert rules.ports.used == set()
    ext = core.patch_namespaced_service("x", "default", {"spec": {"externalIPs": ["198.51.100.7"]}}).spec
    assert ext.external_traffic_policy == "Cluster"  # external IPs make it externally accessible
    gone = core.patch_namespaced_service("x", "default", [{"op": "remove", "path": "/spec/externalIPs"}]).spec
    assert gone.external_traffic_policy is None
    name = core.patch_namespaced_service("x", "default", {"spec": {"type": "ExternalName", "externalName": "a.example"}}).spec
    assert name.cluster_ip is None and name.cluster_ips is None and name.ip_families is None
    assert all(not pool.used for _, pool in rules.ranges.values())  # its cluster IP was given back
    again = core.patch_namespaced_service("x", "default", {"spec": {"type": "ClusterIP", "externalName": None}}).spec
    assert ipaddress.ip_address(again.cluster_ip) in ipaddress.ip_network("10.96.0.0/29")


# -- the store: one version counter, a history per resource, the change log -----------------------

def test_each_resource_has_its_own_history_under_one_version_counter():
    from lab.kubestore import ApiError

    store = Store(None, history=5, service_cidrs=[V4])
    store.create({"metadata": {"name": "n1"}})
    seen = store.rv
    for i in range(8):
        store.create(svc(f"s{i}"), "services", "default")
    assert store.rv == seen + 8
    assert store.events_after(seen, 0.05) == ([], store.rv)  # Services churning do not expire a Node watch
    with pytest.raises(ApiError) as err:
        store.events_after(seen, 0.05, "services")
    assert err.value.code == 410
    assert [e.entry.name for e in store.events_after(store.rv - 2, 0.05, "services")[0]] == ["default/s6", "default/s7"]
    store.update("default/s7", {**store.get("default/s7", "services")}, res="services")  # unchanged: no version
    assert store.rv == seen + 8


def test_services_and_slices_replay_from_the_change_log_after_a_crash(tmp_path):
    path = str(tmp_path / "state.json")
    store = Store(path, persist_interval=60, service_cidrs=["10.96.0.0/29"])
    store.create({"metadata": {"name": "n1"}})
    store.flush()
    ips = [store.create(svc(f"s{i}"), "services", "default").obj()["spec"]["clusterIP"] for i in range(3)]
    store.delete("default/s1", "services")
    store.create(eps("s0", ["10.42.0.1"]), "endpointslices", "default")
    store.flush()
    store._closed.set()  # the process dies: only the log has the Services
    again = Store(path, service_cidrs=["10.96.0.0/29"])
    try:
        assert sorted(again.tables["services"].items) == ["default/s0", "default/s2"]
        assert len(again.tables["endpointslices"].items) == 1 and sorted(again.nodes) == ["n1"]
        held = again.rules["services"].ranges["IPv4"][1].used
        assert held == {int(ipaddress.ip_address(ips[0])), int(ipaddress.ip_address(ips[2]))}
        assert again.rv == store.rv
    finally:
        again.close()
    assert sorted(json.load(open(path))["services"]) == ["default/s0", "default/s2"]
