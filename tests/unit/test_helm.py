"""deploy/helm/podbgp: values against values.schema.json, the template paths against
values.yaml, and the chart rendered (by a small evaluator of the template subset it uses) against
the kustomize base, the Kubernetes 1.32 schemas and the speaker's config parser.

helm is not installed here. The evaluator knows text/template's trim markers, define/include,
if/with/else/end and the functions the chart calls; anything else is an error, so a template that
starts using more fails this test instead of being rendered wrongly.
"""
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

from speaker import config as cfgmod

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "deploy", "helm", "podbgp")
TEMPLATES = os.path.join(CHART, "templates")
K8S_VERSION = "1.32.0"


def _load(name: str):
    with open(os.path.join(CHART, name)) as f:
        return json.load(f) if name.endswith(".json") else yaml.safe_load(f)


VALUES = _load("values.yaml")
SCHEMA = _load("values.schema.json")
VALIDATOR = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
POOL = {"name": "default", "cidrs": ["203.0.113.0/24", "fd00:113::/112"]}
ALLOCATING = {"services": {"loadBalancer": {"pools": [POOL], "allocate": True}}}  # every Service rule on


def _sources() -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(TEMPLATES)):
        with open(os.path.join(TEMPLATES, name)) as f:
            out[name] = f.read()
    return out


# --- the evaluator -------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-[ \t\n])?(.*?)([ \t\n]-)?\}\}", re.S)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\||[^\s|]+')


class TemplateError(Exception):
    pass


def _tokens(src: str) -> list[tuple[str, str]]:
    """Text and action tokens, with `{{- ` and ` -}}` trimming already applied."""
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    actions = list(_ACTION.finditer(src))
    if len(actions) != src.count("{{"):  # an action the pattern missed would pass through as text
        raise TemplateError(f"{src.count('{{') - len(actions)} unclosed or unreadable {{{{ ... }}}}")
    for m in actions:
        text = src[pos:m.start()]
        text = text.lstrip(" \t\r\n") if trim_next else text
        out.append(("text", text.rstrip(" \t\r\n") if m.group(1) else text))
        if not m.group(2).strip().startswith("/*"):
            out.append(("action", m.group(2).strip()))
        pos, trim_next = m.end(), bool(m.group(3))
    out.append(("text", src[pos:].lstrip(" \t\r\n") if trim_next else src[pos:]))
    return out


def _parse(toks, i, defines, ends=()):
    """Nodes up to one of `ends` (none at the top); returns (nodes, index after it, that keyword)."""
    nodes = []
    while i < len(toks):
        kind, val = toks[i]
        i += 1
        if kind == "text":
            nodes.append(("text", val))
            continue
        word, _, rest = val.partition(" ")
        if word == "else" and rest.strip():
            raise TemplateError(f"unsupported {{{{ {val} }}}} (nest an if in the else instead)")
        if word in ends:
            return nodes, i, word
        if word in ("if", "with"):
            body, i, stop = _parse(toks, i, defines, ("end", "else"))
            alt = []
            if stop == "else":
                alt, i, _ = _parse(toks, i, defines, ("end",))
            nodes.append((word, rest, body, alt))
        elif word == "define":
            defines[json.loads(rest)], i, _ = _parse(toks, i, defines, ("end",))
        elif word in ("end", "else", "range", "template", "block"):
            raise TemplateError(f"unsupported or misplaced action {{{{ {val} }}}}")
        else:
            nodes.append(("expr", val))
    if ends:
        raise TemplateError("missing {{ end }}")
    return nodes, i, None


def _truthy(v) -> bool:
    return v not in (None, False, 0, "") and v != [] and v != {}


def _text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        raise TemplateError(f"printing a {type(v).__name__} (use toYaml): {v!r}")
    return str(v)


def _to_yaml(v) -> str:  # Helm's toYaml: sorted keys, no trailing newline
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n")


def _indent(n, s) -> str:
    return "\n".join(" " * n + line for line in _text(s).split("\n"))


FUNCS = {
    "toYaml": _to_yaml,
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "indent": _indent,
    "quote": lambda v: json.dumps(_text(v)),
    "default": lambda d, v=None: v if _truthy(v) else d,
    "int64": int,
    "eq": lambda a, *others: any(a == b for b in others),
    "sha256sum": lambda s: hashlib.sha256(_text(s).encode()).hexdigest(),
}


