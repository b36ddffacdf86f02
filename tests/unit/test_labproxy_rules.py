"""lab.proxy.render: Services and EndpointSlices as one node's nftables table (pure, no root)."""
import random
import re

import pytest

from lab.proxy import TABLE, render

CIDRS = ["10.42.0.0/16", "fd00:42::/48"]


def service(name="web", cluster=("10.43.0.10",), external=(), ingress=(), etp=None, itp=None,
            ports=(("http", 80),), ns="default", type_="ClusterIP"):
    spec = {"type": type_, "clusterIPs": list(cluster), "ports": [
        {"name": n, "port": p, "targetPort": 8080, "protocol": "TCP"} for n, p in ports]}
    if cluster:
        spec["clusterIP"] = cluster[0]
    if external:
        spec["externalIPs"] = list(external)
    if etp:
        spec["externalTrafficPolicy"] = etp
    if itp:
        spec["internalTrafficPolicy"] = itp
    obj = {"metadata": {"namespace": ns, "name": name}, "spec": spec}
    if ingress:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}}
    return obj


def ep(addr, node, ready=True, serving=None, terminating=None):
    cond = {"ready": ready}
    if serving is not None:
        cond["serving"] = serving
    if terminating is not None:
        cond["terminating"] = terminating
    return {"addresses": [addr], "nodeName": node, "conditions": cond}


def eslice(svc="web", name=None, family="IPv4", endpoints=(), port_name="http", port=8080, ns="default"):
    return {"metadata": {"namespace": ns, "name": name or f"{svc}-{family.lower()}",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": family, "endpoints": list(endpoints),
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}


def chains(text):
    out, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"chain (\S+) \{$", line)
        if m:
            current = out.setdefault(m.group(1), [])
        elif line == "}":
            current = None
        elif current is not None and line:
            current.append(line)
    return out


def entry(text, ip, port=80):
    """The chain the services chain sends traffic for ip:port to."""
    for rule in chains(text)["services"]:
        if re.search(rf"daddr {re.escape(ip)} tcp dport {port} goto (\S+)$", rule) or \
                re.search(rf"daddr {re.escape(ip)} meta l4proto tcp th dport {port} goto (\S+)$", rule):
            return rule.rsplit(" ", 1)[1]
    return None


def targets(text, chain):
    """Every dnat target reachable from chain (mark-for-masquerade aside)."""
    cs, seen, found = chains(text), set(), set()

    def walk(name):
        if name in seen or name == "mark-for-masquerade":
            return
        seen.add(name)
        for rule in cs[name]:
            m = re.search(r"dnat ip6? to (\S+)$", rule)
            if m:
                found.add(m.group(1))
            for nxt in re.findall(r"(?:goto|jump) ([A-Za-z0-9_-]+)", rule):
                walk(nxt)

    walk(chain)
    return found


def last_verdict_targets(text, chain):
    """For an external Local chain: what traffic from outside the cluster gets (its last rule)."""
    last = chains(text)[chain][-1]
    return "drop" if last == "drop" else targets(text, last.split()[-1])


