"""The speaker's configuration: a typed, validated model from YAML, environment and flags.

Each default is stated once, as a field default of the dataclasses below; the loader reads it
from there (config_values.defaults). The peers' keys are parsed in peer_config. Every refusal is
a ConfigError with one line naming the field.
"""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import netaddr
import yaml

from bgp.types import IPAddress, IPNetwork, span

from . import selector
from .config_values import (ConfigError, SpeakerError, abspath, boolean, defaults, integer, ip, known_keys,
                            label_selector, listed, mapping, net, one_of, seconds)
from .peer_config import ANNOTATION_PEER_KEYS, Peer, parse_peer, parse_peers, peer_list
from .selector import Selector
from .service_config import Pool, ServicesConfig, check_ranges, parse_services

# the names other modules import from here
__all__ = ["ANNOTATION_PEER_KEYS", "CNIConfig", "Config", "ConfigError", "MODES", "LOG_FORMATS", "Peer", "Pool",
           "PodCIDRConfig", "ServicesConfig", "SpeakerError", "check_pod_cidr", "load", "parse", "parse_address", "parse_peer",
           "runtime_dir", "validate"]


@dataclass(frozen=True, slots=True)
class PodCIDRConfig:
    node_local: tuple[IPNetwork, ...] = ()
    kubelet_config: str = "/var/lib/kubelet/config.yaml"
    k3s_file: str = "/var/lib/rancher/k3s/agent/pod-cidr"
    derive: bool = False
    node_mask_v4: int = 24
    node_mask_v6: int = 64


@dataclass(frozen=True, slots=True)
class CNIConfig:
    """The node's CNI conflist that podbgp writes from its PodCIDR(s) (speaker.cni)."""

    enabled: bool = True
    conf_path: str = "/etc/cni/net.d/10-podbgp.conflist"
    bridge: str = "cni0"
    mtu: int = 0  # 0: not set (the bridge plugin's default)
    hairpin_mode: bool = True
    ip_masq: bool = False
    portmap: bool = True
    data_dir: str = ""  # host-local's dataDir; empty: the plugin's default


MODES = ("bgp", "direct")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class Config:
    node_name: str
    asn: int | None  # None: only from the Node's podbgp.io/asn annotation
    peers: tuple[Peer, ...]
    cluster_cidrs: tuple[IPNetwork, ...]
    service_cidrs: tuple[IPNetwork, ...]
    node_addresses: tuple[IPAddress, ...] = ()  # empty: the Node's InternalIP of each family
    pod_cidr: PodCIDRConfig = field(default_factory=PodCIDRConfig)
    cni: CNIConfig = field(default_factory=CNIConfig)
    kubeconfig: str | None = None  # None: in-cluster configuration
    graceful_restart: int = 120
    convergence_timeout: float = 60.0
    strict_next_hop: bool = True
    route_protocol: int = 80
    route_metric: int = 20
    route_table: int = 254
    resync_interval: float = 30.0
    api_backoff_max: float = 5.0
    status_address: str = "127.0.0.1:9469"
    runtime_dir: str = "/run/podbgp"
    exabgp: str = "exabgp"
    mode: str = "bgp"  # "direct": no BGP, routes from the Node objects
    # patch the own Node's NetworkUnavailable condition to False once its PodCIDR is announced;
    # off where the cluster never sets it (most non-cloud clusters): no nodes/status write at all
    network_unavailable: bool = True
    mesh: bool = False  # iBGP full mesh between the nodes in mesh_node_selector, AS = asn
    mesh_node_selector: Selector = selector.EVERYTHING
    mesh_export_services: bool = False  # send Service routes to mesh members too (configured peers: their own exportServices)
    secrets_dir: str = "/etc/podbgp/secrets"  # the Secret podbgp-bgp-passwords, one file per passwordKey
    router_id: ipaddress.IPv4Address | None = None  # None: the Node's annotation, else its IPv4 address
    log_format: str = "text"  # "json": one JSON object per log line (speaker.cli)
    services: ServicesConfig = field(default_factory=ServicesConfig)  # speaker.service_config


