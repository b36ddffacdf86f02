"""The list/watch machinery and the Node watch: list decoded item by item, watch-list, no-op
filtering, re-list diffs; a second resource (Services) through the same machinery."""
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speaker.nodes import NodeInfo
from speaker.kubeclient import ListStream
from speaker.listwatch import ApiDown, Changed, WatchListUnsupported
from speaker.nodewatch import NodeWatcher


def node(name, cidr="10.42.1.0/24", addr="192.168.50.11", heartbeat="t0", **ann):
    return {"metadata": {"name": name, "resourceVersion": "1", "annotations": {"other/x": heartbeat, **ann}},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": addr}],
                       "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]}}


def chunks(data: bytes, size: int):
    return [data[i:i + size] for i in range(0, len(data), size)]


@given(n=st.integers(0, 12), size=st.integers(1, 300), meta_last=st.booleans(), indent=st.sampled_from([None, 1]))
@settings(max_examples=200, deadline=None)
def test_list_stream_yields_every_item_whatever_the_chunking(n, size, meta_last, indent):
    items = [node(f"n{i}ü", f"10.42.{i}.0/24", heartbeat="é" * i) for i in range(n)]
    doc = {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "77"}, "items": items}
    if meta_last:
        doc = {"kind": "NodeList", "items": items, "metadata": {"resourceVersion": "77", "n": 1.5e3}}
    stream = ListStream(chunks(json.dumps(doc, indent=indent, ensure_ascii=False).encode(), size))
    assert list(stream) == items and stream.resource_version == "77"


def test_list_stream_refuses_a_truncated_document():
    data = json.dumps({"metadata": {"resourceVersion": "5"}, "items": [node("a"), node("b")]}).encode()
    with pytest.raises(ValueError):
        list(ListStream(chunks(data[:-40], 50)))


class FakeClient:
    """Serves a scripted cluster of one resource: watch-list (or 422), list, and watch streams."""

    def __init__(self, nodes, watch_list=True, path="/api/v1/nodes"):
        self.nodes = {n["metadata"]["name"]: n for n in nodes}
        self.path = path
        self.rv = 10
        self.watch_list_ok = watch_list
        self.calls = []
        self.later: list[dict] = []  # events the next watch stream delivers

    def watch_list(self, path, timeout, stop):
        assert path == self.path
        self.calls.append("watch-list")
        if not self.watch_list_ok:
            raise WatchListUnsupported("HTTP 422: the WatchList feature is off")
        events = [{"type": "ADDED", "object": n} for n in self.nodes.values()]
        events.append({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(self.rv),
                                                                  "annotations": {"k8s.io/initial-events-end": "true"}}}})
        return self._stream(events + self._take(), stop)

    def list(self, path):
        assert path == self.path
        self.calls.append("list")
        doc = {"metadata": {"resourceVersion": str(self.rv)}, "items": list(self.nodes.values())}
        return ListStream(chunks(json.dumps(doc).encode(), 100))

    def watch(self, path, rv, timeout, stop):
        assert path == self.path
        self.calls.append(f"watch@{rv}")
        return self._stream(self._take(), stop)

    def _take(self):
        out, self.later = self.later, []
        return out

    def _stream(self, events, stop):
        yield from events
        stop.wait(0.05)


def collect(client, **kw):
    got = []
    w = NodeWatcher(client, got.append, watch_timeout=1, backoff_max=0.05, **kw)
    return w, got


def wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("watch_list", [True, False])
def test_first_list_is_one_batch_then_only_real_changes_pass(watch_list):
    client = FakeClient([node("a"), node("b", "10.42.2.0/24", "192.168.50.12")], watch_list=watch_list)
    client.later = [
        {"type": "MODIFIED", "object": node("a", heartbeat="t1")},  # a heartbeat: nothing podbgp uses
        {"type": "MODIFIED", "object": node("b", "10.42.2.0/24", "192.168.50.12", heartbeat="t1")},
        {"type": "MODIFIED", "object": node("a", addr="192.168.50.99")},  # a real change
        {"type": "MODIFIED", "object": node("a", addr="192.168.50.99", **{"podbgp.io/asn": "65009"})},
        {"type": "DELETED", "object": node("b")},
    ]
    w, got = collect(client)
    w.start()
    try:
        wait_for(lambda: any(isinstance(e, Changed) and e.deleted for e in got))
    finally:
        w.close()
        w.thread.join(5)
    first = got[0]
    assert first.synced and sorted(n.name for n in first.values) == ["a", "b"]
    changes = [e for e in got[1:] if isinstance(e, Changed)]
    assert [(c.values[0].addresses[0].exploded, c.values[0].annotations) for c in changes if c.values] == [
        ("192.168.50.99", ()), ("192.168.50.99", (("podbgp.io/asn", "65009"),))]
    assert changes[-1].deleted == ("b",) and w.dropped == 2
    assert client.calls[0] == "watch-list"  # always tried first; a 422 turns to the list from the cache
    assert ("list" in client.calls) == (not watch_list)


def test_a_relist_reports_only_the_difference_and_vanished_nodes_as_deletions():
    client = FakeClient([node("a"), node("b", "10.42.2.0/24", "192.168.50.12")])
    w, got = collect(client)
    w.start()
    try:
        wait_for(lambda: got)
        # while the watch is away the cluster changes; then the watch answers 410
        del client.nodes["b"]
        client.nodes["c"] = node("c", "10.42.3.0/24", "192.168.50.13")
        client.later = [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}]
        wait_for(lambda: sum(isinstance(e, Changed) and e.synced for e in got) >= 2)
    finally:
        w.close()
        w.thread.join(5)
    again = [e for e in got if isinstance(e, Changed) and e.synced][1]
    assert [n.name for n in again.values] == ["c"] and again.deleted == ("b",)


def test_invalid_nodes_are_reported_once_by_name():
    bad = {"metadata": {"name": "bad"}, "spec": {"podCIDRs": ["x"]}}
    client = FakeClient([node("a"), bad])
    client.later = [{"type": "MODIFIED", "object": bad}, {"type": "MODIFIED", "object": node("bad", "10.42.7.0/24")}]
    w, got = collect(client)
    w.start()
    try:
        wait_for(lambda: len([e for e in got if isinstance(e, Changed)]) >= 2)
    finally:
        w.close()
        w.thread.join(5)
    first, fixed = [e for e in got if isinstance(e, Changed)][:2]
    assert first.invalid and first.invalid[0][0] == "bad" and "spec.podCIDRs[0]" in first.invalid[0][1]
    assert [n.name for n in fixed.values] == ["bad"] and w.dropped == 1


def test_errors_report_api_down_once_and_retry():
    class Broken(FakeClient):
        def watch_list(self, path, timeout, stop):
            self.calls.append("watch-list")
            raise ConnectionRefusedError("connection refused")

    client = Broken([node("a")])
    w, got = collect(client)
    w.start()
    try:
        wait_for(lambda: len(client.calls) >= 3)
    finally:
        w.close()
        w.thread.join(5)
    assert sum(isinstance(e, ApiDown) for e in got) == 1


def test_parsed_value_keeps_no_node_dict():
    client = FakeClient([node("a")])
    w, got = collect(client)
    w.start()
    try:
        wait_for(lambda: got)
    finally:
        w.close()
        w.thread.join(5)
    assert all(isinstance(v, NodeInfo) for v in w.known.values())
    assert not any(isinstance(getattr(v, s, None), dict) for v in w.known.values() for s in NodeInfo.__slots__)


def test_watch_stop_is_prompt():
    client = FakeClient([node("a")])
    w, _ = collect(client)
    w.start()
    w.close()
    w.thread.join(5)
    assert not w.thread.is_alive()



# ---- against the lab API server, through the official client ----------------------------------

from lab.apiserver import serve  # noqa: E402
from lab.kubestore import Store  # noqa: E402
from speaker.kubeclient import KubeClient  # noqa: E402


def api_node(name, cidr, addr):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": addr}]}}


