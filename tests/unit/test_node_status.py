"""NetworkUnavailable=False: the patch body, retries off the loop, the real client against the lab API
(strategic merge of conditions by type), and the watcher ignoring the change it causes."""
import asyncio
import ipaddress as ia
import logging
import threading

import pytest
from kubernetes import client, config

from speaker import node_status
from speaker.node_status import NetworkCondition, condition_patch
from speaker.nodes import parse_node
from speaker.kubeclient import KubeClient, KubeError
from speaker.listwatch import Changed
from speaker.nodewatch import NodeWatcher

N = ia.ip_network
T0 = 1795420800.0  # 2026-11-23T08:00:00Z
BODY = {"status": {"conditions": [{
    "type": "NetworkUnavailable", "status": "False", "reason": "PodbgpIsUp", "message": "podbgp is running on this node",
    "lastTransitionTime": "2026-11-23T08:00:00Z", "lastHeartbeatTime": "2026-11-23T08:00:00Z"}]}}


def test_the_patch_body():
    assert condition_patch(T0) == BODY


class FakeStatusClient:
    def __init__(self, failures=0):
        self.calls = []
        self.failures = failures
        self.threads = set()

    def patch_node_status(self, name, body):
        self.threads.add(threading.current_thread().name)
        self.calls.append((name, body))
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("connection refused")


def condition(fake, **kw):
    return NetworkCondition(fake, "node1", clock=lambda: T0, backoff=(0.01, 0.02), **kw)


async def until(pred, timeout=2.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_patched_once_per_podcidr_set_in_a_worker_thread():
    async def body():
        fake = FakeStatusClient()
        c = condition(fake)
        assert c.status() == {"patched": False, "at": None, "error": None, "enabled": True}
        c.announced(())  # nothing announced: nothing to say
        c.announced((N("10.42.1.0/24"),))
        c.announced((N("10.42.1.0/24"),))  # the same PodCIDRs again: no second patch
        await until(lambda: c.patched)
        await asyncio.sleep(0.02)
        assert fake.calls == [("node1", BODY)] and threading.main_thread().name not in fake.threads
        assert c.status() == {"patched": True, "at": T0, "error": None, "enabled": True}
        c.announced((N("10.42.1.0/24"), N("fd00:42:0:1::/64")))  # a new PodCIDR: patched again
        await until(lambda: len(fake.calls) == 2)
        c.announced(())  # the Node is deleted, then created again with the same PodCIDRs
        c.announced((N("10.42.1.0/24"), N("fd00:42:0:1::/64")))
        await until(lambda: len(fake.calls) == 3)
        c.close()
    asyncio.run(body())


def test_failures_are_retried_with_backoff_and_reported(caplog):
    caplog.set_level(logging.INFO, "speaker.node_status")

    async def body():
        fake = FakeStatusClient(failures=2)
        c = condition(fake)
        c.announced((N("10.42.1.0/24"),))
        await until(lambda: fake.calls)
        assert not c.patched and c.error == "cannot reach the Kubernetes API: connection refused"
        await until(lambda: c.patched)
        assert len(fake.calls) == 3 and c.error is None
        c.close()
    asyncio.run(body())
    assert [r.getMessage().split(" retry_in=")[0] for r in caplog.records if r.levelname == "WARNING"] == [
        "node.condition.error type=NetworkUnavailable node=node1 error=cannot reach the Kubernetes API: connection refused"] * 2
    assert "node.condition type=NetworkUnavailable status=False reason=PodbgpIsUp node=node1" in caplog.messages


def test_without_a_client_nothing_is_attempted():
    async def body():
        c = NetworkCondition(None, "node1")
        c.announced((N("10.42.1.0/24"),))
        assert c._task is None and not c.patched and "no API client" in c.error
    asyncio.run(body())


# ---- against the lab API server with the official client --------------------------------------

@pytest.fixture
def api(lab_api):
    return lab_api


NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "spec": {"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.11"}]}}
READY = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
         "lastHeartbeatTime": "2026-11-23T07:59:00Z", "lastTransitionTime": "2026-11-23T07:00:00Z"}