def _address(value: Any, where: str) -> str:
    try:
        parse_address(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return str(value)


_KNOWN = {"nodeName", "asn", "peers", "clusterCIDRs", "serviceCIDRs", "nodeAddresses", "podCIDR", "cni",
          "kubeconfig", "gracefulRestart", "convergenceTimeout", "strictNextHop", "routeProtocol",
          "routeMetric", "routeTable", "resyncInterval", "apiBackoffMax", "statusAddress", "runtimeDir", "exabgp",
          "mode", "mesh", "meshNodeSelector", "meshExportServices", "secretsDir", "routerId", "logFormat",
          "services", "networkUnavailable"}
_POD_CIDR_KEYS = {"nodeLocal", "kubeletConfig", "k3sFile", "deriveFromClusterCIDR", "nodeMaskV4", "nodeMaskV6"}
_CNI_KEYS = {"enabled", "confPath", "bridge", "mtu", "hairpinMode", "ipMasq", "portmap", "dataDir"}


def parse(raw: dict) -> Config:
    """Build and validate a Config from a plain mapping (camelCase keys, as in the YAML file)."""
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping")
    known_keys(raw, _KNOWN)
    name = raw.get("nodeName") or ""
    if not name:
        raise ConfigError("nodeName: required (set NODE_NAME, as a DaemonSet's downward API does)")
    peers = peer_list(raw.get("peers"))
    asn = raw.get("asn")
    d = defaults(Config)
    mode = one_of(raw.get("mode", d.mode), MODES, "mode")
    cfg = Config(
        node_name=str(name),
        asn=None if asn is None or asn == "" else integer(asn, "asn", 1, 4294967295),
        peers=parse_peers(peers),
        cluster_cidrs=tuple(net(c, f"clusterCIDRs[{i}]") for i, c in enumerate(listed(raw, "clusterCIDRs"))),
        service_cidrs=tuple(net(c, f"serviceCIDRs[{i}]") for i, c in enumerate(listed(raw, "serviceCIDRs"))),
        node_addresses=tuple(ip(a, f"nodeAddresses[{i}]") for i, a in enumerate(listed(raw, "nodeAddresses"))),
        pod_cidr=_pod_cidr(mapping(raw, "podCIDR")),
        cni=_cni(mapping(raw, "cni")),
        kubeconfig=raw.get("kubeconfig") or d.kubeconfig,
        graceful_restart=integer(raw.get("gracefulRestart", d.graceful_restart), "gracefulRestart", 0, 4095),
        convergence_timeout=seconds(raw.get("convergenceTimeout", d.convergence_timeout), "convergenceTimeout"),
        strict_next_hop=boolean(raw.get("strictNextHop", d.strict_next_hop), "strictNextHop"),
        route_protocol=integer(raw.get("routeProtocol", d.route_protocol), "routeProtocol", 5, 255),
        route_metric=integer(raw.get("routeMetric", d.route_metric), "routeMetric", 0, 2**32 - 1),
        route_table=integer(raw.get("routeTable", d.route_table), "routeTable", 1, 2**32 - 1),
        resync_interval=seconds(raw.get("resyncInterval", d.resync_interval), "resyncInterval"),
        api_backoff_max=seconds(raw.get("apiBackoffMax", d.api_backoff_max), "apiBackoffMax"),
        status_address=_address(raw.get("statusAddress", d.status_address), "statusAddress"),
        runtime_dir=str(raw.get("runtimeDir", d.runtime_dir)),
        exabgp=str(raw.get("exabgp", d.exabgp)),
        mode=mode,
        network_unavailable=boolean(raw.get("networkUnavailable", d.network_unavailable), "networkUnavailable"),
        mesh=boolean(raw.get("mesh", d.mesh), "mesh"),
        mesh_node_selector=label_selector(raw.get("meshNodeSelector"), "meshNodeSelector"),
        mesh_export_services=boolean(raw.get("meshExportServices", d.mesh_export_services), "meshExportServices"),
        secrets_dir=abspath(raw.get("secretsDir", d.secrets_dir), "secretsDir"),
        router_id=d.router_id if raw.get("routerId") in (None, "") else _ipv4(raw["routerId"], "routerId"),
        log_format=one_of(raw.get("logFormat", d.log_format), LOG_FORMATS, "logFormat"),
        services=parse_services(raw.get("services")),
    )
    validate(cfg)
    return cfg


def _pod_cidr(pc: dict) -> PodCIDRConfig:
    known_keys(pc, _POD_CIDR_KEYS, "podCIDR")
    d = defaults(PodCIDRConfig)
    return PodCIDRConfig(
        node_local=tuple(net(c, f"podCIDR.nodeLocal[{i}]") for i, c in enumerate(listed(pc, "nodeLocal"))),
        kubelet_config=str(pc.get("kubeletConfig", d.kubelet_config)),
        k3s_file=str(pc.get("k3sFile", d.k3s_file)),
        derive=boolean(pc.get("deriveFromClusterCIDR", d.derive), "podCIDR.deriveFromClusterCIDR"),
        node_mask_v4=integer(pc.get("nodeMaskV4", d.node_mask_v4), "podCIDR.nodeMaskV4", 1, 32),
        node_mask_v6=integer(pc.get("nodeMaskV6", d.node_mask_v6), "podCIDR.nodeMaskV6", 1, 128),
    )


def _cni(raw: dict) -> CNIConfig:
    known_keys(raw, _CNI_KEYS, "cni")
    d = defaults(CNIConfig)
    path = str(raw.get("confPath", d.conf_path))
    if not os.path.isabs(path) or not path.endswith(".conflist"):
        raise ConfigError(f"cni.confPath: {path!r} must be an absolute path ending in .conflist "
                          "(container runtimes read a plugin list only from such a file)")
    bridge = str(raw.get("bridge", d.bridge))
    if not 1 <= len(bridge) <= 15 or any(c in bridge for c in "/: \t\n") or bridge in (".", ".."):
        raise ConfigError(f"cni.bridge: {bridge!r} is not an interface name (1..15 characters, no '/', ':' or spaces)")
    mtu = integer(raw.get("mtu", d.mtu), "cni.mtu", 0, 65535)
    if 0 < mtu < 576:
        raise ConfigError(f"cni.mtu: {mtu} is too small (0 for the plugin's default, else at least 576)")
    data_dir = str(raw.get("dataDir") or d.data_dir)
    if data_dir and not os.path.isabs(data_dir):
        raise ConfigError(f"cni.dataDir: {data_dir!r} must be an absolute path")
    return CNIConfig(
        enabled=boolean(raw.get("enabled", d.enabled), "cni.enabled"), conf_path=path, bridge=bridge, mtu=mtu,
        hairpin_mode=boolean(raw.get("hairpinMode", d.hairpin_mode), "cni.hairpinMode"),
        ip_masq=boolean(raw.get("ipMasq", d.ip_masq), "cni.ipMasq"),
        portmap=boolean(raw.get("portmap", d.portmap), "cni.portmap"), data_dir=data_dir)


def _ipv4(value: Any, where: str) -> ipaddress.IPv4Address:
    try:
        rid = ipaddress.IPv4Address(str(value).strip())
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an IPv4 address in dotted-quad form") from None
    if int(rid) == 0:
        raise ConfigError(f"{where}: 0.0.0.0 is not a router ID (it must be non-zero)")
    return rid


def validate(cfg: Config) -> None:
    """Cross-field checks: families, duplicates, overlaps between the Pod and Service ranges."""
    if cfg.mode == "bgp" and not cfg.peers and not cfg.mesh:
        raise ConfigError("peers: at least one BGP peer is required (or mesh: true, or mode: direct)")
    if cfg.mode == "bgp" and cfg.mesh and cfg.asn is None:
        raise ConfigError("asn: required with mesh: true (the one AS of every node in the mesh)")
    if cfg.mesh and cfg.mode == "direct":
        raise ConfigError("mesh: true needs mode: bgp (mode: direct runs no BGP at all)")
    if cfg.mesh and cfg.router_id is not None:
        raise ConfigError(f"routerId: {cfg.router_id} would be every node's router ID, and two ends of a mesh "
                          "session must differ; leave it unset or set podbgp.io/router-id on each Node")
    if not cfg.cluster_cidrs:
        raise ConfigError("clusterCIDRs: at least one cluster (Pod) CIDR is required")
    for what, nets in (("clusterCIDRs", cfg.cluster_cidrs), ("serviceCIDRs", cfg.service_cidrs),
                       ("podCIDR.nodeLocal", cfg.pod_cidr.node_local)):
        _one_per_family(what, nets)
    _disjoint("clusterCIDRs", cfg.cluster_cidrs, "serviceCIDRs", cfg.service_cidrs,
              "Pod and Service ranges must be disjoint")
    for i, c in enumerate(cfg.pod_cidr.node_local):
        check_pod_cidr(cfg, c, f"podCIDR.nodeLocal[{i}]")
    check_ranges(cfg.services, cfg.cluster_cidrs, cfg.service_cidrs)
    seen: dict[IPAddress, int] = {}
    for i, p in enumerate(cfg.peers):
        j = seen.get(p.address)
        if j is not None and p.node_selector.everything and cfg.peers[j].node_selector.everything:
            raise ConfigError(f"peers[{i}].address: {p.address} is also peers[{j}]; one session per address "
                              "(unless nodeSelectors split the nodes between them)")
        seen.setdefault(p.address, i)
        for fam in p.families:
            if fam == "ipv6" and p.address.version == 4 or fam == "ipv4" and p.address.version == 6:
                raise ConfigError(f"peers[{i}].families: {fam} over an IPv{p.address.version} session is not "
                                  "supported; configure a peer of each family")
    versions = {c.version for c in cfg.cluster_cidrs}
    for i, a in enumerate(cfg.node_addresses):
        if a.version not in versions:
            raise ConfigError(f"nodeAddresses[{i}]: {a} is IPv{a.version} but no cluster CIDR of that family")


def _one_per_family(what: str, nets: Sequence[IPNetwork]) -> None:
    for i, n in enumerate(nets):
        for j, m in enumerate(nets[:i]):
            if m == n:
                raise ConfigError(f"{what}[{i}]: {n} is listed twice (also {what}[{j}])")
            if m.version == n.version:
                raise ConfigError(f"{what}: at most one CIDR per IP family ({what}[{i}] {n} is a second "
                                  f"IPv{n.version} one after {what}[{j}] {m})")


def _disjoint(a_name: str, a: Sequence[IPNetwork], b_name: str, b: Sequence[IPNetwork], why: str) -> None:
    """No address in both lists: one set intersection over every entry, then name the first clash."""
    common = netaddr.IPSet(str(n) for n in a) & netaddr.IPSet(str(n) for n in b)
    if not common:
        return
    for j, y in enumerate(b):
        inside = common & netaddr.IPSet([str(y)])
        if inside:
            i = next(i for i, x in enumerate(a) if netaddr.IPSet([str(x)]) & inside)
            raise ConfigError(f"{b_name}[{j}]: {y} overlaps {a_name}[{i}] {a[i]}; {why}")


def check_pod_cidr(cfg: Config, net: IPNetwork, where: str) -> None:
    """A PodCIDR must sit inside the cluster CIDR of its family and outside every Service CIDR."""
    start, end = span(net)  # not net.overlaps/subnet_of: they cache on net, which the NodeView keeps
    for s in cfg.service_cidrs:
        if s.version == net.version and span(s)[0] <= end and start <= span(s)[1]:
            raise ConfigError(f"{where}: {net} overlaps the Service CIDR {s}")
    cluster = [c for c in cfg.cluster_cidrs if c.version == net.version]
    if not cluster:
        raise ConfigError(f"{where}: {net} is IPv{net.version} but clusterCIDRs has no such family")
    if not any(span(c)[0] <= start and end <= span(c)[1] for c in cluster):
        raise ConfigError(f"{where}: {net} is outside the cluster CIDR {cluster[0]}")


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` (`[::]:PORT`: every IPv6 address) or `0.0.0.0:PORT` -> (host,
    port). An IPv6 address needs its brackets; port 0 asks for any free port."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            sep = ""
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            sep = ""
    if not sep or not host:
        raise ValueError(f"status address {text!r}: expected HOST:PORT, [V6]:PORT or 0.0.0.0:PORT")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"status address {text!r}: port {port!r} is not a number from 0 to 65535")
    return host, int(port)


ENV_KEYS = {
    "NODE_NAME": "nodeName", "PODBGP_ASN": "asn", "PODBGP_KUBECONFIG": "kubeconfig",
    "PODBGP_CLUSTER_CIDRS": "clusterCIDRs", "PODBGP_SERVICE_CIDRS": "serviceCIDRs",
    "PODBGP_NODE_ADDRESSES": "nodeAddresses", "PODBGP_STATUS_ADDRESS": "statusAddress",
    "PODBGP_RUNTIME_DIR": "runtimeDir", "PODBGP_GRACEFUL_RESTART": "gracefulRestart",
}


def load(path: str | None, env: dict[str, str] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """File, then environment, then flags (each later one wins)."""
    raw = _read(path)
    env = os.environ if env is None else env
    for var, key in ENV_KEYS.items():
        if env.get(var):
            raw[key] = env[var]
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    return parse(raw)


def runtime_dir(path: str | None, env: dict[str, str] | None = None) -> str:
    """The runtimeDir a speaker started with this file and environment uses, without the rest of
    the config (`podbgp status` on a node's shell has no NODE_NAME): the environment, then the file."""
    env = os.environ if env is None else env
    value = env.get("PODBGP_RUNTIME_DIR") or _read(path).get("runtimeDir") or defaults(Config).runtime_dir
    return str(value)


def _read(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} must hold a mapping")
    return raw