class Api:
    def __init__(self, tmp_path, watch_list):
        self.store = Store(str(tmp_path / "nodes.json"), history=50)
        self.watch_list = watch_list
        self.servers, self.stopping = serve(self.store, [("127.0.0.1", 0, None)], watch_list=watch_list)
        self.port = self.servers[0].server_address[1]
        self.kubeconfig = str(tmp_path / "kubeconfig")
        with open(self.kubeconfig, "w") as f:
            f.write(f"apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: 'http://127.0.0.1:{self.port}'}}\n"
                    "contexts:\n- name: t\n  context: {cluster: t, user: t}\ncurrent-context: t\n"
                    "users:\n- name: t\n  user: {token: t}\n")

    def stop(self):
        self.stopping.set()
        for s in self.servers:
            s.shutdown()
            s.server_close()

    def start(self):
        self.servers, self.stopping = serve(self.store, [("127.0.0.1", self.port, None)], watch_list=self.watch_list)


@pytest.fixture(params=[True, False], ids=["watch-list", "list-from-cache"])
def api(request, tmp_path):
    api = Api(tmp_path, watch_list=request.param)
    try:
        yield api
    finally:
        api.stop()


def test_real_client_lists_then_follows_changes(api):
    for i in range(1, 4):
        api.store.create(api_node(f"n{i}", f"10.42.{i}.0/24", f"192.168.50.1{i}"))
    got = []
    w = NodeWatcher(KubeClient(api.kubeconfig, read_timeout=5), got.append, watch_timeout=2, backoff_max=0.2)
    w.start()
    try:
        wait_for(lambda: got)
        assert got[0].synced and sorted(n.name for n in got[0].values) == ["n1", "n2", "n3"]
        assert w.watch_list_supported == api.watch_list
        n1 = api.store.get("n1")
        api.store.update("n1", {**n1, "metadata": {**n1["metadata"], "annotations": {"other.io/x": "y"}}})  # not ours
        api.store.create(api_node("n4", "10.42.4.0/24", "192.168.50.14"))
        api.store.delete("n2")
        wait_for(lambda: any(isinstance(e, Changed) and e.deleted == ("n2",) for e in got))
    finally:
        w.close()
        w.thread.join(10)
    changes = [e for e in got[1:] if isinstance(e, Changed)]
    assert [[n.name for n in c.values] for c in changes] == [["n4"], []] and w.dropped == 1


def test_watcher_survives_api_outage_relists_after_410_and_sees_deletions(api):
    api.store.create(api_node("n1", "10.42.1.0/24", "192.168.50.11"))
    api.store.create(api_node("n3", "10.42.3.0/24", "192.168.50.13"))
    got = []
    w = NodeWatcher(KubeClient(api.kubeconfig, read_timeout=2), got.append, watch_timeout=1, backoff_max=0.5)
    w.start()
    try:
        wait_for(lambda: any(isinstance(e, Changed) and e.synced for e in got))
        # the API goes away; meanwhile n3 is deleted and the history is compacted past our version
        api.stop()
        wait_for(lambda: any(isinstance(e, ApiDown) for e in got))
        api.store.delete("n3")
        api.store.events.clear()
        api.store.compacted = api.store.rv + 1
        api.start()
        wait_for(lambda: sum(isinstance(e, Changed) and e.synced for e in got) >= 2)
        again = [e for e in got if isinstance(e, Changed) and e.synced][-1]
        assert again.values == () and again.deleted == ("n3",)
        api.store.create(api_node("n4", "10.42.4.0/24", "192.168.50.14"))
        wait_for(lambda: any(isinstance(e, Changed) and [n.name for n in e.values] == ["n4"] for e in got))
    finally:
        w.close()
        w.thread.join(10)


