"""deploy/admission.yaml: the ValidatingAdmissionPolicies that keep each node's speaker to its own
Node's NetworkUnavailable condition, the allocator Lease to itself and Service status to the Lease
holder. The objects validate against the Kubernetes 1.32 schemas; every CEL expression is
evaluated with a real CEL implementation (cel-python) on requests as kube-apiserver builds them."""
import copy
import os

import celpy
import kubernetes_validate
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SA = "system:serviceaccount:kube-system:podbgp"
NODE_NAME = "authentication.kubernetes.io/node-name"


def objects():
    with open(os.path.join(ROOT, "deploy", "admission.yaml")) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def policy(name):
    return next(o for o in objects() if o["kind"] == "ValidatingAdmissionPolicy" and o["metadata"]["name"] == name)


_env = celpy.Environment()


def cel(expr, act):
    return _env.program(_env.compile(expr)).evaluate(act)


def decide(name, obj, old, user=SA, node=None, params=None):
    """(allowed, message) of one policy for one request, as kube-apiserver decides: matchConditions
    first (not all true: the policy does not apply), then the variables in order, then each
    validation (the first false one denies, with its message)."""
    spec = policy(name)["spec"]
    extra = {NODE_NAME: [node]} if node else {}
    act = {"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old),
           "request": celpy.json_to_cel({"userInfo": {"username": user, "groups": [], "extra": extra}}),
           "params": celpy.json_to_cel(params)}
    if not all(cel(m["expression"], act) for m in spec.get("matchConditions", ())):
        return True, "not applicable"
    variables = {}
    for v in spec.get("variables", ()):
        act["variables"] = celpy.json_to_cel(variables)
        variables[v["name"]] = cel(v["expression"], act)
    act["variables"] = celpy.celtypes.MapType({celpy.celtypes.StringType(k): v for k, v in variables.items()})
    for check in spec["validations"]:
        if not cel(check["expression"], act):
            msg = cel(check["messageExpression"], act) if "messageExpression" in check else check["message"]
            return False, " ".join(str(msg).split())
    return True, ""


NODE2 = {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": "node2", "labels": {"kubernetes.io/hostname": "node2"}, "resourceVersion": "7"},
         "spec": {"podCIDR": "10.42.2.0/24", "podCIDRs": ["10.42.2.0/24"]},
         "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.12"}],
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"},
                                   {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}],
                    "nodeInfo": {"kubeletVersion": "v1.32.0"}}}


def patched(node, f):
    new = copy.deepcopy(node)
    f(new)
    new["metadata"]["resourceVersion"] = "8"
    return new


def set_condition(n):
    n["status"]["conditions"][1] = {"type": "NetworkUnavailable", "status": "False", "reason": "PodbgpRoutesAnnounced"}


@pytest.mark.parametrize("obj", objects(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_valid_against_the_1_32_schemas(obj):
    assert kubernetes_validate.validate(obj, "1.32", strict=True) == "1.32"


def test_every_policy_has_a_binding_that_denies():
    objs = objects()
    policies = {o["metadata"]["name"] for o in objs if o["kind"] == "ValidatingAdmissionPolicy"}
    bindings = {o["spec"]["policyName"]: o["spec"] for o in objs if o["kind"] == "ValidatingAdmissionPolicyBinding"}
    assert policies == set(bindings) == {"podbgp-node-status", "podbgp-allocator-lease", "podbgp-service-status"}
    assert all(b["validationActions"] == ["Deny"] for b in bindings.values())
    assert bindings["podbgp-service-status"]["paramRef"]["name"] == "podbgp-allocator"


def test_own_node_network_unavailable_is_allowed():
    assert decide("podbgp-node-status", patched(NODE2, set_condition), NODE2, node="node2") == (True, "")


def test_another_nodes_token_is_denied():
    allowed, msg = decide("podbgp-node-status", patched(NODE2, set_condition), NODE2, node="node3")
    assert not allowed and msg == "a podbgp speaker writes only its own Node: the token of node3 may not write the status of node2"


def test_own_token_changing_addresses_is_denied():
    def move(n):
        n["status"]["addresses"] = [{"type": "InternalIP", "address": "192.168.50.13"}]
    allowed, msg = decide("podbgp-node-status", patched(NODE2, move), NODE2, node="node2")
    assert not allowed and "changes only the NetworkUnavailable condition" in msg


@pytest.mark.parametrize("change", [
    lambda n: n["status"]["conditions"].__setitem__(0, {"type": "Ready", "status": "False", "reason": "X"}),
    lambda n: n["status"].__setitem__("capacity", {"pods": "1"}),
    lambda n: n["status"]["conditions"].append({"type": "Other", "status": "True"}),
], ids=["ready-condition", "capacity-added", "condition-added"])
def test_own_token_changing_other_status_is_denied(change):
    assert not decide("podbgp-node-status", patched(NODE2, change), NODE2, node="node2")[0]


@pytest.mark.parametrize("change", [
    lambda n: n["metadata"]["labels"].__setitem__("node-role", "x"),
    lambda n: n["metadata"].__setitem__("annotations", {"podbgp.io/asn": "65099"}),
    lambda n: n["spec"].__setitem__("podCIDRs", ["10.42.9.0/24"]),
], ids=["label", "annotation", "spec"])
def test_own_token_changing_metadata_or_spec_is_denied(change):
    allowed, msg = decide("podbgp-node-status", patched(NODE2, change), NODE2, node="node2")
    assert not allowed and "no spec, label or annotation" in msg


def test_a_token_without_a_node_name_may_write_no_node_status():
    allowed, msg = decide("podbgp-node-status", patched(NODE2, set_condition), NODE2, node=None)
    assert not allowed and msg.startswith("podbgp's token names no node")


def test_other_users_are_not_this_policys_business():
    def move(n):
        n["status"]["addresses"] = []
    assert decide("podbgp-node-status", patched(NODE2, move), NODE2, user="system:node:node2", node=None) == (
        True, "not applicable")


LEASE = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
         "metadata": {"name": "podbgp-allocator", "namespace": "kube-system"},
         "spec": {"holderIdentity": "node1", "leaseDurationSeconds": 10}}


@pytest.mark.parametrize("holder, node, allowed", [("node1", "node1", True), ("", "node2", True),
                                                   ("node3", "node2", False), ("node2", None, False)])
def test_the_lease_is_held_only_for_oneself(holder, node, allowed):
    new = copy.deepcopy(LEASE)
    new["spec"]["holderIdentity"] = holder
    assert decide("podbgp-allocator-lease", new, LEASE, node=node)[0] is allowed


SVC = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
       "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}, "status": {"loadBalancer": {}}}


def assign(ip):
    def f(s):
        s["status"]["loadBalancer"] = {"ingress": [{"ip": ip}]}
    return f


def test_service_status_only_from_the_lease_holder_and_only_load_balancer():
    assert decide("podbgp-service-status", patched(SVC, assign("192.0.2.10")), SVC, node="node1", params=LEASE) == (True, "")
    allowed, msg = decide("podbgp-service-status", patched(SVC, assign("192.0.2.10")), SVC, node="node2", params=LEASE)
    assert not allowed and msg == "only the holder of the Lease podbgp-allocator writes Service status; node2 does not hold it"

    def spec_too(s):
        assign("192.0.2.10")(s)
        s["spec"]["externalIPs"] = ["192.0.2.99"]
    allowed, msg = decide("podbgp-service-status", patched(SVC, spec_too), SVC, node="node1", params=LEASE)
    assert not allowed and msg == "the allocator changes only status.loadBalancer of web"
