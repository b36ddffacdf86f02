"""ValidatingAdmissionPolicy for the lab API server, evaluated with a real CEL implementation.

kube-apiserver's admission plugin (k8s.io/apiserver/pkg/admission/plugin/policy/validating:
dispatcher.go, validator.go) restated for the lab, over cel-python (`celpy`), the Python CEL
library; this module is lab-only and the speaker never imports it. For each write (CREATE, UPDATE,
DELETE; a PATCH is an UPDATE; subresources such as nodes/status included), every policy whose
matchConstraints match and every binding of it whose matchResources match is evaluated: params
(paramKind + the binding's paramRef), matchConditions (all true, else the policy does not apply),
variables (in order, as `variables.<name>`), then validations. Errors follow failurePolicy (default
Fail). A denial is answered as kube-apiserver answers it: admission.NewForbidden wrapping
"ValidatingAdmissionPolicy '<policy>' with binding '<binding>' denied request: <message>", with the
validation's reason (default Invalid, 422) and that message as the one cause.

Not done here, and said so: the binding's validationActions Warn and Audit are accepted but only
Deny has an effect (no Warning header, no audit log); auditAnnotations are not evaluated; the
`authorizer` variable is absent; CEL's cost budget is not enforced; namespaceSelector sees only the
label kube-apiserver sets on every Namespace (kubernetes.io/metadata.name), as the lab stores no
Namespaces. cel-python 0.5 lacks some of what Kubernetes' CEL environment adds (the optional syntax
`?.`/`[?k]`, the strings, lists, sets, quantity, ip/cidr and url libraries, cel.bind, and
heterogeneous equality: `1 == 1.0` and a number compared with null are errors, not booleans; its
`!=` of a map and null is, so `!=` is given here as the negation of `==`, as the CEL spec has it);
an expression using them is a compile or evaluation error and falls under failurePolicy, as an
invalid expression does in kube-apiserver. The comprehension macros (all, exists, exists_one,
filter, map), also over a map's keys, has(), `in`, size, startsWith and matches work
(tests/unit/test_lab_admission.py keeps both lists).
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Callable

import celpy
from celpy import celtypes, evaluation

from .kinds import ApiError

log = logging.getLogger(__name__)
POLICY, BINDING = "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"
GROUP_VERSION = "admissionregistration.k8s.io/v1"
REASON_CODES = {"Unauthorized": 401, "Forbidden": 403, "Invalid": 422, "RequestEntityTooLarge": 413}
NODE_NAME = "authentication.kubernetes.io/node-name"


@dataclass(frozen=True, slots=True)
class User:
    """Who a request comes from, as the authenticator hands it on (user.Info)."""
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def service_account(cls, namespace: str, account: str, extra: dict[str, list[str]] | None = None,
                        uid: str = "") -> "User":
        """A service account's user, with the groups kube-apiserver gives every one."""
        return cls(f"system:serviceaccount:{namespace}:{account}", uid,
                   ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
                   tuple(sorted((k, tuple(v)) for k, v in (extra or {}).items())))

    @classmethod
    def named(cls, name: str) -> "User":
        """The user of a name alone: a service account's groups when it names one, else authenticated only."""
        parts = name.split(":")
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
            return cls.service_account(parts[2], parts[3])
        return cls(name, groups=("system:authenticated",))

    def info(self) -> dict:
        """The userInfo of an AdmissionRequest or a SelfSubjectReview."""
        out: dict = {"username": self.name}
        if self.uid:
            out["uid"] = self.uid
        out["groups"] = list(self.groups)
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra}
        return out


ADMIN = User("kubernetes-admin", groups=("kubeadm:cluster-admins", "system:authenticated"))


@dataclass(frozen=True, slots=True)
class Request:
    """One write as admission sees it: object is None on DELETE, old_object None on CREATE."""
    operation: str  # CREATE | UPDATE | DELETE
    group: str
    version: str
    resource: str
    kind: str
    name: str
    namespace: str
    user: User
    object: dict | None
    old_object: dict | None
    subresource: str = ""
    dry_run: bool = False

    def cel(self) -> dict:
        """The `request` variable (an AdmissionRequest, without its objects)."""
        gvk = {"group": self.group, "version": self.version, "kind": self.kind}
        gvr = {"group": self.group, "version": self.version, "resource": self.resource}
        return {"uid": str(uuid.uuid4()), "kind": gvk, "resource": gvr, "subResource": self.subresource,
                "requestKind": gvk, "requestResource": gvr, "requestSubResource": self.subresource,
                "name": self.name, "namespace": self.namespace, "operation": self.operation,
                "userInfo": self.user.info(), "dryRun": self.dry_run}


# params(apiVersion, kind, namespace or "", name or "", matchLabels or None) -> the param objects
ParamSource = Callable[[str, str, str, str, "dict | None"], list[dict]]


class Config(Exception):
    """A policy or binding that cannot be used as written (kube-apiserver's configuration error)."""


