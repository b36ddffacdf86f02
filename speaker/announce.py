"""What this node announces and as whom (its AS, address, router ID): pure functions of the config
and the node's facts. Who it peers with is speaker.peers."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from bgp.types import Announcement, IPAddress, IPNetwork

from .config import Config, ConfigError
from .nodes import NodeInfo


ASN_ANNOTATION = "podbgp.io/asn"
ASN_MAX = 4294967295


@dataclass(frozen=True, slots=True)
class LocalAS:
    """This node's own AS and where it came from; `error` is one line for status when it is wrong."""

    asn: int | None
    source: str  # "annotation podbgp.io/asn", "config asn" or "" (none)
    error: str = ""


def local_as(cfg: Config, node: NodeInfo | None) -> LocalAS:
    """The Node's podbgp.io/asn annotation if it is a valid AS number, else the config's asn. In a
    mesh the config's asn is every node's AS: an annotation that differs is reported and ignored."""
    text = dict(node.annotations).get(ASN_ANNOTATION) if node is not None else None
    error = ""
    if text is not None:
        digits = text.strip()
        if digits.isascii() and digits.isdigit() and 1 <= int(digits) <= ASN_MAX:
            if cfg.mesh and cfg.asn is not None and int(digits) != cfg.asn:
                return LocalAS(cfg.asn, "config asn", f"node {cfg.node_name}: annotation {ASN_ANNOTATION}={text!r} "
                               f"differs from the mesh's AS {cfg.asn} (config asn), which every node uses; "
                               "remove the annotation")
            return LocalAS(int(digits), f"annotation {ASN_ANNOTATION}")
        error = (f"node {cfg.node_name}: annotation {ASN_ANNOTATION}={text!r} is not an AS number (1..{ASN_MAX}); "
                 + (f"using the config asn {cfg.asn}" if cfg.asn is not None
                    else "the config sets no asn either; no BGP session until one of them is set"))
    if cfg.asn is not None:
        return LocalAS(cfg.asn, "config asn", error)
    if not error:
        error = (f"node {cfg.node_name}: no AS number: the Node has no {ASN_ANNOTATION} annotation and the config "
                 "sets no asn; no BGP session until one of them is set")
    return LocalAS(None, "", error)


def local_address(cfg: Config, node: NodeInfo | None, version: int) -> IPAddress | None:
    """The node's own address of a family: configured explicitly, else the Node's InternalIP."""
    explicit = next((a for a in cfg.node_addresses if a.version == version), None)
    if explicit is not None:
        return explicit
    return node.address(version) if node is not None else None


def local_address_for(cfg: Config, node: NodeInfo | None, peer: IPAddress) -> IPAddress | None:
    """The node's own address for a session to peer: configured explicitly, else the Node's
    InternalIP of that family sharing the longest prefix with the peer (a node on two ToRs' segments
    speaks to each from its address there), the first listed on a tie."""
    explicit = next((a for a in cfg.node_addresses if a.version == peer.version), None)
    if explicit is not None or node is None:
        return explicit
    mine = [a for a in node.addresses if a.version == peer.version]
    if not mine:
        return None
    width = peer.max_prefixlen
    return max(mine, key=lambda a: width - (int(a) ^ int(peer)).bit_length())  # max keeps the first on a tie


def router_id(cfg: Config, node: NodeInfo | None) -> ipaddress.IPv4Address:
    v4 = local_address(cfg, node, 4)
    if v4 is not None:
        return v4  # type: ignore[return-value]
    v6 = local_address(cfg, node, 6)
    if v6 is None:
        raise ConfigError(f"nodeAddresses: node {cfg.node_name} has no InternalIP and none is configured")
    return ipaddress.IPv4Address(int(v6) & 0xFFFFFFFF)


def announcements(cidrs: tuple[IPNetwork, ...]) -> frozenset[Announcement]:
    return frozenset(Announcement(prefix=c) for c in cidrs)
