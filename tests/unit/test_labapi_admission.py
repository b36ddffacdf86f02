"""The lab API server process with one bound token per node's speaker and a ValidatingAdmissionPolicy:
one node's token patching another Node's status is denied with kube-apiserver's answer (the exact
Status body), its own Node's NetworkUnavailable condition is allowed, and the official client and
kubectl see the identity each token carries (SelfSubjectReview)."""
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from lab import pki

from tests.unit.conftest import ROOT, SA_USER, shipped_rules
from tests.unit.test_lab_admission import OWN_STATUS, OWN_STATUS_BINDING, node

pytest.importorskip("celpy")


@pytest.fixture
def api(tmp_path):
    """`python -m lab.apiserver` over HTTPS with the admin token, node2's and node3's bound tokens and
    the policy; yields (port, pki paths, {node: token file}). Stopped by its PID."""
    if not shutil.which("openssl"):
        pytest.skip("openssl(1) is not installed")
    paths = pki.make(str(tmp_path / "pki"))
    policy = tmp_path / "admission.yaml"
    policy.write_text(yaml.safe_dump_all([OWN_STATUS, OWN_STATUS_BINDING]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "lab.apiserver", "--state", str(tmp_path / "nodes.json"),
            "--listen", f"127.0.0.1:{port}", "--tls-cert", paths["cert"], "--tls-key", paths["key"],
            "--token-file", paths["token_file"], "--admission", str(policy)]
    tokens = {}
    for name in ("node2", "node3"):
        identity = pki.bound_account(paths["ca"].rpartition("/")[0], name, "kube-system", "podbgp", f"podbgp-{name[-1]}abcd")
        rules = tmp_path / f"{name}-rules.json"
        rules.write_text(json.dumps({**identity, "rules": shipped_rules()}))
        tokens[name] = os.path.join(identity["mount"], "token")
        argv += ["--account", f"{tokens[name]}={rules}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        yield port, paths, tokens
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def request(port, paths, token_file, method, path, body=None, ctype="application/merge-patch+json"):
    """(HTTP status, JSON body) of one request as it goes on the wire."""
    with open(token_file) as f:
        token = f.read().strip()
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": ctype})
    ctx = ssl.create_default_context(cafile=paths["ca"])
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def admin_client(tmp_path, port, paths):
    kc = tmp_path / "admin-kubeconfig"
    kc.write_text(pki.kubeconfig(f"https://127.0.0.1:{port}", paths["ca"], paths["token"]))
    return client.CoreV1Api(config.new_client_from_config(config_file=str(kc)))


def test_one_nodes_token_patching_another_nodes_status_is_denied_as_kube_apiserver_answers(api, tmp_path):
    port, paths, tokens = api
    admin = admin_client(tmp_path, port, paths)
    for name, ip in (("node2", "192.168.50.12"), ("node3", "192.168.50.13")):
        admin.create_node({k: v for k, v in node(name, ip).items() if k != "status"})
        admin.patch_node_status(name, {"status": node(name, ip)["status"]})  # the administrator: not a speaker
    before = admin.read_node("node2").to_dict()
    hijack = {"status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.13"}]}}
    code, body = request(port, paths, tokens["node3"], "PATCH", "/api/v1/nodes/node2/status", hijack)
    message = ("ValidatingAdmissionPolicy 'podbgp-own-node-status' with binding 'podbgp-own-node-status' denied "
               "request: a speaker may write only its own Node, not node2")
    assert (code, body) == (403, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": f'nodes "node2" is forbidden: {message}', "reason": "Forbidden",
                                  "details": {"name": "node2", "kind": "nodes", "causes": [{"message": message}]},
                                  "code": 403})
    assert admin.read_node("node2").to_dict() == before  # nothing written, no new resourceVersion
    # the same token on its own Node: NetworkUnavailable may change, the addresses may not
    own = {"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False", "reason": "PodbgpIsUp"}]}}
    code, body = request(port, paths, tokens["node2"], "PATCH", "/api/v1/nodes/node2/status", own,
                         "application/strategic-merge-patch+json")
    assert code == 200, body
    assert {c["type"]: c["status"] for c in body["status"]["conditions"]} == {"Ready": "True", "NetworkUnavailable": "False"}
    code, body = request(port, paths, tokens["node2"], "PATCH", "/api/v1/nodes/node2/status", hijack)
    assert code == 403 and body["message"].endswith("denied request: only the NetworkUnavailable condition may change")
    # a JSON patch is the same UPDATE (the speakers' RBAC grants no PUT of nodes/status)
    whole = admin.read_node("node3").to_dict()
    code, body = request(port, paths, tokens["node2"], "PATCH", "/api/v1/nodes/node3/status",
                         [{"op": "replace", "path": "/status/conditions/1/status", "value": "False"}],
                         "application/json-patch+json")
    assert code == 403 and body["message"].endswith("denied request: a speaker may write only its own Node, not node3")
    assert admin.read_node("node3").to_dict() == whole


def test_the_official_client_sees_the_denial_and_each_token_names_its_node(api, tmp_path):
    port, paths, tokens = api
    admin = admin_client(tmp_path, port, paths)
    admin.create_node({k: v for k, v in node("node3", "192.168.50.13").items() if k != "status"})
    with open(tokens["node2"]) as f:
        kc = tmp_path / "node2-kubeconfig"
        kc.write_text(pki.kubeconfig(f"https://127.0.0.1:{port}", paths["ca"], f.read()))
    v1 = client.CoreV1Api(config.new_client_from_config(config_file=str(kc)))
    with pytest.raises(ApiException) as err:
        v1.patch_node_status("node3", {"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]}})
    assert err.value.status == 403 and json.loads(err.value.body)["details"]["causes"]
    for name, token_file in tokens.items():
        code, body = request(port, paths, token_file, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                             {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}, "application/json")
        who = body["status"]["userInfo"]
        assert code == 201 and who["username"] == SA_USER
        assert who["groups"] == ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
        assert who["extra"]["authentication.kubernetes.io/node-name"] == [name]
        assert set(who["extra"]) == {f"authentication.kubernetes.io/{k}" for k in
                                     ("node-name", "pod-name", "pod-uid", "credential-id")}
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "--kubeconfig", str(kc), "auth", "whoami", "-o", "json"],
                             capture_output=True, text=True, timeout=30, env={**os.environ, "KUBECACHEDIR": str(tmp_path / "kc")})
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["status"]["userInfo"]["extra"]["authentication.kubernetes.io/node-name"] == ["node2"]
