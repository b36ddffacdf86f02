"""The lab enforces the ValidatingAdmissionPolicies podbgp ships (deploy/admission.yaml, in the
lab's manifests through lab/kustomization.yaml over deploy/), each node's speaker holding its own
bound token: node3's token patching node2's status addresses is denied with kube-apiserver's
answer, node1 keeps node2's route and a Pod ping node1 -> node2 loses nothing meanwhile; node2's
own token may write its NetworkUnavailable condition but not its addresses; every speaker's own
condition write went through the same policy."""
import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from tests.lab.conftest import poll, topology_lab

pytestmark = pytest.mark.lab
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def lab():
    yield from topology_lab(prefix="pba")


def patch_status(lab, token_node, node, body, kind="application/merge-patch+json"):
    with open(os.path.join(lab.pki_dir, f"serviceaccount-{token_node}", "token")) as f:
        token = f.read()
    req = urllib.request.Request(f"https://127.0.0.1:{lab.api_port}/api/v1/nodes/{node}/status", method="PATCH",
                                 data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": kind})
    try:
        with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=os.path.join(lab.pki_dir, "ca.crt")),
                                    timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_the_speakers_own_condition_writes_pass_the_policy(lab):
    from lab import runner

    def all_up():
        for node in ("node1", "node2", "node3"):
            obj = json.loads(runner.kubectl(lab, "get", "node", node, "-o", "json").stdout)
            if {c["type"]: c["status"] for c in obj["status"]["conditions"]}.get("NetworkUnavailable") != "False":
                return False
        return True
    poll(all_up, 60, interval=0.5)
    with open(os.path.join(lab.dir, "admission.yaml")) as f:
        names = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(f)}
    assert names == {(k, n) for k in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
                     for n in ("podbgp-node-status", "podbgp-allocator-lease", "podbgp-service-status")}


def test_node3s_token_cannot_move_node2s_addresses_and_node2s_pods_stay_reachable(lab):
    from lab import demo, runner

    node2 = json.loads(runner.kubectl(lab, "get", "node", "node2", "-o", "json").stdout)
    node3 = json.loads(runner.kubectl(lab, "get", "node", "node3", "-o", "json").stdout)
    cidrs = set(node2["spec"]["podCIDRs"])
    src = next(p for p in lab.pods if p["node"] == "node1")
    dst = next(p for p in lab.pods if p["node"] == "node2")
    lost, stop = [], threading.Event()

    def pinger():
        while not stop.is_set():
            if not demo.ping(lab, src, dst["ipv4"], count=1):
                lost.append(1)
    t = threading.Thread(target=pinger, daemon=True)
    t.start()
    try:
        code, body = patch_status(lab, "node3", "node2", {"status": {"addresses": node3["status"]["addresses"]}})
        print(f"node3's token, PATCH node2/status addresses: {code} {body['message']}")
        message = ("ValidatingAdmissionPolicy 'podbgp-node-status' with binding 'podbgp-node-status' denied "
                   "request: a podbgp speaker writes only its own Node: the token of node3 may not write the status "
                   "of node2")
        assert (code, body) == (403, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": f'nodes "node2" is forbidden: {message}', "reason": "Forbidden",
                                      "details": {"name": "node2", "kind": "nodes", "causes": [{"message": message}]},
                                      "code": 403})
        code, body = patch_status(lab, "node2", "node2", {"status": {"addresses": node3["status"]["addresses"]}})
        print(f"node2's token, PATCH node2/status addresses: {code} {body['message']}")
        assert code == 403 and body["message"].endswith(
            "a podbgp speaker changes only the NetworkUnavailable condition of its Node; this request changes other "
            "status of node2"), body
        # what the speaker itself sends: a strategic merge of the one condition (speaker.node_status)
        code, body = patch_status(lab, "node2", "node2", {"status": {"conditions": [
            {"type": "NetworkUnavailable", "status": "False", "reason": "PodbgpRoutesAnnounced",
             "message": "podbgp announces this node's PodCIDR"}]}}, kind="application/strategic-merge-patch+json")
        print(f"node2's token, PATCH node2/status NetworkUnavailable (strategic merge): {code}")
        assert code == 200, body
        poll(lambda: cidrs <= demo.installed(lab, "node1"), 5)
        deadline = time.monotonic() + 3  # what a hijack took to show in the issue: two seconds
        while time.monotonic() < deadline:
            assert cidrs <= demo.installed(lab, "node1")
            time.sleep(0.2)
    finally:
        stop.set()
        t.join(timeout=10)
    assert not lost
    after = json.loads(runner.kubectl(lab, "get", "node", "node2", "-o", "json").stdout)
    assert after["status"]["addresses"] == node2["status"]["addresses"]
