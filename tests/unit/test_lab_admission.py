"""lab.admission: ValidatingAdmissionPolicy evaluated with cel-python, against in-memory requests.

The policies are small ones of these tests' own (deploy/'s real ones are tested where they are
shipped): "a node's speaker writes only its own Node's status, and there only the
NetworkUnavailable condition", and "only the holder of a Lease (the binding's param) writes a
Service's status"."""
import copy

import pytest

from lab.admission import ADMIN, Admission, Request, User, matches

pytest.importorskip("celpy")

NODE_NAME = "authentication.kubernetes.io/node-name"
SA = "system:serviceaccount:kube-system:podbgp"


def speaker(node: str) -> User:
    return User.service_account("kube-system", "podbgp", {
        NODE_NAME: [node], "authentication.kubernetes.io/pod-name": [f"podbgp-{node}"],
        "authentication.kubernetes.io/pod-uid": ["0000"], "authentication.kubernetes.io/credential-id": ["JTI=1"]})


OWN_STATUS = {
    "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
    "metadata": {"name": "podbgp-own-node-status"},
    "spec": {
        "failurePolicy": "Fail",
        "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                "operations": ["UPDATE"], "resources": ["nodes/status"]}]},
        "matchConditions": [{"name": "speaker", "expression": f"request.userInfo.username == '{SA}'"}],
        "variables": [
            {"name": "node", "expression": f"'{NODE_NAME}' in request.userInfo.extra ? "
                                           f"request.userInfo.extra['{NODE_NAME}'][0] : ''"},
            {"name": "others", "expression": "object.status.conditions.filter(c, c.type != 'NetworkUnavailable')"},
        ],
        "validations": [
            {"expression": "variables.node == object.metadata.name", "reason": "Forbidden",
             "messageExpression": "'a speaker may write only its own Node, not ' + object.metadata.name"},
            {"expression": "object.status.all(k, k == 'conditions' || "
                           "(k in oldObject.status && object.status[k] == oldObject.status[k])) && "
                           "oldObject.status.all(k, k in object.status)",
             "message": "only the NetworkUnavailable condition may change", "reason": "Forbidden"},
            {"expression": "variables.others == "
                           "oldObject.status.conditions.filter(c, c.type != 'NetworkUnavailable')",
             "message": "only the NetworkUnavailable condition may change", "reason": "Forbidden"},
        ],
    },
}
OWN_STATUS_BINDING = {
    "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
    "metadata": {"name": "podbgp-own-node-status"},
    "spec": {"policyName": "podbgp-own-node-status", "validationActions": ["Deny"]},
}
LEASE_HOLDER = {
    "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
    "metadata": {"name": "podbgp-service-status"},
    "spec": {
        "paramKind": {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"},
        "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["*"], "operations": ["*"],
                                                "resources": ["services/status"]}]},
        "validations": [{"expression": f"request.userInfo.extra['{NODE_NAME}'][0] == params.spec.holderIdentity"}],
    },
}
LEASE_BINDING = {
    "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
    "metadata": {"name": "podbgp-service-status-holder"},
    "spec": {"policyName": "podbgp-service-status", "validationActions": ["Deny"],
             "paramRef": {"name": "podbgp-allocator", "namespace": "kube-system", "parameterNotFoundAction": "Deny"}},
}


def node(name: str, ip: str, unavailable: str = "True") -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "resourceVersion": "5"},
            "spec": {"podCIDR": "10.42.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                       "conditions": [{"type": "Ready", "status": "True"},
                                      {"type": "NetworkUnavailable", "status": unavailable}]}}


def status_update(user: User, old: dict, new: dict) -> Request:
    return Request("UPDATE", "", "v1", "nodes", "Node", old["metadata"]["name"], "", user, new, old, "status")


def denial(adm: Admission, req: Request):
    with pytest.raises(Exception) as err:
        adm.review(req)
    return err.value


POLICY = Admission([OWN_STATUS, OWN_STATUS_BINDING])


