"""Where this node's PodCIDR(s) come from, in order, and the checks they must pass. Pure.

1. Node.spec.podCIDRs (or podCIDR)       4. kubelet config file `podCIDR`
2. config podCIDR.nodeLocal              5. k3s node file
3. env NODE_POD_CIDR                     6. opt-in derivation from the cluster CIDR
"""
from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import yaml

from bgp.types import IPNetwork

from .config import Config, ConfigError, check_pod_cidr
from .nodes import NodeInfo


@dataclass(frozen=True, slots=True)
class Discovered:
    cidrs: tuple[IPNetwork, ...]
    source: str
    warning: str = ""


def _parse_list(text: str, where: str) -> tuple[IPNetwork, ...]:
    out = []
    for part in str(text).replace(" ", ",").split(","):
        if part.strip():
            try:
                out.append(ipaddress.ip_network(part.strip(), strict=True))
            except ValueError as exc:
                raise ConfigError(f"{where}: {part.strip()!r} is invalid ({exc})") from None
    return tuple(out)


def discover(
    cfg: Config,
    node: NodeInfo | None,
    env: dict[str, str],
    read_file: Callable[[str], str | None],
    others: Iterable[NodeInfo] = (),
) -> Discovered | None:
    """The first source that has something, validated; None if no source has anything."""
    found = _first(cfg, node, env, read_file, others)
    if found is None:
        return None
    versions = [c.version for c in found.cidrs]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"{found.source}: at most one PodCIDR per IP family")
    for c in found.cidrs:
        check_pod_cidr(cfg, c, found.source)
    return found


def _first(cfg, node, env, read_file, others) -> Discovered | None:
    if node is not None and node.pod_cidrs:
        return Discovered(node.pod_cidrs, "node.spec.podCIDRs")
    if cfg.pod_cidr.node_local:
        return Discovered(cfg.pod_cidr.node_local, "config podCIDR.nodeLocal")
    if env.get("NODE_POD_CIDR"):
        return Discovered(_parse_list(env["NODE_POD_CIDR"], "env NODE_POD_CIDR"), "env NODE_POD_CIDR")
    text = read_file(cfg.pod_cidr.kubelet_config)
    if text:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            raise ConfigError(f"kubelet config {cfg.pod_cidr.kubelet_config}: not valid YAML") from None
        if isinstance(data, dict) and data.get("podCIDR"):
            where = f"kubelet config {cfg.pod_cidr.kubelet_config}"
            return Discovered(_parse_list(data["podCIDR"], where), where)
    text = read_file(cfg.pod_cidr.k3s_file)
    if text and text.strip():
        where = f"k3s file {cfg.pod_cidr.k3s_file}"
        return Discovered(_parse_list(text.strip(), where), where)
    if cfg.pod_cidr.derive:
        return derive(cfg, cfg.node_name, [n.name for n in others if n.name != cfg.node_name],
                      [c for n in others if n.name != cfg.node_name for c in n.pod_cidrs])
    return None


def derived_index(name: str, count: int) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % count


def _carve(cluster: IPNetwork, mask: int, name: str) -> IPNetwork:
    """The /mask subnet of cluster that the hash of name picks."""
    count = 2 ** min(mask - cluster.prefixlen, 62)
    size = 2 ** ((32 if cluster.version == 4 else 128) - mask)
    return ipaddress.ip_network((int(cluster.network_address) + derived_index(name, count) * size, mask))


def derive(cfg: Config, name: str, other_names: list[str], taken: list[IPNetwork]) -> Discovered:
    """A PodCIDR carved from the cluster CIDR by a hash of the node name; collisions refused."""
    cidrs = []
    for cluster in cfg.cluster_cidrs:
        mask = cfg.pod_cidr.node_mask_v4 if cluster.version == 4 else cfg.pod_cidr.node_mask_v6
        if mask <= cluster.prefixlen:
            raise ConfigError(f"podCIDR.nodeMaskV{cluster.version}: /{mask} is not smaller than {cluster}")
        mine = _carve(cluster, mask, name)
        for other in other_names:
            if _carve(cluster, mask, other) == mine:
                raise ConfigError(f"podCIDR.deriveFromClusterCIDR: {mine} derived for {name} collides with node "
                                  f"{other}; assign podCIDRs explicitly")
        for net in taken:
            if net.version == mine.version and net.overlaps(mine):
                raise ConfigError(f"podCIDR.deriveFromClusterCIDR: {mine} derived for {name} overlaps {net} "
                                  "already assigned to another node")
        cidrs.append(mine)
    return Discovered(tuple(cidrs), "derived from clusterCIDRs",
                      warning="PodCIDR derived from the cluster CIDR by hashing the node name; "
                              "this is a fallback, assign Node.spec.podCIDRs in production")
