"""Config: the services section (pools, allowed ExternalIP ranges, cluster IP mode) and its refusals."""
import ipaddress

import pytest

from speaker import config as cfgmod
from speaker.config import ConfigError
from speaker.service_config import Pool, ServicesConfig

BASE = {"nodeName": "node1", "asn": 65001, "peers": [{"address": "192.168.50.1", "asn": 65000}],
        "clusterCIDRs": ["10.42.0.0/16", "fd00:42::/48"], "serviceCIDRs": ["10.43.0.0/16", "fd00:43::/108"]}
N = ipaddress.ip_network
A = ipaddress.ip_address


def svc(services):
    return cfgmod.parse({**BASE, "services": services}).services


def refused(services) -> str:
    with pytest.raises(ConfigError) as err:
        svc(services)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_defaults_announce_nothing():
    c = cfgmod.parse(BASE).services
    assert c == ServicesConfig() == svc(None)
    assert (c.load_balancer_class, c.pools, c.allocate, c.external_ip_cidrs, c.cluster_ip_mode) == \
        ("podbgp.io/bgp", (), False, (), "off")
    assert c.pool_of(A("203.0.113.1")) is None


def test_full_section():
    c = svc({"loadBalancerClass": "example.com/lb",
             "loadBalancer": {"allocate": True, "pools": [
                 {"name": "default", "cidrs": ["203.0.113.0/24", "fd00:113::/112"],
                  "serviceSelector": {"matchLabels": {"tier": "web"}}, "communities": ["65000:100", "0:65535"],
                  "localPreference": 200},
                 {"name": "other", "cidrs": "192.0.2.0/25"}]},
             "externalIPs": {"allowedCIDRs": ["198.51.100.0/24"]}, "clusterIP": {"mode": "perservice"}})
    assert c.load_balancer_class == "example.com/lb" and c.allocate
    default, other = c.pools
    assert default.cidrs == (N("203.0.113.0/24"), N("fd00:113::/112"))
    assert default.communities == ("65000:100", "0:65535") and default.local_preference == 200
    assert default.service_selector.matches({"tier": "web"}) and not default.service_selector.matches({})
    assert other == Pool("other", (N("192.0.2.0/25"),))
    assert c.external_ip_cidrs == (N("198.51.100.0/24"),)
    assert c.cluster_ip_mode == "perService"
    assert c.pool_of(A("203.0.113.9")) is default and c.pool_of(A("fd00:113::5")) is default
    assert c.pool_of(A("192.0.2.200")) is None and c.pool_of(A("192.0.2.1")) is other
    assert c.external_ip_allowed(A("198.51.100.7")) and not c.external_ip_allowed(A("203.0.113.9"))
    assert set(c.ranges) == {N("203.0.113.0/24"), N("fd00:113::/112"), N("192.0.2.0/25"), N("198.51.100.0/24")}


def test_selector_forms():
    def sel(s):
        return svc({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["203.0.113.0/24"], "serviceSelector": s}]}}).pools[0].service_selector
    assert sel("tier=web").matches({"tier": "web"})
    s = sel({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                  {"key": "x", "operator": "DoesNotExist"}]})
    assert s.matches({"tier": "b"}) and not s.matches({"tier": "b", "x": "1"}) and not s.matches({"tier": "c"})
    assert "operator" in refused({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["203.0.113.0/24"],
                                  "serviceSelector": {"matchExpressions": [{"key": "k", "operator": "Gt"}]}}]}})