def test_a_speaker_may_change_its_own_nodes_network_unavailable_condition():
    old = node("node2", "192.168.50.12")
    new = node("node2", "192.168.50.12", unavailable="False")
    for _ in range(2):  # the same answer every time
        assert POLICY.review(status_update(speaker("node2"), old, new)) is None


def test_another_nodes_status_is_denied_as_kube_apiserver_answers():
    old = node("node2", "192.168.50.12")
    new = node("node2", "192.168.50.13")
    err = denial(POLICY, status_update(speaker("node3"), old, new))
    message = ("ValidatingAdmissionPolicy 'podbgp-own-node-status' with binding 'podbgp-own-node-status' denied "
               "request: a speaker may write only its own Node, not node2")
    assert err.code == 403 and err.reason == "Forbidden"
    assert err.status() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": f'nodes "node2" is forbidden: {message}', "reason": "Forbidden",
                            "details": {"name": "node2", "kind": "nodes", "causes": [{"message": message}]},
                            "code": 403}


@pytest.mark.parametrize("change", ["addresses", "Ready", "new-key", "dropped-key"])
def test_its_own_node_but_anything_besides_network_unavailable_is_denied(change):
    old = node("node2", "192.168.50.12")
    new = copy.deepcopy(old)
    if change == "addresses":
        new["status"]["addresses"][0]["address"] = "192.168.50.13"
    elif change == "Ready":
        new["status"]["conditions"][0]["status"] = "False"
    elif change == "new-key":
        new["status"]["capacity"] = {"pods": "110"}
    else:
        del new["status"]["addresses"]
    err = denial(POLICY, status_update(speaker("node2"), old, new))
    assert err.code == 403
    assert err.message.endswith("denied request: only the NetworkUnavailable condition may change")


def test_the_policy_does_not_apply_where_its_match_condition_is_false():
    old, new = node("node2", "192.168.50.12"), node("node2", "192.168.50.13")
    assert POLICY.review(status_update(ADMIN, old, new)) is None  # the administrator: another user
    other_sa = User.service_account("kube-system", "kube-router")
    assert POLICY.review(status_update(other_sa, old, new)) is None


def test_resource_rules_match_as_kube_apiserver_matches_them():
    old = node("n1", "192.168.50.11")
    req = status_update(ADMIN, old, old)
    main = Request("UPDATE", "", "v1", "nodes", "Node", "n1", "", ADMIN, old, old)
    rule = {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"]}

    def m(r, request):
        return matches({"resourceRules": [{**rule, **r}]}, request)
    assert m({"resources": ["nodes/status"]}, req) and not m({"resources": ["nodes/status"]}, main)
    assert not m({"resources": ["nodes"]}, req) and m({"resources": ["nodes"]}, main)
    assert m({"resources": ["nodes/*"]}, req) and m({"resources": ["*/status"]}, req) and m({"resources": ["*/*"]}, req)
    assert not m({"resources": ["*"]}, req) and m({"resources": ["*"]}, main)
    assert m({"resources": ["nodes/status"], "resourceNames": ["n1"]}, req)
    assert not m({"resources": ["nodes/status"], "resourceNames": ["n2"]}, req)
    assert not m({"resources": ["nodes/status"], "operations": ["CREATE", "DELETE"]}, req)
    assert not m({"resources": ["nodes/status"], "apiGroups": ["apps"]}, req)
    assert not m({"resources": ["nodes/status"], "scope": "Namespaced"}, req)
    assert not matches({"resourceRules": [{**rule, "resources": ["*/*"]}],
                        "excludeResourceRules": [{**rule, "resources": ["nodes/status"]}]}, req)
    assert matches({}, req) and matches(None, req)  # a binding without matchResources: what the policy matches


def test_warn_and_audit_bindings_do_not_deny():
    binding = copy.deepcopy(OWN_STATUS_BINDING)
    binding["spec"]["validationActions"] = ["Warn", "Audit"]
    old, new = node("node2", "192.168.50.12"), node("node2", "192.168.50.13")
    assert Admission([OWN_STATUS, binding]).review(status_update(speaker("node3"), old, new)) is None


def test_a_policy_without_a_binding_does_nothing():
    old, new = node("node2", "192.168.50.12"), node("node2", "192.168.50.13")
    assert Admission([OWN_STATUS]).review(status_update(speaker("node3"), old, new)) is None


# -- params ---------------------------------------------------------------------------------------

def lease(holder):
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "podbgp-allocator", "namespace": "kube-system"}, "spec": {"holderIdentity": holder}}


