"""The lab API server over HTTPS with a bearer token, against the official client and kubectl.

The speaker reaches it the way a Pod does: the in-cluster configuration (service host and port
from the environment, the service-account token and CA from files)."""
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from lab import pki
from speaker.kubeclient import NODES, KubeClient

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "spec": {"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.11"}]}}


def _kubeconfig(tmp_path, port, ca, token):
    kc = tmp_path / f"kc-{abs(hash((ca, token)))}"
    kc.write_text(pki.kubeconfig(f"https://127.0.0.1:{port}", ca, token))
    return str(kc)


def test_client_with_ca_and_token_works_and_a_wrong_token_is_refused(secure_api, tmp_path):
    (paths, port), tmp = secure_api, tmp_path
    v1 = client.CoreV1Api(config.new_client_from_config(config_file=_kubeconfig(tmp, port, paths["ca"], paths["token"])))
    v1.create_node(NODE)
    assert [n.metadata.name for n in v1.list_node().items] == ["n1"]
    bad = client.CoreV1Api(config.new_client_from_config(config_file=_kubeconfig(tmp, port, paths["ca"], "nope")))
    with pytest.raises(ApiException) as err:
        bad.list_node()
    assert err.value.status == 401


def test_health_is_open_but_nodes_need_the_token_and_the_ca(secure_api):
    paths, port = secure_api
    ctx = ssl.create_default_context(cafile=paths["ca"])
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=5) as r:
        assert r.read() == b"ok"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"https://127.0.0.1:{port}/api/v1/nodes", context=ctx, timeout=5)
    assert err.value.code == 401
    with pytest.raises(urllib.error.URLError) as err:  # a client that does not trust the lab's CA
        urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ssl.create_default_context(), timeout=5)
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)


def test_in_cluster_configuration_reaches_it_like_a_pod(in_cluster, admin):
    admin.create_node(NODE)
    cfg = client.Configuration()
    config.load_incluster_config(cfg)
    v1 = client.CoreV1Api(client.ApiClient(cfg))
    assert [n.metadata.name for n in v1.list_node().items] == ["n1"]
    # the speaker's own client, built with no kubeconfig, takes the same in-cluster path
    names = [n["metadata"]["name"] for n in KubeClient(None).list(NODES)]
    assert names == ["n1"]


def test_the_service_account_gets_what_the_shipped_clusterrole_grants_and_no_more(in_cluster, admin):
    admin.create_node(NODE)
    cfg = client.Configuration()
    config.load_incluster_config(cfg)
    v1 = client.CoreV1Api(client.ApiClient(cfg))
    assert v1.read_node("n1").metadata.name == "n1"  # get
    v1.patch_node_status("n1", {"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]}})
    refused = {
        "patch": lambda: v1.patch_node("n1", {"metadata": {"labels": {"x": "y"}}}),
        "delete": lambda: v1.delete_node("n1"),
        "create": lambda: v1.create_node({**NODE, "metadata": {"name": "n2"}}),
        "update": lambda: v1.replace_node_status("n1", admin.read_node("n1")),
    }
    for verb, call in refused.items():
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403, verb
        body = json.loads(err.value.body)
        assert body["reason"] == "Forbidden" and f"cannot {verb} resource" in body["message"]
        assert 'User "system:serviceaccount:kube-system:podbgp"' in body["message"]
    assert "cannot patch resource \"nodes\"" in json.loads(_forbidden(lambda: v1.patch_node("n1", {})))["message"]
    assert admin.read_node("n1").metadata.labels is None  # nothing it was refused happened


def _forbidden(call) -> str:
    with pytest.raises(ApiException) as err:
        call()
    return err.value.body


def test_kubectl_trusts_the_ca_and_sends_the_token(secure_api, tmp_path):
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed")
    (paths, port), tmp = secure_api, tmp_path
    kc = _kubeconfig(tmp, port, paths["ca"], paths["token"])
    out = subprocess.run(["kubectl", "--kubeconfig", kc, "get", "nodes", "-o", "name"], capture_output=True,
                         text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "KUBECACHEDIR": str(tmp / "cache")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []
    bad = _kubeconfig(tmp, port, paths["ca"], "nope")
    out = subprocess.run(["kubectl", "--kubeconfig", bad, "get", "nodes"], capture_output=True, text=True,
                         timeout=30, env={"PATH": "/usr/bin:/bin", "KUBECACHEDIR": str(tmp / "cache2")})
    assert out.returncode != 0 and "You must be logged in to the server" in out.stderr  # what kubectl says to a 401