def test_table_is_replaced_in_one_transaction():
    text = render("node1", [], [], CIDRS)
    assert text.startswith(f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n")
    cs = chains(text)
    assert "masquerade fully-random" in cs["nat-postrouting"]
    assert cs["services"] == [] and cs["no-endpoints"] == []


def test_cluster_ip_to_every_ready_endpoint_at_random():
    text = render("node1", [service()], [eslice(endpoints=[ep("10.42.1.2", "node1"), ep("10.42.2.2", "node2")])], CIDRS)
    chain = entry(text, "10.43.0.10")
    assert targets(text, chain) == {"10.42.1.2:8080", "10.42.2.2:8080"}
    assert any("numgen random mod 2 vmap" in r for cs in chains(text).values() for r in cs)
    assert chains(text)[chain][0] == "ip saddr != { 10.42.0.0/16 } jump mark-for-masquerade"


@pytest.mark.parametrize("conds,expected", [
    ([{}, {"ready": False, "serving": True, "terminating": True}], {"10.42.1.2:8080"}),  # terminating: only the other
    ([{"ready": None}, {"ready": True, "terminating": False}], {"10.42.1.2:8080", "10.42.2.2:8080"}),  # unset = ready
    ([{"ready": False, "serving": True, "terminating": True}, {"ready": False, "serving": False, "terminating": True}],
     {"10.42.1.2:8080"}),  # no ready one: the serving terminating ones
    ([{"ready": False}, {"ready": False, "serving": True, "terminating": True}], {"10.42.2.2:8080"}),  # not ready, not terminating: out
])
def test_endpoint_choice_as_kube_proxy(conds, expected):
    eps = [ep("10.42.1.2", "node1", **conds[0]), ep("10.42.2.2", "node2", **conds[1])]
    for e in eps:  # ready None means the condition is absent
        if e["conditions"]["ready"] is None:
            del e["conditions"]["ready"]
    text = render("node1", [service()], [eslice(endpoints=eps)], CIDRS)
    assert targets(text, entry(text, "10.43.0.10")) == expected


def test_no_usable_endpoint_is_rejected():
    text = render("node1", [service()], [eslice(endpoints=[ep("10.42.1.2", "node1", ready=False)])], CIDRS)
    assert entry(text, "10.43.0.10") is None
    assert chains(text)["no-endpoints"] == ["ip daddr 10.43.0.10 tcp dport 80 reject"] or \
        chains(text)["no-endpoints"] == ["ip daddr 10.43.0.10 meta l4proto tcp th dport 80 reject"]


def test_port_by_name_from_the_slice():
    svc = service(ports=(("http", 80), ("metrics", 9000)))
    slices = [eslice(endpoints=[ep("10.42.1.2", "node1")], port_name="http", port=8080),
              eslice(name="web-m", endpoints=[ep("10.42.1.2", "node1")], port_name="metrics", port=9100)]
    text = render("node1", [svc], slices, CIDRS)
    assert targets(text, entry(text, "10.43.0.10", 80)) == {"10.42.1.2:8080"}
    assert targets(text, entry(text, "10.43.0.10", 9000)) == {"10.42.1.2:9100"}
    other = render("node1", [service()], [eslice(endpoints=[ep("10.42.1.2", "node1")], port_name="web")], CIDRS)
    assert entry(other, "10.43.0.10") is None  # no slice port of the Service port's name


def test_external_local_only_local_endpoints_else_drop():
    svc = service(type_="LoadBalancer", external=("198.51.100.5",), ingress=("203.0.113.5",), etp="Local")
    slices = [eslice(endpoints=[ep("10.42.1.2", "node1"), ep("10.42.2.2", "node2")])]
    on1 = render("node1", [svc], slices, CIDRS)
    for ip in ("198.51.100.5", "203.0.113.5"):
        chain = entry(on1, ip)
        assert last_verdict_targets(on1, chain) == {"10.42.1.2:8080"}
        assert "mark-for-masquerade" not in chains(on1)[chain][-1]
        assert chains(on1)[chain][0].startswith("ip saddr { 10.42.0.0/16 } goto svc-")  # Pods: every endpoint
    on3 = render("node3", [svc], slices, CIDRS)
    assert last_verdict_targets(on3, entry(on3, "203.0.113.5")) == "drop"
    assert targets(on3, entry(on3, "10.43.0.10")) == {"10.42.1.2:8080", "10.42.2.2:8080"}  # cluster IP: Cluster


def test_external_local_falls_back_to_local_serving_terminating():
    svc = service(ingress=("203.0.113.5",), etp="Local")
    slices = [eslice(endpoints=[ep("10.42.1.2", "node1", ready=False, serving=True, terminating=True),
                                ep("10.42.2.2", "node2")])]
    text = render("node1", [svc], slices, CIDRS)
    assert last_verdict_targets(text, entry(text, "203.0.113.5")) == {"10.42.1.2:8080"}
    assert targets(text, "svc-" + entry(text, "203.0.113.5").split("-", 1)[1]) == {"10.42.2.2:8080"}


def test_external_cluster_is_masqueraded_from_outside():
    svc = service(ingress=("203.0.113.5",))
    text = render("node3", [svc], [eslice(endpoints=[ep("10.42.1.2", "node1")])], CIDRS)
    chain = chains(text)[entry(text, "203.0.113.5")]
    assert chain[0] == "ip saddr != { 10.42.0.0/16 } jump mark-for-masquerade"
    assert targets(text, entry(text, "203.0.113.5")) == {"10.42.1.2:8080"}


def test_internal_local():
    svc = service(itp="Local")
    slices = [eslice(endpoints=[ep("10.42.1.2", "node1"), ep("10.42.2.2", "node2")])]
    t2 = render("node2", [svc], slices, CIDRS)
    assert targets(t2, entry(t2, "10.43.0.10")) == {"10.42.2.2:8080"}
    t3 = render("node3", [svc], slices, CIDRS)
    assert chains(t3)[entry(t3, "10.43.0.10")][-1] == "drop"


def test_ipv6_and_dual_stack():
    svc = service(cluster=("10.43.0.10", "fd00:43::10"), ingress=("203.0.113.5", "fd00:113::5"))
    slices = [eslice(endpoints=[ep("10.42.1.2", "node1")]),
              eslice(family="IPv6", endpoints=[ep("fd00:42:0:1::2", "node1"), ep("fd00:42:0:2::2", "node2")])]
    text = render("node1", [svc], slices, CIDRS)
    assert targets(text, entry(text, "fd00:43::10")) == {"[fd00:42:0:1::2]:8080", "[fd00:42:0:2::2]:8080"}
    assert targets(text, entry(text, "fd00:113::5")) == {"[fd00:42:0:1::2]:8080", "[fd00:42:0:2::2]:8080"}
    assert targets(text, entry(text, "10.43.0.10")) == {"10.42.1.2:8080"}
    assert chains(text)[entry(text, "fd00:43::10")][0] == "ip6 saddr != { fd00:42::/48 } jump mark-for-masquerade"


def test_skipped_objects():
    headless = service(name="headless", cluster=())
    headless["spec"]["clusterIP"] = "None"
    headless["spec"]["clusterIPs"] = ["None"]
    extname = {"metadata": {"namespace": "default", "name": "ext"}, "spec": {"type": "ExternalName", "externalName": "x"}}
    unlabeled = eslice(endpoints=[ep("10.42.1.2", "node1")])
    del unlabeled["metadata"]["labels"]
    fqdn = eslice(family="FQDN", endpoints=[{"addresses": ["a.example"], "conditions": {}}])
    text = render("node1", [headless, extname, service()], [unlabeled, fqdn], CIDRS)
    cs = chains(text)
    assert cs["services"] == [] and len(cs["no-endpoints"]) == 1  # only web, with no endpoints


def test_deterministic_whatever_the_order():
    svcs = [service(name=f"s{i}", cluster=(f"10.43.0.{i}",)) for i in range(1, 6)]
    slices = [eslice(svc=f"s{i}", endpoints=[ep(f"10.42.1.{i}", "node1"), ep(f"10.42.2.{i}", "node2")])
              for i in range(1, 6)]
    first = render("node1", svcs, slices, CIDRS)
    rnd = random.Random(7)
    for _ in range(3):
        rnd.shuffle(svcs)
        rnd.shuffle(slices)
        assert render("node1", svcs, slices, CIDRS) == first


def test_endpoints_in_two_slices_counted_once():
    slices = [eslice(name="a", endpoints=[ep("10.42.1.2", "node1")]),
              eslice(name="b", endpoints=[ep("10.42.1.2", "node1"), ep("10.42.2.2", "node2")])]
    text = render("node1", [service()], slices, CIDRS)
    assert "numgen random mod 2 " in text
    assert targets(text, entry(text, "10.43.0.10")) == {"10.42.1.2:8080", "10.42.2.2:8080"}