def conditions(v1):
    return {c.type: c for c in v1.read_node_status("n1").status.conditions}


def test_strategic_merge_of_conditions_by_type_through_the_real_client(api):
    v1 = client.CoreV1Api(config.new_client_from_config(config_file=api))
    v1.create_node(NODE)
    unavailable = {**READY, "type": "NetworkUnavailable", "reason": "NoRouteCreated", "message": "not yet"}
    v1.patch_node_status("n1", {"status": {"conditions": [READY, unavailable]}})
    assert conditions(v1)["NetworkUnavailable"].status == "True"
    kube = KubeClient(api)
    kube.patch_node_status("n1", condition_patch(T0))
    got = conditions(v1)
    assert sorted(got) == ["NetworkUnavailable", "Ready"]
    assert got["Ready"].status == "True" and got["Ready"].reason == "KubeletReady"  # untouched
    nu = got["NetworkUnavailable"]
    assert (nu.status, nu.reason, nu.message) == ("False", "PodbgpIsUp", "podbgp is running on this node")
    assert nu.last_transition_time.isoformat() == "2026-11-23T08:00:00+00:00"
    kube.patch_node_status("n1", condition_patch(T0 + 60))  # again: updated in place, not appended
    got = conditions(v1)
    assert len(v1.read_node_status("n1").status.conditions) == 2
    assert got["NetworkUnavailable"].last_heartbeat_time.isoformat() == "2026-11-23T08:01:00+00:00"
    assert v1.read_node("n1").spec.pod_cidr == "10.42.1.0/24"  # the status subresource changed only status


def test_a_node_without_conditions_gets_just_ours_and_a_missing_node_is_a_one_line_error(api):
    v1 = client.CoreV1Api(config.new_client_from_config(config_file=api))
    v1.create_node(NODE)
    kube = KubeClient(api)
    kube.patch_node_status("n1", condition_patch(T0))
    assert list(conditions(v1)) == ["NetworkUnavailable"]
    with pytest.raises(KubeError) as err:
        kube.patch_node_status("nope", condition_patch(T0))
    assert err.value.status == 404
    line = node_status._one_line(err.value)
    assert "answered HTTP 404 Not Found: " in line and "nope" in line and "\n" not in line


def test_our_condition_patch_is_a_no_op_for_the_watcher():
    """NodeInfo keeps no conditions, so the MODIFIED event our own patch causes is dropped."""
    before = {"metadata": {"name": "n1", "resourceVersion": "5", "annotations": {"podbgp.io/asn": "65001"}},
              "spec": {"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]},
              "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.11"}], "conditions": [READY]}}
    after = {**before, "metadata": {**before["metadata"], "resourceVersion": "6"},
             "status": {**before["status"], "conditions": [READY, BODY["status"]["conditions"][0]]}}
    assert parse_node(before) == parse_node(after)

    got = []
    w = NodeWatcher(client=None, emit=got.append)
    w.known = {"n1": parse_node(before)}
    w._follow(iter([{"type": "MODIFIED", "object": after}]))
    assert got == [] and w.dropped == 1 and w.resource_version == "6"
    # an annotation podbgp reads does get through
    changed = {**after, "metadata": {**after["metadata"], "annotations": {"podbgp.io/asn": "65002"}}}
    w._follow(iter([{"type": "MODIFIED", "object": changed}]))
    assert len(got) == 1 and isinstance(got[0], Changed)


def test_in_cluster_configuration_patches_over_https_with_the_token(in_cluster, admin):
    """KubeClient(None), as the DaemonSet runs it: service host and port from the environment,
    the service-account token and CA from files; the lab server refuses a request without them."""
    admin.create_node(NODE)
    kube = KubeClient(None)
    kube.patch_node_status("n1", condition_patch(T0))  # allowed by deploy/'s ClusterRole
    assert conditions(admin)["NetworkUnavailable"].reason == "PodbgpIsUp"