def test_other_nodes_keep_only_the_labels_a_selector_reads_and_the_own_node_all():
    from speaker.nodes import parse_node

    obj = node("n2")
    obj["metadata"]["labels"] = {"podbgp.io/mesh": "false", "topology.kubernetes.io/zone": "z1", "kubernetes.io/os": "linux"}
    keys = frozenset({"podbgp.io/mesh"})
    assert parse_node(obj, keys, own="n1").labels == (("podbgp.io/mesh", "false"),)
    assert len(parse_node(obj, keys, own="n2").labels) == 3  # its own Node: every label (nodeSelector)
    assert len(parse_node(obj).labels) == 3  # no filter: every label
    got = []
    w = NodeWatcher(FakeClient([]), got.append, label_keys=keys, own="n1")
    w.known["n2"] = parse_node(obj, keys, own="n1")
    zone = json.loads(json.dumps(obj))
    zone["metadata"]["labels"]["topology.kubernetes.io/zone"] = "z2"  # a label nothing reads
    w._follow(iter([{"type": "MODIFIED", "object": zone}]))
    assert got == [] and w.dropped == 1
    mesh = json.loads(json.dumps(obj))
    mesh["metadata"]["labels"]["podbgp.io/mesh"] = "true"  # one the mesh's scope reads
    w._follow(iter([{"type": "MODIFIED", "object": mesh}]))
    assert len(got) == 1 and isinstance(got[0], Changed)


# ---- the same machinery, a second resource ---------------------------------------------------

from speaker.listwatch import ListWatch, object_key  # noqa: E402


def service(ns, name, ips, heartbeat="t0", svc_type="ClusterIP"):
    return {"metadata": {"namespace": ns, "name": name, "resourceVersion": "1", "annotations": {"x": heartbeat}},
            "spec": {"type": svc_type, "clusterIPs": ips}}


def parse_service(obj):
    """What a Service announcer would keep: (namespace/name, (type, cluster IPs)), or why not."""
    key = object_key(obj)
    ips = (obj.get("spec") or {}).get("clusterIPs")
    if not isinstance(ips, list):
        return key, f"service {key}: spec.clusterIPs is not a list"
    return key, ((obj.get("spec") or {}).get("type", "ClusterIP"), tuple(ips))


class ServiceClient(FakeClient):
    def __init__(self, services, watch_list=True):
        super().__init__([], watch_list=watch_list, path="/api/v1/services")
        self.nodes = {object_key(s): s for s in services}  # the fake serves whatever it holds


@pytest.mark.parametrize("watch_list", [True, False])
def test_the_same_machinery_lists_and_watches_services_with_another_parser(watch_list):
    client = ServiceClient([service("default", "web", ["10.96.0.10"]), service("kube-system", "dns", ["10.96.0.53"]),
                            {"metadata": {"namespace": "x", "name": "odd"}, "spec": {"clusterIPs": "nope"}}],
                           watch_list=watch_list)
    client.later = [
        {"type": "MODIFIED", "object": service("default", "web", ["10.96.0.10"], heartbeat="t1")},  # a no-op
        {"type": "MODIFIED", "object": service("default", "web", ["10.96.0.10"], svc_type="LoadBalancer")},
        {"type": "ADDED", "object": service("other", "web", ["10.96.0.11"])},  # same name, other namespace
        {"type": "DELETED", "object": service("kube-system", "dns", ["10.96.0.53"])},
    ]
    got = []
    w = ListWatch(client, "/api/v1/services", parse_service, got.append, watch_timeout=1, backoff_max=0.05)
    assert w.name == "services" and w.thread.name == "services-watch"
    w.start()
    try:
        wait_for(lambda: any(isinstance(e, Changed) and e.deleted for e in got))
    finally:
        w.close()
        w.thread.join(5)
    first, *rest = got
    assert first.synced and first.resource == "services"
    assert sorted(first.values) == [("ClusterIP", ("10.96.0.10",)), ("ClusterIP", ("10.96.0.53",))]
    assert first.invalid == (("x/odd", "service x/odd: spec.clusterIPs is not a list"),)
    assert [c.values for c in rest if c.values] == [(("LoadBalancer", ("10.96.0.10",)),), (("ClusterIP", ("10.96.0.11",)),)]
    assert rest[-1].deleted == ("kube-system/dns",) and w.dropped == 1
    assert sorted(w.known) == ["default/web", "other/web", "x/odd"]
    assert ("list" in client.calls) == (not watch_list)


def test_object_keys_are_names_or_namespace_slash_name():
    assert object_key({"metadata": {"name": "n1"}}) == "n1"
    assert object_key({"metadata": {"name": "web", "namespace": "default"}}) == "default/web"
    assert object_key({"metadata": {}}) is None and object_key({}) is None and object_key("x") is None