@dataclass(frozen=True, slots=True)
class Decision:
    message: str
    reason: str = ""  # "" -> Invalid


@dataclass(slots=True)
class Policy:
    name: str
    spec: dict
    programs: dict[str, object] = field(default_factory=dict)  # expression -> compiled program
    error: str = ""  # a compile error: the policy's configuration error

    @property
    def fail_closed(self) -> bool:
        return self.spec.get("failurePolicy", "Fail") != "Ignore"


_ENV = celpy.Environment()


def _not_equal(a, b):
    """CEL's `!=`, the negation of `==` as the spec has it (cel-python's own refuses a map and null)."""
    eq = evaluation.bool_eq(a, b)
    return eq if isinstance(eq, celpy.CELEvalError) else celtypes.BoolType(not eq)


def _compile(expr: str):
    return _ENV.program(_ENV.compile(expr), functions={"_!=_": _not_equal})


def load_policy(obj: dict) -> Policy:
    spec = obj.get("spec") or {}
    policy = Policy(obj["metadata"]["name"], spec)
    exprs = [c["expression"] for c in spec.get("matchConditions") or []]
    exprs += [v["expression"] for v in spec.get("variables") or []]
    for v in spec.get("validations") or []:
        exprs += [v["expression"]] + ([v["messageExpression"]] if v.get("messageExpression") else [])
    for expr in exprs:
        try:
            policy.programs[expr] = _compile(expr)
        except Exception as exc:  # celpy's parse errors carry no common base class worth naming
            policy.error = f"compilation failed: {expr!r}: {str(exc).splitlines()[0]}"
            break
    return policy


class Admission:
    """The policies and bindings given, evaluated for each write (`review`); an empty set admits all."""

    def __init__(self, objects: list[dict], params: ParamSource | None = None) -> None:
        self.policies = sorted((load_policy(o) for o in objects if o.get("kind") == POLICY), key=lambda p: p.name)
        self.bindings = sorted((o for o in objects if o.get("kind") == BINDING), key=lambda b: b["metadata"]["name"])
        self.params = params or (lambda *_: [])

    def __bool__(self) -> bool:
        return bool(self.policies)

    def review(self, req: Request) -> None:
        """Raise kube-apiserver's ApiError for the first denial, as its dispatcher does; else return."""
        for policy in self.policies:
            if not matches(policy.spec.get("matchConstraints") or {}, req):
                continue
            for binding in self.bindings:
                spec = binding.get("spec") or {}
                if spec.get("policyName") != policy.name or not matches(spec.get("matchResources"), req):
                    continue
                decision = self._binding(policy, spec, req)
                if decision is not None and "Deny" in (spec.get("validationActions") or []):
                    raise denied(req, policy.name, binding["metadata"]["name"], decision)

    def _binding(self, policy: Policy, binding: dict, req: Request) -> Decision | None:
        """The denial of one policy through one binding (the first of its params' denials), or None."""
        try:
            if policy.error:
                raise Config(f"failed to configure policy: {policy.error}")
            params = self._params(policy, binding, req)
        except Config as exc:
            return Decision(str(exc)) if policy.fail_closed else None
        for param in params:
            decision = evaluate(policy, req, param)
            if decision is not None:
                return decision
        return None

    def _params(self, policy: Policy, binding: dict, req: Request) -> list[dict | None]:
        kind, ref = policy.spec.get("paramKind"), binding.get("paramRef")
        if not kind:
            return [None]
        if not ref:
            raise Config("failed to configure binding: paramKind is set but the binding has no paramRef")
        found = self.params(kind["apiVersion"], kind["kind"], ref.get("namespace") or req.namespace,
                            ref.get("name", ""), (ref.get("selector") or {}).get("matchLabels"))
        if not found and ref.get("parameterNotFoundAction") == "Deny":
            raise Config("failed to configure binding: no params found for policy binding with `Deny` "
                         "parameterNotFoundAction")
        return list(found)


def evaluate(policy: Policy, req: Request, param: dict | None) -> Decision | None:
    """One policy for one request and param: None if it admits (or does not apply), else the Decision."""
    act = {"object": req.object, "oldObject": req.old_object, "request": req.cel(), "params": param,
           "namespaceObject": _namespace(req.namespace)}
    act = {k: celpy.json_to_cel(v) for k, v in act.items()}
    spec = policy.spec
    errors = []
    for cond in spec.get("matchConditions") or []:
        try:
            if not _true(policy, cond["expression"], act):
                return None  # a false condition wins over errors in others
        except _EvalError as exc:
            errors.append(f"failed to evaluate match condition {cond.get('name', '')!r}: {exc}")
    if errors:
        return Decision(errors[0]) if policy.fail_closed else None
    variables: dict = {}
    for var in spec.get("variables") or []:  # in order, each seeing those before it; a failed one is absent
        act["variables"] = celtypes.MapType(variables)
        try:
            variables[celtypes.StringType(var["name"])] = _run(policy, var["expression"], act)
        except _EvalError as exc:
            log.debug("admission.variable-error policy=%s variable=%s error=%s", policy.name, var["name"], exc)
    act["variables"] = celtypes.MapType(variables)
    for v in spec.get("validations") or []:
        try:
            ok = _true(policy, v["expression"], act)
        except _EvalError as exc:
            if policy.fail_closed:
                return Decision(str(exc))
            continue
        if not ok:
            return Decision(_message(policy, v, act), v.get("reason", ""))
    return None