def service_status(user: User) -> Request:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}
    return Request("UPDATE", "", "v1", "services", "Service", "web", "default", user, svc, svc, "status")


def with_lease(holder):
    asked = []

    def params(api_version, kind, ns, name, labels):
        asked.append((api_version, kind, ns, name))
        return [lease(holder)] if holder else []
    return Admission([LEASE_HOLDER, LEASE_BINDING], params), asked


def test_the_lease_holder_may_write_a_service_status_and_no_one_else():
    adm, asked = with_lease("node1")
    assert adm.review(service_status(speaker("node1"))) is None
    assert asked == [("coordination.k8s.io/v1", "Lease", "kube-system", "podbgp-allocator")]
    err = denial(adm, service_status(speaker("node2")))
    # no reason given: Invalid, 422; no message: the expression
    assert err.code == 422 and err.reason == "Invalid"
    assert err.message == (
        "services \"web\" is forbidden: ValidatingAdmissionPolicy 'podbgp-service-status' with binding "
        "'podbgp-service-status-holder' denied request: failed expression: "
        f"request.userInfo.extra['{NODE_NAME}'][0] == params.spec.holderIdentity")


def test_a_missing_param_with_deny_denies_and_with_allow_admits():
    adm, _ = with_lease(None)
    err = denial(adm, service_status(speaker("node1")))
    assert err.message.endswith("denied request: failed to configure binding: no params found for policy binding "
                                "with `Deny` parameterNotFoundAction")
    binding = copy.deepcopy(LEASE_BINDING)
    binding["spec"]["paramRef"]["parameterNotFoundAction"] = "Allow"
    assert Admission([LEASE_HOLDER, binding], lambda *_: []).review(service_status(speaker("node1"))) is None


# -- errors and the failure policy ----------------------------------------------------------------

def _policy(expression: str, failure: str = "Fail", **validation) -> Admission:
    policy = copy.deepcopy(OWN_STATUS)
    policy["spec"].update(failurePolicy=failure, variables=[], matchConditions=[],
                          validations=[{"expression": expression, **validation}])
    return Admission([policy, OWN_STATUS_BINDING])


def test_an_evaluation_error_follows_the_failure_policy():
    old = node("node2", "192.168.50.12")
    req = status_update(ADMIN, old, old)  # the administrator's token carries no extra
    expr = f"request.userInfo.extra['{NODE_NAME}'][0] == 'x'"
    err = denial(_policy(expr), req)
    assert err.code == 422 and f"denied request: expression '{expr}' resulted in error" in err.message
    assert _policy(expr, failure="Ignore").review(req) is None


def test_an_expression_cel_python_cannot_compile_denies_under_fail():
    old = node("node2", "192.168.50.12")
    err = denial(_policy("object.?metadata.?labels.orValue({}) == {}"), status_update(ADMIN, old, old))
    assert "denied request: failed to configure policy: compilation failed" in err.message
    assert _policy("object.?x.orValue(1) == 1", failure="Ignore").review(status_update(ADMIN, old, old)) is None


def test_message_expression_falls_back_to_message_then_to_the_expression():
    old = node("node2", "192.168.50.12")
    req = status_update(ADMIN, old, old)
    assert denial(_policy("false", messageExpression="'no ' + object.metadata.name"), req).message.endswith(": no node2")
    assert denial(_policy("false", messageExpression="'two\\nlines'", message="m"), req).message.endswith(": m")
    assert denial(_policy("false", messageExpression="1", message=" m "), req).message.endswith(": m")
    assert denial(_policy(" false "), req).message.endswith(": failed expression: false")


