"""Direct mode (`mode: direct`): the routes come from the Node objects, no BGP.

Each other Node's PodCIDRs become paths via its InternalIP of the family, for the Nodes whose
InternalIP lies on a subnet connected to this node (flannel host-gw's model: one L2 segment).
The paths go into a RIB (bgp.rib, peer = the Node's name) that the reconciler reads exactly as
it reads BGP's, so the same import policy, ownership checks and protocol number apply. A Node
whose PodCIDR has no on-link address is reported off-link and not routed.

Work stays proportional to what changed: a Node change touches that Node's paths only; a change
of the connected subnets (rare: an address added or removed) re-evaluates every Node.
"""
from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Mapping

from bgp.rib import Rib
from bgp.source import PeerStatus, RibPaths
from bgp.types import IPAddress, IPNetwork, Path, UpdateEvent

from .nodes import NodeInfo

log = logging.getLogger(__name__)


def on_link(address: IPAddress, connected: Iterable[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in connected)


def node_paths(info: NodeInfo, connected: frozenset[IPNetwork]) -> tuple[dict[IPNetwork, Path], str | None]:
    """A Node's paths in direct mode (each PodCIDR via its first on-link InternalIP of the family)
    and, if some PodCIDR has InternalIPs of its family but none on-link, why it is not routed. A
    PodCIDR with no InternalIP of its family at all is NodeView's `unusable`, not reported here."""
    paths: dict[IPNetwork, Path] = {}
    offlink_ips: list[IPAddress] = []
    offlink_cidrs: list[IPNetwork] = []
    for cidr in info.pod_cidrs:
        addrs = [a for a in info.addresses if a.version == cidr.version]
        hop = next((a for a in addrs if on_link(a, connected)), None)
        if hop is not None:
            paths[cidr] = Path(peer=info.name, prefix=cidr, next_hop=hop)
        elif addrs:
            offlink_ips.extend(a for a in addrs if a not in offlink_ips)
            offlink_cidrs.append(cidr)
    if not offlink_ips:
        return paths, None
    ips = ", ".join(map(str, offlink_ips))
    subject = f"InternalIP {ips} is" if len(offlink_ips) == 1 else f"InternalIPs {ips} are"
    what = "" if not paths else " " + ", ".join(map(str, offlink_cidrs))
    return paths, f"{subject} on no connected subnet of this node;{what} not routed in direct mode"


class DirectSource(RibPaths):
    """The route source of direct mode (bgp.source.RouteSource): the paths kept per Node.

    `nodes` is the NodeView's live mapping of Nodes by name; `node_changed(name)` and
    `set_connected(...)` return the prefixes whose paths changed (for the reconciler to mark).
    `on_offlink(node, reason or None)` is called when a Node's off-link verdict changes. No BGP:
    no peer, no engine process, converged once the first full Node list is in.
    """

    def __init__(self, me: str, nodes: Mapping[str, NodeInfo], connected: Iterable[IPNetwork],
                 on_converged: Callable[[str], None] = lambda _why: None,
                 on_offlink: Callable[[str, str | None], None] = lambda _n, _r: None,
                 counters: collections.Counter | None = None) -> None:
        self.me, self.nodes = me, nodes
        self.connected = frozenset(connected)
        self.on_converged, self.on_offlink = on_converged, on_offlink
        self.counters = counters if counters is not None else collections.Counter()
        self.rib = Rib()
        self.offlink: dict[str, str] = {}  # node -> why some of its PodCIDRs are not routed
        self._routed: dict[str, frozenset[IPNetwork]] = {}  # node -> the prefixes it has paths for
        self._converged = False  # set once the first full Node list is in (set_synced)

    # ---- the route source --------------------------------------------------------------------
    def peers(self) -> tuple[PeerStatus, ...]:
        return ()

    def peer(self, key: str) -> PeerStatus | None:
        return None

    @property
    def converged(self) -> bool:
        return self._converged

    @property
    def ready(self) -> bool:
        return self._converged

    @property
    def pid(self) -> int | None:
        return None

    # ---- what the speaker tells --------------------------------------------------------------
    def node_changed(self, name: str) -> set[IPNetwork]:
        """The Node `name` was added, changed or deleted in `nodes`: update its paths."""
        info = self.nodes.get(name)
        if info is None or name == self.me:  # this node's own PodCIDRs are never routed
            self._set_offlink(name, None)
            self._routed.pop(name, None)
            return self.rib.peer_down(name, keep_stale=False)
        paths, reason = node_paths(info, self.connected)
        self._set_offlink(name, reason)
        if not paths:
            self._routed.pop(name, None)
            return self.rib.peer_down(name, keep_stale=False)
        withdrawn = tuple(p for p in self._routed.get(name, ()) if p not in paths)
        self._routed[name] = frozenset(paths)
        return self.rib.apply(UpdateEvent(peer=name, announced=tuple(paths.values()), withdrawn=withdrawn))

    def set_connected(self, connected: Iterable[IPNetwork]) -> set[IPNetwork]:
        """This node's connected subnets changed (an address came or went): which Nodes are on-link."""
        connected = frozenset(connected)
        if connected == self.connected:
            return set()
        log.info("direct.connected subnets=%s", ",".join(sorted(map(str, connected))) or "-")
        self.connected = connected
        changed: set[IPNetwork] = set()
        for name in list(self.nodes.keys() | self._routed.keys() | self.offlink.keys()):
            changed |= self.node_changed(name)
        return changed

    def set_synced(self) -> None:
        """The first full Node list is in: nothing more to wait for before pruning."""
        if not self._converged:
            self._converged = True
            log.info("direct.converged paths=%d offlink=%d", self.rib.count(), len(self.offlink))
            self.on_converged("direct: nodes listed")

    def _set_offlink(self, name: str, reason: str | None) -> None:
        before = self.offlink.get(name)
        if reason == before:
            return
        if reason is None:
            del self.offlink[name]
            if name in self.nodes:
                log.info("direct.onlink node=%s", name)
        else:
            self.offlink[name] = reason
            self.counters["nodes_offlink"] += 1
            log.warning("direct.offlink node=%s %s", name, reason)
        self.on_offlink(name, reason)

    async def stop(self) -> None:
        pass