@pytest.mark.parametrize("services, words", [
    ({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["10.42.8.0/24"]}]}},
     ["services.loadBalancer.pools[0].cidrs[0]", "10.42.8.0/24", "clusterCIDRs[0]"]),
    ({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["fd00:43::/112"]}]}},
     ["pools[0].cidrs[0]", "serviceCIDRs[1]"]),
    ({"loadBalancer": {"pools": [{"name": "a", "cidrs": ["203.0.113.0/24"]}, {"name": "b", "cidrs": ["203.0.113.128/25"]}]}},
     ["pools[1].cidrs[0]", "pools[0].cidrs[0]", "disjoint"]),
    ({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["203.0.113.1/24"]}]}}, ["pools[0].cidrs[0]", "host bits"]),
    ({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["nope"]}]}}, ["pools[0].cidrs[0]", "not a valid CIDR"]),
    ({"loadBalancer": {"pools": [{"name": "p", "cidrs": []}]}}, ["pools[0].cidrs", "at least one"]),
    ({"loadBalancer": {"pools": [{"cidrs": ["203.0.113.0/24"]}]}}, ["pools[0].name", "required"]),
    ({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["203.0.113.0/25"]}, {"name": "p", "cidrs": ["203.0.113.128/25"]}]}},
     ["pools[1].name", "'p'"]),
    ({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["203.0.113.0/24"], "communities": ["65536:1"]}]}},
     ["pools[0].communities[0]", "65536:1", "0..65535"]),
    ({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["203.0.113.0/24"], "communities": ["65000"]}]}},
     ["communities[0]", "ASN:VALUE"]),
    ({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["203.0.113.0/24"], "communities": ["a:b"]}]}}, ["communities[0]"]),
    ({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["203.0.113.0/24"], "localPreference": 4294967296}]}},
     ["pools[0].localPreference", "0..4294967295"]),
    ({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["203.0.113.0/24"], "localPreference": -1}]}}, ["localPreference"]),
    ({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["203.0.113.0/24"], "colour": "red"}]}},
     ["services.loadBalancer.pools[0].colour", "unknown"]),
    ({"loadBalancer": {"pools": "203.0.113.0/24"}}, ["services.loadBalancer.pools", "list"]),
    ({"loadBalancer": {"allocate": "maybe"}}, ["services.loadBalancer.allocate"]),
    ({"externalIPs": {"allowedCIDRs": ["10.43.0.0/24"]}}, ["services.externalIPs.allowedCIDRs[0]", "serviceCIDRs[0]"]),
    ({"externalIPs": {"allowedCIDRs": ["10.0.0.0/8"]}}, ["allowedCIDRs[0]", "clusterCIDRs[0]"]),
    ({"externalIPs": {"allowedCidrs": []}}, ["services.externalIPs.allowedCidrs", "did you mean allowedCIDRs"]),
    ({"clusterIP": {"mode": "all"}}, ["services.clusterIP.mode", "off, cidr, perService"]),
    ({"loadBalancerClas": "x"}, ["services.loadBalancerClas", "did you mean loadBalancerClass"]),
    ({"loadBalancerClass": ""}, ["services.loadBalancerClass"]),
    ({"loadBalancer": []}, ["services.loadBalancer", "mapping"]),
    ("yes", ["services", "mapping"]),
])
def test_refusals(services, words):
    text = refused(services)
    for w in words:
        assert w in text, (w, text)


def test_unknown_top_level_key_still_refused():
    with pytest.raises(ConfigError, match="servics"):
        cfgmod.parse({**BASE, "servics": {}})


def test_community_normalised_and_modes():
    c = svc({"loadBalancer": {"pools": [{"name": "p", "cidrs": ["203.0.113.0/24"], "communities": " 065000:07"}]},
             "clusterIP": {"mode": "CIDR"}})
    assert c.pools[0].communities == ("65000:7",) and c.cluster_ip_mode == "cidr"
    assert svc({"clusterIP": {"mode": "off"}}).cluster_ip_mode == "off"


def test_cluster_ip_modes_need_service_cidrs():
    base = {k: v for k, v in BASE.items() if k != "serviceCIDRs"}
    for mode in ("cidr", "perService"):
        with pytest.raises(ConfigError, match=f"services.clusterIP.mode: {mode} needs serviceCIDRs"):
            cfgmod.parse({**base, "services": {"clusterIP": {"mode": mode}}})
    assert cfgmod.parse({**base, "services": {"clusterIP": {"mode": "off"}}}).services.cluster_ip_mode == "off"