def _message(policy: Policy, validation: dict, act: dict) -> str:
    """validator.go's order: messageExpression (a one-line string), message, "failed expression: ..."."""
    if validation.get("messageExpression"):
        try:
            out = _run(policy, validation["messageExpression"], act)
            if isinstance(out, str) and out.strip() and "\n" not in out.strip():
                return out.strip()
        except _EvalError:
            pass
    if (validation.get("message") or "").strip():
        return validation["message"].strip()
    return f"failed expression: {validation['expression'].strip()}"


class _EvalError(Exception):
    pass


def _run(policy: Policy, expr: str, act: dict):
    try:
        out = policy.programs[expr].evaluate(act)
    except Exception as exc:  # celpy raises CELEvalError, and for some misuses plain Python errors
        raise _EvalError(f"expression '{expr}' resulted in error: {_why(exc)}") from None
    if isinstance(out, celpy.CELEvalError):
        raise _EvalError(f"expression '{expr}' resulted in error: {_why(out)}")
    return out


def _true(policy: Policy, expr: str, act: dict) -> bool:
    out = _run(policy, expr, act)
    if not isinstance(out, celtypes.BoolType):
        raise _EvalError(f"expression '{expr}' resulted in a {type(out).__name__}, not a bool")
    return bool(out)


def _why(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    return str(args[0]) if args else type(exc).__name__


def _namespace(ns: str) -> dict | None:
    if not ns:
        return None
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}


# -- matching (k8s.io/apiserver/pkg/admission/plugin/policy/matching) -----------------------------

def matches(criteria: dict | None, req: Request) -> bool:
    """matchConstraints / matchResources: selectors, exclusions, then the rules (none: all)."""
    if criteria is None:
        return True
    if not _selected(criteria.get("namespaceSelector"), (_namespace(req.namespace) or {}).get("metadata", {})
                     .get("labels") if req.namespace else None):
        return False
    labels = [((o or {}).get("metadata") or {}).get("labels") or {} for o in (req.object, req.old_object) if o]
    if criteria.get("objectSelector") and not any(_selected(criteria["objectSelector"], lb) for lb in labels):
        return False
    if any(_rule(r, req) for r in criteria.get("excludeResourceRules") or []):
        return False
    rules = criteria.get("resourceRules") or []
    return not rules or any(_rule(r, req) for r in rules)


def _rule(rule: dict, req: Request) -> bool:
    def has(key: str, value: str) -> bool:
        return bool({"*", value} & set(rule.get(key) or []))
    if not (has("apiGroups", req.group) and has("apiVersions", req.version) and has("operations", req.operation)):
        return False
    scope = rule.get("scope", "*")
    if (scope == "Cluster" and req.namespace) or (scope == "Namespaced" and not req.namespace):
        return False
    if rule.get("resourceNames") and req.name not in rule["resourceNames"]:
        return False
    for res in rule.get("resources") or []:
        name, _, sub = res.partition("/")
        if name in ("*", req.resource) and sub in ("*", req.subresource):
            return True
    return False


def _selected(selector: dict | None, labels: dict | None) -> bool:
    """A LabelSelector (matchLabels, matchExpressions) over labels; no selector or {} selects all.
    labels None: a cluster-scoped request, which namespaceSelector never excludes."""
    if not selector or labels is None:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


# -- the answer ------------------------------------------------------------------------------------

def denied(req: Request, policy: str, binding: str, decision: Decision) -> ApiError:
    """admission.NewForbidden(attributes, "ValidatingAdmissionPolicy ... denied request: ...") with the
    decision's reason and code, and that message appended as a cause (dispatcher.go)."""
    message = f"ValidatingAdmissionPolicy '{policy}' with binding '{binding}' denied request: {decision.message}"
    name = req.name or ((req.object or {}).get("metadata") or {}).get("name") \
        or ((req.object or {}).get("metadata") or {}).get("generateName") or "Unknown"
    qualified = f"{req.resource}.{req.group}" if req.group else req.resource
    details = {"name": name}
    if req.group:
        details["group"] = req.group
    details["kind"] = req.resource
    details["causes"] = [{"message": message}]
    reason = decision.reason or "Invalid"
    return ApiError(REASON_CODES.get(reason, 422), reason, f'{qualified} "{name}" is forbidden: {message}', details)


def policy_objects(objects: list[dict]) -> list[dict]:
    """The ValidatingAdmissionPolicy and binding objects among manifests, in their order."""
    return [o for o in objects if o and o.get("kind") in (POLICY, BINDING)
            and o.get("apiVersion") == GROUP_VERSION]