class Chart:
    def __init__(self, sources: dict[str, str]):
        self.defines: dict[str, list] = {}
        self.trees = {name: _parse(_tokens(src), 0, self.defines)[0] for name, src in sources.items()}

    def render(self, name: str, root: dict) -> str:
        return self._run(self.trees[name], root, root)

    def _run(self, nodes, dot, root) -> str:
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "expr":
                out.append(_text(self._pipe(node[1], dot, root)))
            else:
                word, pipe, body, alt = node
                v = self._pipe(pipe, dot, root)
                out.append(self._run(body if _truthy(v) else alt, v if word == "with" and _truthy(v) else dot, root))
        return "".join(out)

    def _pipe(self, pipe: str, dot, root):
        cmds, cur = [], []
        for tok in _TOKEN.findall(pipe):
            if tok == "|":
                cmds.append(cur)
                cur = []
            else:
                cur.append(tok)
        value, first = None, True
        for cmd in cmds + [cur]:
            args = [self._operand(a, dot, root) for a in cmd[1:]] + ([] if first else [value])
            if cmd[0] == "include":
                value = self._run(self.defines[args[0]], args[1], root)
            elif cmd[0] in FUNCS:
                value = FUNCS[cmd[0]](*args)
            elif first and len(cmd) == 1:
                value = self._operand(cmd[0], dot, root)
            else:
                raise TemplateError(f"unknown function {cmd[0]!r} in {pipe!r}")
            first = False
        return value

    @staticmethod
    def _operand(tok: str, dot, root):
        if tok.startswith('"'):
            return json.loads(tok)
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        if tok in ("true", "false"):
            return tok == "true"
        if tok == "." or tok.startswith(".") or tok.startswith("$"):
            obj = root if tok.startswith("$") else dot
            for part in filter(None, tok.lstrip("$").split(".")):
                if not isinstance(obj, dict) or part not in obj:
                    raise TemplateError(f"{tok}: no field {part!r}")
                obj = obj[part]
            return obj
        raise TemplateError(f"unknown function or operand {tok!r}")


