"""The lab API server against the real clients: the official Python client and kubectl."""
import json
import os
import selectors
import shutil
import subprocess
import time

import pytest
from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

from lab.apiserver import serve
from lab.kubestore import Store


def node(name, cidr, addr):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": addr}]}}


_servers = []  # the running servers of the current test (a test may restart them)


@pytest.fixture
def api(tmp_path):
    yield from _api(tmp_path, watch_list=True)


@pytest.fixture
def api_without_watch_list(tmp_path):
    yield from _api(tmp_path, watch_list=False)


def _api(tmp_path, watch_list):
    store = Store(str(tmp_path / "nodes.json"), history=50)
    servers, stopping = serve(store, [("127.0.0.1", 0, None)], watch_list=watch_list)
    _servers[:] = servers
    port = servers[0].server_address[1]
    kc = tmp_path / "kubeconfig"
    kc.write_text(f"apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\n"
                  "contexts:\n- name: t\n  context: {cluster: t, user: t}\ncurrent-context: t\nusers:\n- name: t\n  user: {token: t}\n")
    yield store, str(kc), tmp_path
    stopping.set()
    for s in _servers:
        s.shutdown()
        s.server_close()
    _servers.clear()
    store.close()


def core(kc):
    return client.CoreV1Api(config.new_client_from_config(config_file=kc))


