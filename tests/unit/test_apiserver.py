"""The lab API server against the real clients: the official Python client and kubectl."""
import json
import os
import shutil
import subprocess
import threading
import time

import pytest
from kubernetes import client, config

from lab.apiserver import serve
from lab.kubestore import Store


def node(name, cidr, addr):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": addr}]}}


_servers = []  # the running servers of the current test (a test may restart them)


@pytest.fixture
def api(tmp_path):
    store = Store(str(tmp_path / "nodes.json"), history=50)
    servers, stopping = serve(store, [("127.0.0.1", 0, None)])
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
    again = Store(str(tmp / "nodes.json"))
    assert again.get("n1")["spec"]["podCIDR"] == "10.42.1.0/24" and again.rv == store.rv


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
    again = Store(path)
    with pytest.raises(ApiError) as err:
        again.events_after(seen, 0.1)
    assert err.value.code == 410
    assert again.events_after(again.rv, 0.1) == ([], again.rv)