def _merge(base: dict, over: dict) -> dict:
    """Helm's coalescing of user values over the chart's: maps merge, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render(overrides: dict | None = None, namespace: str = "kube-system") -> tuple[dict, str]:
    chart = _load("Chart.yaml")
    values = _merge(VALUES, overrides or {})
    errors = sorted(VALIDATOR.iter_errors(values), key=str)
    assert not errors, f"values refused by values.schema.json: {errors[0].message}"
    root = {"Values": values, "Release": {"Name": "podbgp", "Namespace": namespace, "Service": "Helm"},
            "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]}}
    c = Chart(_sources())
    objects = {}
    for name in c.trees:
        if name.endswith(".yaml"):
            for doc in yaml.safe_load_all(c.render(name, root)):
                if doc:
                    objects[doc["kind"], doc["metadata"]["name"]] = doc
    return objects, c.render("NOTES.txt", root)


# --- values.schema.json --------------------------------------------------------------------------

def test_schema_is_draft7_and_values_yaml_validates():
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert [e.message for e in VALIDATOR.iter_errors(VALUES)] == []


def _with(path: str, value):
    """values.yaml with one path (`a.b`, `peers.0.c`) set; value DROP deletes it."""
    values = copy.deepcopy(VALUES)
    *head, last = path.split(".")
    obj = values
    for part in head:
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    if value is DROP:
        del obj[last]
    elif isinstance(obj, list):
        obj[int(last)] = value
    else:
        obj[last] = value
    return values


DROP = object()


@pytest.mark.parametrize("path,value", [
    ("asnn", 65001),                            # misspelt keys, at every level
    ("image.tagg", "v1"),
    ("peers.0.holdtime", 9),
    ("cni.bridgeName", "br0"),
    ("podCIDR.nodelocal", []),
    ("resources.request", {"cpu": "1"}),
    ("tolerations.0.operater", "Exists"),
    ("asn", "64512"),                           # wrong types and ranges
    ("asn", 0),
    ("asn", 4294967296),
    ("asn", DROP),
    ("peers", []),
    ("peers.0.address", "10.0.0.300"),
    ("peers.0.address", "tor1"),
    ("peers.0.asn", DROP),
    ("peers.0.holdTime", 2),
    ("peers.0.families", ["ipv5"]),
    ("clusterCIDRs", []),
    ("clusterCIDRs", ["10.42.0.0"]),
    ("clusterCIDRs", ["10.42.0.0/33"]),
    ("clusterCIDRs", "10.42.0.0/16"),
    ("serviceCIDRs", ["10.43.0.0/16", "fd00:43::/108", "10.44.0.0/16"]),
    ("podCIDR.nodeLocal", ["banana"]),
    ("gracefulRestart", 5000),
    ("metricsPort", 70000),
    ("metricsPort", "9469"),
    ("logLevel", "verbose"),
    ("image.pullPolicy", "always"),
    ("image.repository", ""),
    ("bgpPasswordsSecret", "Bad_Name"),
    ("cni.enabled", "yes"),
    ("cni.confPath", "/opt/cni/net.d/10-podbgp.conflist"),
    ("cni.confPath", "/etc/cni/net.d/10-podbgp.conf"),
    ("cni.bridge", "a-bridge-name-too-long"),
    ("cni.mtu", 100),
    ("tolerations.0.operator", "exists"),
    ("nodeSelector", {"kubernetes.io/os": 1}),
    ("resources.requests.memory", "lots"),
    ("peers.0.password", "s3cret"),             # a password never sits in the values
    ("peers.0.port", 0),
    ("peers.0.port", 65536),
    ("peers.0.port", "179"),
    ("peers.0.keepaliveTime", -1),
    ("peers.0.passwordKey", "tor/md5"),
    ("peers.0.passwordKey", ".."),
    ("peers.0.passwordKey", ""),
    ("peers.0.nodeSelector", {"rack": "r1"}),   # a selector string, not a map
    ("mode", "static"),
    ("mode", "BGP"),
    ("mode", DROP),
    ("mesh", "true"),
    ("mesh", DROP),
    ("meshNodeSelector", {"podbgp.io/mesh": "true"}),
    ("routerId", "10.0.0"),
    ("routerId", "0.0.0.0"),
    ("routerId", "fd00::1"),
    ("meshExportServices", "yes"),
    ("meshExportServices", DROP),
    ("peers.0.exportServices", "false"),
    ("services.loadBalancr", {}),               # misspelt keys under services
    ("services.loadBalancer.alocate", True),
    ("services.externalIPs.allowedCidrs", ["198.51.100.0/24"]),
    ("services.clusterIP.mdoe", "cidr"),
    ("services.loadBalancerClass", ""),         # wrong types and values under services
    ("services.loadBalancer.allocate", "true"),
    ("services.loadBalancer.pools", {"default": ["203.0.113.0/24"]}),
    ("services.externalIPs.allowedCIDRs", ["198.51.100.0"]),
    ("services.externalIPs.allowedCIDRs", "198.51.100.0/24"),
    ("services.clusterIP.mode", "Off"),
    ("services.clusterIP.mode", False),         # an unquoted off in a values file
    ("services.clusterIP.mode", "service"),
])
def test_schema_refuses(path, value):
    assert list(VALIDATOR.iter_errors(_with(path, value))), f"{path}={value!r} was accepted"


@pytest.mark.parametrize("overrides", [
    {"asn": 4200000000, "peers": [{"address": "10.0.0.1", "asn": 4200000001, "multihop": 2, "ttlSecurity": 1}]},
    {"clusterCIDRs": ["10.42.0.0/16", "fd00:42::/48"], "serviceCIDRs": ["10.43.0.0/16", "fd00:43::/108"],
     "peers": [{"address": "10.0.0.1", "asn": 65000}, {"address": "fd00::1", "asn": 65000, "families": ["ipv6"]}]},
    {"serviceCIDRs": [], "bgpPasswordsSecret": "", "priorityClassName": "", "tolerations": [], "nodeSelector": {}},
    {"cni": {"enabled": False}},
    {"cni": {"mtu": 1450}, "podCIDR": {"nodeLocal": ["10.42.7.0/24"]}},
    {"image": {"tag": ""}, "resources": {}},
])
def test_schema_accepts(overrides):
    assert [e.message for e in VALIDATOR.iter_errors(_merge(VALUES, overrides))] == []


TOR_MD5 = {"address": "10.0.0.1", "asn": 65000, "passwordKey": "tor-md5"}


@pytest.mark.parametrize("overrides", [
    {"mode": "direct", "mesh": True, "peers": []},          # the mesh runs BGP
    {"mesh": True, "routerId": "192.0.2.1"},                # one router ID on both ends of a session
    {"bgpPasswordsSecret": "", "peers": [TOR_MD5]},         # a key of a Secret that is not mounted
    {"mode": "bgp", "mesh": False, "peers": []},            # nobody to peer with
])
def test_schema_refuses_combinations(overrides):
    assert list(VALIDATOR.iter_errors(_merge(VALUES, overrides))), f"{overrides!r} was accepted"


@pytest.mark.parametrize("pool", [
    {**POOL, "cidr": ["203.0.113.0/24"]},                   # misspelt
    {**POOL, "localPref": 200},
    {"cidrs": ["203.0.113.0/24"]},                          # no name
    {"name": "default"},                                     # no cidrs
    {**POOL, "cidrs": []},
    {**POOL, "cidrs": ["203.0.113.0/33"]},
    {**POOL, "communities": ["65536:1"]},
    {**POOL, "communities": ["65000"]},
    {**POOL, "communities": "65000:100"},
    {**POOL, "localPreference": -1},
    {**POOL, "localPreference": "200"},
    {**POOL, "serviceSelector": {"matchLabel": {"team": "web"}}},
    {**POOL, "serviceSelector": {"matchExpressions": [{"key": "team", "operator": "in", "values": ["web"]}]}},
    {**POOL, "serviceSelector": ["team=web"]},
])
def test_schema_refuses_a_bad_pool(pool):
    values = _merge(VALUES, {"services": {"loadBalancer": {"pools": [pool]}}})
    assert list(VALIDATOR.iter_errors(values)), f"{pool!r} was accepted"


def test_schema_refuses_the_allocator_without_a_pool():
    assert list(VALIDATOR.iter_errors(_merge(VALUES, {"services": {"loadBalancer": {"allocate": True}}})))
    assert not list(VALIDATOR.iter_errors(_merge(VALUES, ALLOCATING)))


# each accepted by the schema, rendered, and accepted by the speaker
@pytest.mark.parametrize("overrides", [
    {"mesh": True, "peers": []},
    {"mesh": True, "meshNodeSelector": "podbgp.io/mesh!=false,!node-role.kubernetes.io/control-plane",
     "peers": [{"address": "10.0.0.1", "asn": 65000, "nodeSelector": "rack=r1"}]},
    {"mode": "direct", "peers": []},
    {"mode": "direct"},                                     # peers kept but unused
    {"routerId": "192.0.2.1", "peers": [{**TOR_MD5, "port": 1179, "holdTime": 30, "keepaliveTime": 10}]},
    {"peers": [{"address": "10.0.0.1", "asn": 65000, "holdTime": 0, "keepaliveTime": 0}]},
    {"peers": [{"address": "10.0.0.1", "asn": 65000, "exportServices": False}], "meshExportServices": True},
    ALLOCATING,
    {"services": {"loadBalancerClass": "example.com/lb", "clusterIP": {"mode": "perService"},
                  "externalIPs": {"allowedCIDRs": ["198.51.100.0/24", "fd00:51::/112"]},
                  "loadBalancer": {"pools": [
                      {**POOL, "serviceSelector": "team=web", "communities": ["65000:100", "0:65535"],
                       "localPreference": 200},
                      {"name": "b", "cidrs": ["192.0.2.0/28"],
                       "serviceSelector": {"matchLabels": {"team": "db"},
                                           "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]},
                                                                {"key": "legacy", "operator": "DoesNotExist"}]}}]}}},
])
def test_schema_accepts_what_the_speaker_accepts(overrides):
    assert [e.message for e in VALIDATOR.iter_errors(_merge(VALUES, overrides))] == []
    _parse_config(render(overrides)[0])


# --- templates against values.yaml ---------------------------------------------------------------

def _value_paths(sources: dict[str, str] | None = None) -> set[tuple[str, ...]]:
    """Every `.Values.a.b` path the templates name. Each `.Values` in them must be one of those
    paths, so a reference the scan cannot read (`index .Values "asn"`, a bare `.Values`) fails
    here instead of going unchecked, and so does a scan that finds nothing at all."""
    paths = set()
    for name, src in (_sources() if sources is None else sources).items():
        found = re.findall(r"\.Values(?:\.[A-Za-z_][A-Za-z0-9_]*)+", src)
        assert len(found) == src.count(".Values"), f"{name}: a .Values reference that is not a plain path"
        paths |= {tuple(m.split(".")[2:]) for m in found}
    assert paths, "no .Values path found in the templates"
    return paths


@pytest.mark.parametrize("src", ['{{ index .Values "asn" }}', "{{ toYaml .Values }}", "no values at all"])
def test_value_path_scan_fails_on_what_it_cannot_read(src):
    with pytest.raises(AssertionError):
        _value_paths({"t.yaml": src})


def test_every_values_path_a_template_uses_is_in_values_yaml():
    for path in sorted(_value_paths()):
        obj = VALUES
        for part in path:
            assert isinstance(obj, dict) and part in obj, f".Values.{'.'.join(path)} is not in values.yaml"
            obj = obj[part]


def test_every_value_is_used_by_a_template():
    used = {p[0] for p in _value_paths()}
    assert set(VALUES) - used == set()
    assert set(SCHEMA["properties"]) - {"global"} == set(VALUES)


# --- the rendered chart --------------------------------------------------------------------------

def _kustomize_base() -> dict:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize base to compare with")
    out = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, "deploy")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}


@pytest.fixture(scope="module")
def chart():
    return render()[0]


@pytest.fixture(scope="module")
def base():
    return _kustomize_base()


ROLE_OBJECTS = {("Role", "podbgp"), ("RoleBinding", "podbgp")}
ALLOCATOR_POLICIES = {(kind, name) for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
                      for name in ("podbgp-allocator-lease", "podbgp-service-status")}
NODE_POLICY = {("ValidatingAdmissionPolicy", "podbgp-node-status"), ("ValidatingAdmissionPolicyBinding", "podbgp-node-status")}


def test_chart_has_the_base_objects_in_the_release_namespace(chart, base):
    assert set(chart) == set(base) - ROLE_OBJECTS - ALLOCATOR_POLICIES  # the allocator's only when it runs
    objs, _ = render(ALLOCATING, namespace="net-system")
    assert set(objs) == set(base)
    for key, obj in objs.items():
        want = "net-system" if "namespace" in base[key]["metadata"] else None  # cluster-scoped: none
        assert obj["metadata"].get("namespace") == want, key
    for binding in ("ClusterRoleBinding", "RoleBinding"):
        assert objs[binding, "podbgp"]["subjects"][0]["namespace"] == "net-system"


@pytest.mark.parametrize("key", [("ServiceAccount", "podbgp"), ("ClusterRole", "podbgp"),
                                 ("ClusterRoleBinding", "podbgp"), ("Role", "podbgp"), ("RoleBinding", "podbgp"),
                                 ("ConfigMap", "podbgp-config"), ("DaemonSet", "podbgp")])
def test_chart_objects_valid_against_kubernetes_schema(key):
    assert kubernetes_validate.validate(render(ALLOCATING)[0][key], K8S_VERSION, strict=True) == "1.32"


def test_chart_rbac_and_bindings_with_the_allocator_equal_the_base(base):
    """The base grants what its config can turn on (deploy/README.md); the chart, with every
    Service feature on, the same rules, no more."""
    objs = render(ALLOCATING)[0]
    strip = lambda o: {k: v for k, v in o.items() if k != "metadata"}  # noqa: E731
    for key in [("ClusterRole", "podbgp"), ("ClusterRoleBinding", "podbgp"), *sorted(ROLE_OBJECTS)]:
        assert strip(objs[key]) == strip(base[key]), key


NODES = [("", "nodes", "get,list,watch"), ("", "nodes/status", "patch")]
READS = [("", "services", "get,list,watch"), ("discovery.k8s.io", "endpointslices", "get,list,watch")]
ALLOCATOR = [("", "services/status", "patch"), ("", "events", "create")]
LEASES = [("coordination.k8s.io", "leases", "create", None),
          ("coordination.k8s.io", "leases", "get,update", "podbgp-allocator")]


def _rules(rules: list[dict]) -> list[tuple]:
    out = []
    for r in rules:
        (group,), (resource,) = r["apiGroups"], r["resources"]
        names = r.get("resourceNames")
        row = (group, resource, ",".join(r["verbs"]))
        out.append(row + ((names[0] if names else None),) if resource == "leases" else row)
    return out


@pytest.mark.parametrize("services,cluster,namespaced", [
    ({}, NODES, None),                                                       # the default: nothing about Services
    ({"clusterIP": {"mode": "off"}, "loadBalancerClass": "example.com/lb"}, NODES, None),
    ({"loadBalancer": {"pools": [POOL]}}, NODES + READS, None),              # announce ingress IPs set by another
    ({"externalIPs": {"allowedCIDRs": ["198.51.100.0/24"]}}, NODES + READS, None),
    ({"clusterIP": {"mode": "cidr"}}, NODES + READS, None),
    ({"clusterIP": {"mode": "perService"}}, NODES + READS, None),
    (ALLOCATING["services"], NODES + READS + ALLOCATOR, LEASES),
    ({"loadBalancer": {"pools": [POOL], "allocate": True}, "clusterIP": {"mode": "cidr"}},
     NODES + READS + ALLOCATOR, LEASES),
])
def test_chart_rbac_is_exactly_what_the_services_values_need(services, cluster, namespaced):
    objs = render({"services": services})[0]
    assert _rules(objs["ClusterRole", "podbgp"]["rules"]) == cluster
    if namespaced is None:  # no allocator: no Role, no binding, no status or Event writes
        assert not set(objs) & ROLE_OBJECTS
    else:
        assert _rules(objs["Role", "podbgp"]["rules"]) == namespaced
        assert objs["RoleBinding", "podbgp"]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                            "name": "podbgp"}
    # the same test the speaker makes before it watches Services (speaker/app.py, services_enabled)
    sc = _parse_config(objs).services
    watches = bool(sc.pools or sc.external_ip_cidrs or sc.cluster_ip_mode != "off" or sc.allocate)
    assert (READS[0] in cluster) == watches and (ALLOCATOR[0] in cluster) == sc.allocate


def test_chart_pod_equals_the_base_pod(chart, base):
    """Same pod spec as the kustomize base, whose contract test_deploy.py checks."""
    c, b = chart["DaemonSet", "podbgp"]["spec"], base["DaemonSet", "podbgp"]["spec"]
    assert c["template"]["spec"] == b["template"]["spec"]
    assert c["updateStrategy"] == b["updateStrategy"] and c["selector"] == b["selector"]
    assert c["selector"]["matchLabels"].items() <= c["template"]["metadata"]["labels"].items()
    annotations = dict(c["template"]["metadata"]["annotations"])
    assert re.fullmatch(r"[0-9a-f]{64}", annotations.pop("checksum/config"))
    assert annotations == b["template"]["metadata"]["annotations"]


def _parse_config(objs: dict) -> cfgmod.Config:
    return cfgmod.parse({**yaml.safe_load(objs["ConfigMap", "podbgp-config"]["data"]["config.yaml"]),
                         "nodeName": "node1"})


def test_chart_config_equals_the_base_config(chart, base):
    assert _parse_config(chart) == _parse_config(base)


def test_chart_config_follows_the_values():
    objs, notes = render({
        "asn": 4200000000, "metricsPort": 9470, "gracefulRestart": 30, "logLevel": "debug",
        "clusterCIDRs": ["10.42.0.0/16", "fd00:42::/48"], "serviceCIDRs": ["10.43.0.0/16", "fd00:43::/108"],
        "peers": [{"address": "10.0.0.1", "asn": 65000}, {"address": "fd00::1", "asn": 4200000001, "holdTime": 30}],
        "podCIDR": {"nodeLocal": ["10.42.7.0/24"]},
        "cni": {"bridge": "br-pods", "mtu": 1450, "ipMasq": True},
        "image": {"repository": "ghcr.io/example/podbgp", "tag": "v1"},
    })
    cfg = _parse_config(objs)
    assert cfg.asn == 4200000000 and cfg.status_address == "0.0.0.0:9470" and cfg.graceful_restart == 30
    assert [(str(p.address), p.asn, p.hold_time) for p in cfg.peers] == [("10.0.0.1", 65000, 9),
                                                                         ("fd00::1", 4200000001, 30)]
    assert [str(n) for n in cfg.cluster_cidrs + cfg.service_cidrs + cfg.pod_cidr.node_local] == [
        "10.42.0.0/16", "fd00:42::/48", "10.43.0.0/16", "fd00:43::/108", "10.42.7.0/24"]
    assert (cfg.cni.bridge, cfg.cni.mtu, cfg.cni.ip_masq, cfg.cni.enabled) == ("br-pods", 1450, True, True)
    pod = objs["DaemonSet", "podbgp"]["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["image"] == "ghcr.io/example/podbgp:v1" and c["args"][-1] == "debug"
    assert c["ports"][0]["containerPort"] == 9470 and pod["metadata"]["annotations"]["prometheus.io/port"] == "9470"
    assert c["livenessProbe"]["httpGet"]["port"] == c["readinessProbe"]["httpGet"]["port"] == 9470
    assert "4200000000" in notes and "9470" in notes
    default_ds = render()[0]["DaemonSet", "podbgp"]
    assert pod["metadata"]["annotations"]["checksum/config"] != \
        default_ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_chart_config_follows_the_new_values():
    """mode, mesh, meshNodeSelector, routerId and the peers' port, keepaliveTime, passwordKey and
    nodeSelector reach the speaker as the values say; the password itself never does."""
    objs, notes = render({
        "routerId": "192.0.2.7",
        "peers": [{**TOR_MD5, "port": 1179, "holdTime": 30, "keepaliveTime": 10, "nodeSelector": "rack=r1"},
                  {"address": "fd00::1", "asn": 65000, "ttlSecurity": 1, "nodeSelector": "rack in (r2,r3)"}],
    })
    text = objs["ConfigMap", "podbgp-config"]["data"]["config.yaml"]
    raw = yaml.safe_load(text)
    assert "password" not in str(raw["peers"]).replace("passwordKey", "")
    assert raw["mode"] == "bgp" and raw["mesh"] is False and "meshNodeSelector" not in raw
    cfg = _parse_config(objs)
    assert (cfg.mode, cfg.mesh, str(cfg.router_id)) == ("bgp", False, "192.0.2.7")
    p, q = cfg.peers
    assert (str(p.address), p.asn, p.port, p.hold_time, p.keepalive_time, p.password_key) == (
        "10.0.0.1", 65000, 1179, 30, 10, "tor-md5")
    assert p.node_selector.matches({"rack": "r1"}) and not p.node_selector.matches({"rack": "r2"})
    assert (str(q.address), q.port, q.keepalive_time, q.password_key, q.ttl_security) == ("fd00::1", 179, 3, None, 1)
    assert q.node_selector.matches({"rack": "r3"}) and not q.node_selector.matches({"rack": "r1"})
    assert "podbgp.io/asn=65001" in notes and "--from-literal=tor-md5=" in notes

    mesh_objs, mesh_notes = render({"mesh": True, "meshNodeSelector": "podbgp.io/mesh!=false", "peers": []})
    mesh = _parse_config(mesh_objs)
    assert (mesh.mode, mesh.mesh, mesh.asn, mesh.peers, mesh.router_id) == ("bgp", True, 64512, (), None)
    assert mesh.mesh_node_selector.matches({}) and not mesh.mesh_node_selector.matches({"podbgp.io/mesh": "false"})
    assert "routerId" not in yaml.safe_load(mesh_objs["ConfigMap", "podbgp-config"]["data"]["config.yaml"])
    assert "iBGP full mesh" in mesh_notes and "AS 64512" in mesh_notes and "podbgp.io/asn=65001" not in mesh_notes

    direct_objs, direct_notes = render({"mode": "direct", "peers": []})
    direct = _parse_config(direct_objs)
    assert (direct.mode, direct.mesh, direct.peers) == ("direct", False, ())
    assert "no BGP" in direct_notes and "BGP session up" not in direct_notes and "podbgp.io/asn" not in direct_notes
    for o in (objs, mesh_objs, direct_objs):
        kubernetes_validate.validate(o["ConfigMap", "podbgp-config"], K8S_VERSION, strict=True)


def test_chart_config_carries_the_services_values():
    objs, _ = render({
        "meshExportServices": True,
        "peers": [{"address": "10.0.0.1", "asn": 65000, "exportServices": False}, {"address": "10.0.0.2", "asn": 65000}],
        "services": {"loadBalancerClass": "example.com/lb", "clusterIP": {"mode": "perService"},
                     "externalIPs": {"allowedCIDRs": ["198.51.100.0/24"]},
                     "loadBalancer": {"allocate": True, "pools": [
                         {**POOL, "serviceSelector": {"matchLabels": {"team": "web"}}, "communities": ["65000:100"],
                          "localPreference": 200}]}},
    })
    cfg = _parse_config(objs)
    assert cfg.mesh_export_services is True and [p.export_services for p in cfg.peers] == [False, True]
    sc = cfg.services
    (pool,) = sc.pools
    assert (pool.name, [str(n) for n in pool.cidrs], pool.communities, pool.local_preference) == (
        "default", ["203.0.113.0/24", "fd00:113::/112"], ("65000:100",), 200)
    assert pool.service_selector.matches({"team": "web"}) and not pool.service_selector.matches({"team": "db"})
    assert (sc.load_balancer_class, sc.allocate, sc.cluster_ip_mode) == ("example.com/lb", True, "perService")
    assert [str(n) for n in sc.external_ip_cidrs] == ["198.51.100.0/24"]
    env = objs["DaemonSet", "podbgp"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in env
    # the defaults: the block is there and announces nothing ("off" stays a string, not false)
    default = _parse_config(render()[0])
    assert default.services == type(sc)() and default.mesh_export_services is False
    assert 'mode: "off"' in render()[0]["ConfigMap", "podbgp-config"]["data"]["config.yaml"] or \
        "mode: 'off'" in render()[0]["ConfigMap", "podbgp-config"]["data"]["config.yaml"]


def test_chart_grants_net_admin_and_net_bind_service_only(chart):
    sc = chart["DaemonSet", "podbgp"]["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_BIND_SERVICE"]}


def test_chart_toggles():
    objs, notes = render({"bgpPasswordsSecret": "", "cni": {"enabled": False}, "priorityClassName": "",
                          "image": {"tag": ""}})
    pod = objs["DaemonSet", "podbgp"]["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} == {"config", "run", "tmp"}
    assert {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]} == {"/etc/podbgp", "/run/podbgp", "/tmp"}
    assert "priorityClassName" not in pod
    assert pod["containers"][0]["image"] == f"localhost/podbgp:{_load('Chart.yaml')['appVersion']}"
    assert _parse_config(objs).cni.enabled is False
    assert "Secret" not in notes
    for obj in objs.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_notes_render():
    _, notes = render(namespace="net-system")
    assert "kubectl -n net-system rollout status daemonset/podbgp" in notes
    assert "podbgp.io/asn=65001" in notes and "{{" not in notes


# --- the evaluator itself ------------------------------------------------------------------------

@pytest.mark.parametrize("src,want", [
    ("a:\n  {{- toYaml .Values.l | nindent 2 }}\nb", "a:\n  - 1\n  - 2\nb"),
    ("x {{- /* c */ -}} y", "xy"),
    ("{{- with .Values.e }}no{{ else }}yes{{ end }}", "yes"),
    ("{{ if .Values.l }}{{ .Values.s | quote }}{{ end }}", '"a\\"b"'),
    ('{{ .Values.e | default "d" }}:{{ .Values.n | int64 }}', "d:7"),
    ('{{ define "t" }}[{{ . }}]{{ end }}{{ include "t" .Values.n }}', "[7]"),
    ('{{ if eq .Values.s "x" }}a{{ else }}b{{ end }}{{ if eq .Values.n 7 }}c{{ end }}', "bc"),
])
def test_evaluator(src, want):
    root = {"Values": {"l": [1, 2], "e": "", "s": 'a"b', "n": 7}}
    assert Chart({"t": src}).render("t", root) == want


@pytest.mark.parametrize("src", ["{{ range .Values.l }}{{ end }}", "{{ .Values.l | upper }}",
                                 "{{ .Values.missing }}", "{{ .Values.l }}", "{{ if .Values.e }}",
                                 "{{ if .Values.e }}a{{ else }}b", '{{ define "x" }}a', "a{{ end }}",
                                 "{{ if .Values.e }}a{{ else if .Values.l }}b{{ end }}", "a {{ .Values.e"])
def test_evaluator_refuses_what_it_does_not_know(src):
    with pytest.raises((TemplateError, KeyError)):
        Chart({"t": src}).render("t", {"Values": {"l": [1], "e": ""}})


def _specs(objs, namespace):
    """The admission objects' specs, the namespace written as NS."""
    return {k: yaml.safe_load(yaml.safe_dump(o["spec"]).replace(namespace, "NS")) for k, o in objs.items()
            if k[0].startswith("ValidatingAdmissionPolicy")}


def test_chart_admission_policies_are_the_base_ones_in_the_release_namespace(base):
    objs, _ = render(ALLOCATING, namespace="net-system")
    assert _specs(objs, "net-system") == _specs(base, "kube-system")
    assert objs["ValidatingAdmissionPolicyBinding", "podbgp-service-status"]["spec"]["paramRef"]["namespace"] == "net-system"
    for key in ALLOCATOR_POLICIES | NODE_POLICY:
        assert kubernetes_validate.validate(objs[key], K8S_VERSION, strict=True) == "1.32"


def test_network_unavailable_off_drops_the_grant_the_policy_and_the_write():
    objs, _ = render({"networkUnavailable": False})
    assert not NODE_POLICY & set(objs)
    assert all("nodes/status" not in r["resources"] for r in objs["ClusterRole", "podbgp"]["rules"])
    assert "networkUnavailable: false" in objs["ConfigMap", "podbgp-config"]["data"]["config.yaml"]
    on, _ = render()
    assert NODE_POLICY <= set(on) and any("nodes/status" in r["resources"] for r in on["ClusterRole", "podbgp"]["rules"])