def test_python_client_crud_and_node_rules(api):
    store, kc, _ = api
    v1 = core(kc)
    v1.create_node(node("n1", "10.42.1.0/24", "192.168.50.11"))
    with pytest.raises(client.ApiException) as err:
        v1.create_node(node("n1", "10.42.1.0/24", "192.168.50.11"))
    assert err.value.status == 409
    rv = v1.read_node("n1").metadata.resource_version
    v1.patch_node("n1", {"metadata": {"annotations": {"a": "b"}}})
    assert v1.read_node("n1").metadata.annotations == {"a": "b"}
    v1.patch_node("n1", {"metadata": {"annotations": {"a": "b"}}})  # no change: no new version
    assert int(v1.read_node("n1").metadata.resource_version) == int(rv) + 1
    with pytest.raises(client.ApiException) as err:
        v1.patch_node("n1", {"spec": {"podCIDR": "10.42.9.0/24", "podCIDRs": ["10.42.9.0/24"]}})
    assert err.value.status == 422
    v1.patch_node("n1", {"status": {"addresses": []}})  # ignored on the main resource
    assert v1.read_node("n1").status.addresses[0].address == "192.168.50.11"
    v1.patch_node_status("n1", {"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]}})
    assert v1.read_node_status("n1").status.conditions[0].type == "NetworkUnavailable"
    v1.delete_node("n1")
    with pytest.raises(client.ApiException) as err:
        v1.read_node("n1")
    assert err.value.status == 404


def test_store_survives_restart(api):
    store, _, tmp = api
    store.create(node("n1", "10.42.1.0/24", "192.168.50.11"))
    store.close()
    again = Store(str(tmp / "nodes.json"))
    assert again.get("n1")["spec"]["podCIDR"] == "10.42.1.0/24" and again.rv == store.rv
    again.close()


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not on this machine")
def test_kubectl_create_get_wide_annotate_delete(api):
    _, kc, tmp = api
    env = {**os.environ, "KUBECACHEDIR": str(tmp / "cache")}

    def k(*args, input=None):
        res = subprocess.run(["kubectl", "--kubeconfig", kc, *args], input=input, capture_output=True, text=True,
                             env=env, timeout=30)
        assert res.returncode == 0, res.stderr
        return res.stdout

    k("create", "-f", "-", input=json.dumps(node("node1", "10.42.1.0/24", "192.168.50.11")))
    wide = k("get", "nodes", "-o", "wide")
    assert "INTERNAL-IP" in wide.splitlines()[0] and "192.168.50.11" in wide
    k("annotate", "node", "node1", "podbgp.io/test=yes")
    assert json.loads(k("get", "node", "node1", "-o", "json"))["metadata"]["annotations"]["podbgp.io/test"] == "yes"
    k("label", "node", "node1", "rack=r1")
    k("patch", "node", "node1", "--type", "json", "-p", '[{"op": "add", "path": "/metadata/labels/x", "value": "y"}]')
    assert json.loads(k("get", "no", "node1", "-o", "json"))["metadata"]["labels"]["x"] == "y"
    k("delete", "node", "node1")
    assert "No resources found" in subprocess.run(["kubectl", "--kubeconfig", kc, "get", "nodes"], capture_output=True,
                                                  text=True, env=env).stderr


def test_restarted_store_sends_410_to_watches_from_before_an_offline_change(tmp_path):
    from lab.kubestore import ApiError
    path = str(tmp_path / "nodes.json")
    store = Store(path)
    store.create(node("n1", "10.42.1.0/24", "192.168.50.11"))
    store.create(node("n3", "10.42.3.0/24", "192.168.50.13"))
    seen = store.rv
    store.delete("n3")  # happens while a client is away; then the server restarts
    store.close()
    again = Store(path)
    with pytest.raises(ApiError) as err:
        again.events_after(seen, 0.1)
    assert err.value.code == 410
    assert again.events_after(again.rv, 0.1) == ([], again.rv)
    again.close()


# -- the streaming list (watch-list), paged lists and the list cache ------------------------------

def watch_list(v1, **params):
    """The raw watch-list request (kubernetes 37 has no helper for it); returns the response."""
    params = {"send_initial_events": True, "resource_version_match": "NotOlderThan", "allow_watch_bookmarks": True,
              "timeout_seconds": 5, **params}
    return v1.list_node(watch=True, _preload_content=False, _request_timeout=(5, 10), **params)


def fill(store, n):
    for i in range(n):
        store.create(node(f"n{i:02d}", f"10.42.{i}.0/24", f"192.168.50.{i + 10}"))


def test_watch_list_sends_the_state_then_an_annotated_bookmark_then_later_changes(api):
    store, kc, _ = api
    fill(store, 3)
    at = store.rv
    resp = watch_list(core(kc))
    lines = (json.loads(line) for line in iter_resp_lines(resp))
    first = [next(lines) for _ in range(4)]
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in first[:3]] == \
        [("ADDED", "n00"), ("ADDED", "n01"), ("ADDED", "n02")]
    mark = first[3]
    assert mark["type"] == "BOOKMARK"
    assert mark["object"]["metadata"]["resourceVersion"] == str(at)
    assert mark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert mark["object"]["kind"] == "Node" and "name" not in mark["object"]["metadata"]
    store.update("n01", {**store.get("n01"), "metadata": {**store.get("n01")["metadata"], "labels": {"rack": "r1"}}})
    change = next(e for e in lines if e["type"] != "BOOKMARK")
    assert change["type"] == "MODIFIED" and change["object"]["metadata"]["labels"] == {"rack": "r1"}
    assert int(change["object"]["metadata"]["resourceVersion"]) == at + 1
    resp.close()


def test_watch_list_from_a_version_and_the_legacy_watch_from_0_on_a_watch_list_server(api):
    store, kc, _ = api
    fill(store, 2)
    v1 = core(kc)
    resp = watch_list(v1, resource_version=str(store.rv - 1), timeout_seconds=1)  # not older than: the state now
    events = [json.loads(line) for line in iter_resp_lines(resp)]
    assert [e["type"] for e in events[:3]] == ["ADDED", "ADDED", "BOOKMARK"]
    assert events[2]["object"]["metadata"]["resourceVersion"] == str(store.rv)
    # like kube-apiserver with WatchList on, a watch from "0" with bookmarks is defaulted to a watch-list
    resp = v1.list_node(watch=True, resource_version="0", allow_watch_bookmarks=True, timeout_seconds=1,
                        _preload_content=False, _request_timeout=(5, 10))
    events = [json.loads(line) for line in iter_resp_lines(resp)]
    assert events[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def body_of(err):
    return json.loads(err.value.body)


def test_watch_list_without_not_older_than_is_invalid(api):
    store, kc, _ = api
    fill(store, 1)
    with pytest.raises(client.ApiException) as err:
        core(kc).list_node(watch=True, send_initial_events=True, allow_watch_bookmarks=True, timeout_seconds=1)
    assert err.value.status == 422
    assert body_of(err) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: '
                   "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        "reason": "Invalid",
        "details": {"group": "meta.k8s.io", "kind": "ListOptions", "causes": [
            {"reason": "FieldValueForbidden", "field": "resourceVersionMatch",
             "message": "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"}]},
        "code": 422}
    with pytest.raises(client.ApiException) as err:  # and sendInitialEvents on a plain list
        core(kc).list_node(send_initial_events=True)
    assert err.value.status == 422 and body_of(err)["details"]["causes"][0]["field"] == "sendInitialEvents"


def test_watch_list_is_refused_when_the_feature_gate_is_off_and_list_then_watch_still_works(api_without_watch_list):
    store, kc, _ = api_without_watch_list
    fill(store, 2)
    v1 = core(kc)
    with pytest.raises(client.ApiException) as err:
        watch_list(v1)
    assert err.value.status == 422
    assert body_of(err)["message"] == ('ListOptions.meta.k8s.io "" is invalid: sendInitialEvents: Forbidden: '
                                       "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled")
    assert body_of(err)["details"]["causes"] == [
        {"reason": "FieldValueForbidden", "field": "sendInitialEvents",
         "message": "Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"}]
    listed = json.loads(v1.list_node(resource_version="0", _preload_content=False).data)
    rv = listed["metadata"]["resourceVersion"]
    store.delete("n00")
    resp = v1.list_node(watch=True, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=1,
                        _preload_content=False, _request_timeout=(5, 10))
    events = [json.loads(line) for line in iter_resp_lines(resp)]
    assert (events[0]["type"], events[0]["object"]["metadata"]["name"]) == ("DELETED", "n00")
    resp = v1.list_node(watch=True, resource_version="0", allow_watch_bookmarks=True, timeout_seconds=1,
                        _preload_content=False, _request_timeout=(5, 10))
    events = [json.loads(line) for line in iter_resp_lines(resp)]
    assert all("annotations" not in e["object"]["metadata"] for e in events if e["type"] == "BOOKMARK")


def raw_list(v1, **params):
    return json.loads(v1.list_node(_preload_content=False, **params).data)


def test_list_from_the_cache_ignores_limit_and_a_consistent_list_pages(api):
    store, kc, _ = api
    fill(store, 7)
    v1 = core(kc)
    cached = raw_list(v1, resource_version="0", limit=2)
    assert len(cached["items"]) == 7 and "continue" not in cached["metadata"]
    first = raw_list(v1, limit=3)
    assert [n["metadata"]["name"] for n in first["items"]] == ["n00", "n01", "n02"]
    assert first["metadata"]["remainingItemCount"] == 4
    store.delete("n05")  # after the first page: the pages still show the list's version
    names, token = [n["metadata"]["name"] for n in first["items"]], first["metadata"]["continue"]
    while token:
        page = raw_list(v1, limit=3, _continue=token)
        assert page["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        names += [n["metadata"]["name"] for n in page["items"]]
        token = page["metadata"].get("continue")
    assert names == [f"n{i:02d}" for i in range(7)]
    # the typed client pages the same way
    typed = v1.list_node(limit=4)
    assert len(typed.items) == 4 and typed.metadata.remaining_item_count == 2


def test_a_compacted_continue_token_is_410_with_an_inconsistent_token_to_go_on(api):
    store, kc, _ = api
    fill(store, 5)
    v1 = core(kc)
    first = raw_list(v1, limit=2)
    for i in range(60):  # push the list's version out of the 50-event history
        store.update("n04", {**store.get("n04"), "metadata": {**store.get("n04")["metadata"], "labels": {"i": str(i)}}})
    with pytest.raises(client.ApiException) as err:
        v1.list_node(limit=2, _continue=first["metadata"]["continue"])
    assert err.value.status == 410
    status = body_of(err)
    assert status["reason"] == "Expired" and status["message"].startswith(
        "The provided continue parameter is too old to display a consistent list result.")
    rest = raw_list(v1, limit=10, _continue=status["metadata"]["continue"])  # inconsistent, at the latest version
    assert [n["metadata"]["name"] for n in rest["items"]] == ["n02", "n03", "n04"]
    assert rest["items"][-1]["metadata"]["labels"] == {"i": "59"}
    with pytest.raises(client.ApiException) as err:
        v1.list_node(resource_version=first["metadata"]["resourceVersion"], resource_version_match="Exact")
    assert err.value.status == 410


# -- kubectl v1.32 -------------------------------------------------------------------------------

def kubectl_env(tmp):
    return {**os.environ, "KUBECACHEDIR": str(tmp / "cache")}


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not on this machine")
def test_kubectl_get_get_json_and_get_watch(api):
    store, kc, tmp = api
    fill(store, 3)
    env = kubectl_env(tmp)

    def k(*args):
        res = subprocess.run(["kubectl", "--kubeconfig", kc, *args], capture_output=True, text=True, env=env, timeout=30)
        assert res.returncode == 0, res.stderr
        return res.stdout

    table = k("get", "nodes").splitlines()
    assert table[0].split()[:2] == ["NAME", "STATUS"] and [r.split()[0] for r in table[1:]] == ["n00", "n01", "n02"]
    assert [n["metadata"]["name"] for n in json.loads(k("get", "nodes", "-o", "json"))["items"]] == ["n00", "n01", "n02"]
    assert len(json.loads(k("get", "nodes", "-o", "json", "--chunk-size=2"))["items"]) == 3
    proc = subprocess.Popen(["kubectl", "--kubeconfig", kc, "get", "nodes", "-w"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        seen = read_until(proc, lambda out: "n00" in out)
        store.create(node("n99", "10.42.99.0/24", "192.168.50.99"))
        seen += read_until(proc, lambda out: "n99" in out)
        assert "n99" in seen
    finally:
        proc.kill()
        proc.wait(timeout=10)


def read_until(proc, done, timeout=20.0):
    """Read a child's output until done(text) holds (or fail after timeout): never blocks past it."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    out, deadline = "", time.monotonic() + timeout
    while not done(out):
        assert time.monotonic() < deadline, f"kubectl printed only {out!r}"
        if sel.select(timeout=0.2):
            data = os.read(proc.stdout.fileno(), 1 << 16)
            assert data, f"kubectl ended: {proc.stderr.read()}"
            out += data.decode()
    return out


T0, T1 = "2026-11-23T06:00:00Z", "2026-11-23T06:05:00Z"


def test_status_heartbeat_patch_merges_conditions_by_type_as_the_kubelet_expects(api):
    store, kc, _ = api
    fill(store, 1)
    v1 = core(kc)
    conds = [{"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "lastHeartbeatTime": T0},
             {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": T0}]
    v1.patch_node_status("n00", {"status": {"conditions": conds}})
    # what the kubelet sends (CreateTwoWayMergePatch): only what changed, keyed by type
    v1.patch_node_status("n00", {"status": {"$setElementOrder/conditions": [{"type": "MemoryPressure"}, {"type": "Ready"}],
                                            "conditions": [{"type": "Ready", "lastHeartbeatTime": T1}]}})
    got = store.get("n00")["status"]["conditions"]
    assert got == [conds[0], {**conds[1], "lastHeartbeatTime": T1}]
    v1.patch_node_status("n00", {"status": {"conditions": [{"type": "MemoryPressure", "$patch": "delete"}]}})
    assert [c["type"] for c in store.get("n00")["status"]["conditions"]] == ["Ready"]
    v1.patch_node("n00", {"metadata": {"finalizers": ["a"]}})
    v1.patch_node("n00", {"metadata": {"finalizers": ["b"]}})
    assert store.get("n00")["metadata"]["finalizers"] == ["a", "b"]
    v1.patch_node("n00", {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
    assert store.get("n00")["metadata"]["finalizers"] == ["b"]


# -- persistence: cheap at rate, and what the lab relies on --------------------------------------

def test_the_change_log_replays_after_a_crash_and_the_snapshot_is_folded_on_close(tmp_path):
    path = str(tmp_path / "nodes.json")
    store = Store(path, persist_interval=0.05)
    fill(store, 3)
    store.delete("n01")
    store.update("n02", {**store.get("n02"), "metadata": {**store.get("n02")["metadata"], "labels": {"x": "y"}}})
    store.flush()
    assert os.path.getsize(path + ".log") > 0 and "n02" not in open(path).read()  # appended, not rewritten
    store._closed.set()  # the process dies: no final snapshot
    again = Store(path)
    assert sorted(again.nodes) == ["n00", "n02"] and again.get("n02")["metadata"]["labels"] == {"x": "y"}
    assert again.rv == store.rv
    again.close()
    assert not os.path.exists(path + ".log")
    assert sorted(json.load(open(path))["nodes"]) == ["n00", "n02"]


def test_an_offline_store_edit_is_seen_after_restart_and_older_watches_get_410(tmp_path):
    from types import SimpleNamespace

    from lab import runner
    from lab.kubestore import ApiError
    store = Store(str(tmp_path / "nodes.json"))
    fill(store, 3)
    seen = store.rv
    store.close()  # the lab stops the server (SIGTERM), then edits its store
    runner.delete_from_store(SimpleNamespace(pids={}, dir=str(tmp_path)), "n02")
    again = Store(str(tmp_path / "nodes.json"))
    assert sorted(again.nodes) == ["n00", "n01"] and again.rv == seen + 1
    with pytest.raises(ApiError) as err:
        again.events_after(seen, 0.1)
    assert err.value.code == 410
    again.close()


def test_a_snapshot_edited_offline_after_a_crash_wins_over_the_stale_log(tmp_path):
    from types import SimpleNamespace

    from lab import runner
    path = str(tmp_path / "nodes.json")
    store = Store(path)
    fill(store, 3)
    store._flush(snapshot=True)  # n00..n02 in the snapshot
    store.create(node("n03", "10.42.3.0/24", "192.168.50.13"))
    store.flush()
    store._closed.set()  # crash: n03 is only in the log
    runner.delete_from_store(SimpleNamespace(pids={}, dir=str(tmp_path)), "n00")
    again = Store(path)  # the log no longer fits the snapshot: the snapshot as edited wins
    assert sorted(again.nodes) == ["n01", "n02"]
    assert again.rv > store.rv  # a watch from any version handed out before gets 410
    again.close()


def test_the_server_process_keeps_its_state_across_sigterm_and_restart(tmp_path):
    """What runner.stop_apiserver / start_apiserver do: SIGTERM, an offline edit, start again."""
    import signal
    import socket
    import sys
    from types import SimpleNamespace

    from lab import runner
    state = tmp_path / "nodes.json"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kc = tmp_path / "kubeconfig"
    kc.write_text(f"apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\n"
                  "contexts:\n- name: t\n  context: {cluster: t, user: t}\ncurrent-context: t\nusers:\n- name: t\n  user: {token: t}\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def start():
        proc = subprocess.Popen([sys.executable, "-m", "lab.apiserver", "--state", str(state),
                                 "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, cwd=root)
        assert proc.stdout.readline().strip() == b"ready"
        return proc

    proc = start()
    try:
        v1 = core(str(kc))
        for i in range(3):
            v1.create_node(node(f"n{i:02d}", f"10.42.{i}.0/24", f"192.168.50.{i + 10}"))
        v1.patch_node("n01", {"metadata": {"labels": {"rack": "r1"}}})
        seen = json.loads(v1.list_node(_preload_content=False).data)["metadata"]["resourceVersion"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert not os.path.exists(f"{state}.log")
    runner.delete_from_store(SimpleNamespace(pids={}, dir=str(tmp_path)), "n02")
    proc = start()
    try:
        listed = json.loads(v1.list_node(_preload_content=False).data)
        assert [n["metadata"]["name"] for n in listed["items"]] == ["n00", "n01"]
        assert listed["items"][1]["metadata"]["labels"]["rack"] == "r1"
        assert int(listed["metadata"]["resourceVersion"]) == int(seen) + 1
        resp = v1.list_node(watch=True, resource_version=seen, timeout_seconds=1, _preload_content=False,
                            _request_timeout=(5, 10))
        events = [json.loads(line) for line in iter_resp_lines(resp)]
        assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