def test_request_and_old_object_on_create_and_delete():
    created = node("n9", "192.168.50.19")
    checks = ("oldObject == null && request.operation == 'CREATE' && request.name == 'n9' && "
              "request.subResource == '' && request.namespace == '' && "
              "'system:authenticated' in request.userInfo.groups && request.kind.kind == 'Node'")
    policy = copy.deepcopy(OWN_STATUS)
    policy["spec"].update(matchConditions=[], variables=[], validations=[{"expression": checks}],
                          matchConstraints={"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                               "operations": ["CREATE", "DELETE"],
                                                               "resources": ["nodes"]}]})
    adm = Admission([policy, OWN_STATUS_BINDING])
    assert adm.review(Request("CREATE", "", "v1", "nodes", "Node", "n9", "", speaker("n9"), created, None)) is None
    err = denial(adm, Request("DELETE", "", "v1", "nodes", "Node", "n9", "", speaker("n9"), None, created))
    assert err.code == 422 and '"n9" is forbidden' in err.message


# -- what cel-python 0.5 does and does not do of Kubernetes' CEL ------------------------------------

SUPPORTED = [
    "object.status.conditions.all(c, c.type != '')", "object.status.conditions.exists(c, c.type == 'Ready')",
    "object.status.conditions.exists_one(c, c.type == 'Ready')",
    "object.status.conditions.filter(c, c.type == 'Ready').map(c, c.status) == ['True']",
    "object.metadata.all(k, k != '')", "object.metadata.exists(k, k == 'name')",  # macros over a map's keys
    "object.metadata.filter(k, k == 'name') == ['name']", "object.metadata.map(k, k).size() == 2",
    "has(object.spec.podCIDR) && !has(object.spec.taints)", "'name' in object.metadata",
    "object.metadata.name.startsWith('no') && object.metadata.name.matches('^node[0-9]$')",
    "size(object.status.addresses) == 1", "oldObject == null", "object != null", "object.status != oldObject",
]
MISSING = {  # Kubernetes' CEL environment has these; cel-python 0.5 does not
    "optional field": "object.?metadata.?labels.orValue({}) == {}",
    "optional index": "object.metadata[?'labels'].orValue({}) == {}",
    "strings library": "object.metadata.name.lowerAscii() == 'node2'",
    "strings split": "'a,b'.split(',') == ['a', 'b']",
    "strings join": "['a', 'b'].join(',') == 'a,b'",
    "lists library": "[1, 2].isSorted()",
    "sets library": "sets.contains([1, 2], [1])",
    "cel.bind": "cel.bind(n, object.metadata.name, n == 'node2')",
    "quantity": "quantity('1Gi').isGreaterThan(quantity('1Mi'))",
    "ip library": "isIP('192.168.50.12')",
    "cidr library": "cidr('10.42.0.0/16').containsIP('10.42.1.1')",
    "url library": "isURL('https://example.com')",
    "heterogeneous equality": "1 == 1.0",
    "a number compared with null": "size(object.metadata) != null",  # cel-go: true; cel-python: no overload
}


def _one(expression: str, failure: str) -> Admission:
    return _policy(expression, failure=failure)


@pytest.mark.parametrize("expression", SUPPORTED)
def test_cel_python_evaluates_what_policies_commonly_use(expression):
    new = node("node2", "192.168.50.12", unavailable="False")
    req = Request("UPDATE", "", "v1", "nodes", "Node", "node2", "", ADMIN, new, None, "status")
    assert _one(expression, "Fail").review(req) is None, expression


@pytest.mark.parametrize("name", sorted(MISSING))
def test_what_cel_python_lacks_is_an_error_under_the_failure_policy(name):
    old = node("node2", "192.168.50.12")
    req = status_update(ADMIN, old, old)
    err = denial(_one(MISSING[name], "Fail"), req)
    assert err.code == 422 and ("compilation failed" in err.message or "resulted in error" in err.message), err.message
    assert _one(MISSING[name], "Ignore").review(req) is None
