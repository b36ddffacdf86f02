"""What the speaker tells about itself: the /status document, the /metrics families, the table
`podbgp status` prints. speaker.endpoint serves them."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bgp.source import BfdStatus
from bgp.types import SessionState
from reconciler.report import net_key
from reconciler.types import Reason

if TYPE_CHECKING:  # the speaker's state, read through its typed parts (bgp.source, reconciler.report)
    from .app import Speaker

log = logging.getLogger(__name__)


def status_doc(sp: Speaker) -> dict:
    """Everything `podbgp status` shows, as plain JSON values (sorted, deterministic)."""
    return {k: list(v()) if callable(v) else v for k, v in _doc(sp).items()}


def status_chunks(sp: Speaker, batch: int = 256) -> Iterator[bytes]:
    """The same document as JSON text, a few hundred routes at a time: the route lists (learned,
    installed, rejected: 10,000 entries each at 5,000 nodes) are never held whole, as dicts or as
    text, so a `podbgp status` costs the speaker no memory that outlives it."""
    yield b"{"
    for i, (key, value) in enumerate(_doc(sp).items()):
        head = ("," if i else "") + "\n " + json.dumps(key) + ": "
        if not callable(value):
            yield (head + json.dumps(value)).encode()
            continue
        yield (head + "[").encode()
        items: list[str] = []
        first = True
        for item in value():
            items.append(json.dumps(item))
            if len(items) == batch:
                yield (("" if first else ",") + ",".join(items)).encode()
                items, first = [], False
        yield (("" if first or not items else ",") + ",".join(items) + "]").encode()
    yield b"\n}\n"


def _doc(sp: Speaker) -> dict:
    """The status document; the long route lists as functions that produce their entries in order."""
    src, rec = sp.source, sp.reconciler.report()
    peers = [{"address": p.key, "asn": p.asn, "localAddress": str(p.local_address), "localAsn": p.local_asn,
              "state": p.state.value, "since": p.since, "reason": p.reason, "families": sorted(p.families),
              "endOfRib": sorted(p.end_of_rib), "paths": p.paths, "refused": dict(p.refused),
              "counted": dict(p.counted), "maxPrefixes": dict(p.max_prefixes), "overLimit": p.over,
              "overBy": p.excess, "resumeAt": p.resume_at, "bfd": _bfd(p.bfd)} for p in src.peers()]
    errors = dict(sp.node_errors)
    for cidr, names in sp.view.disputed.items():
        errors[f"disputed:{cidr}"] = f"podCIDR {cidr} is claimed by overlapping nodes {', '.join(names)}; neither is trusted"
    for name, reason in sp.view.unusable.items():
        errors[f"unusable:{name}"] = reason

    def learned() -> Iterator[dict]:
        for x in sorted(src.paths(), key=lambda x: (*net_key(x.prefix), x.peer)):
            yield {"prefix": str(x.prefix), "peer": x.peer, "nextHop": str(x.next_hop), "stale": x.stale}

    # the reconciler's report comes sorted (prefixes by family, address, length; then peers)
    def installed() -> Iterator[dict]:
        return ({"prefix": str(r.prefix), "via": [str(g) for g in r.gateways]} for r in rec.installed)

    def rejected() -> Iterator[dict]:
        return ({"prefix": str(r.prefix), "peer": r.peer, "nextHop": str(r.next_hop), "reason": r.reason.value}
                for r in rec.rejected)

    def service_routes() -> Iterator[dict]:
        return (plain(r) for r in (sp.services.report() if sp.services is not None else ()))

    return {
        "node": sp.cfg.node_name,
        "mode": sp.cfg.mode,
        "synced": sp.synced,
        "apiReachable": sp.api_up,
        "nodes": len(sp.view),
        "converged": src.converged,
        "podCIDRSource": sp.own.source if sp.own else None,
        "peers": peers,
        "announced": [str(p) for p in sorted((a.prefix for a in sp.announced), key=net_key)],
        "learned": learned,
        "installed": installed,
        "rejected": rejected,
        "rejectedByReason": {k.value: v for k, v in rec.counts.rejected_by_reason},
        "refusedNotStored": _refused(peers),
        "blocked": [str(p) for p in rec.blocked],
        "nodeErrors": dict(sorted(errors.items())),
        "counters": dict(sorted(sp.counters.items())),
        "exabgpPid": src.pid,
        "cniConf": sp.cni.status(),
        "networkCondition": sp.condition.status(),
        "lastReconcile": rec.last_pass,
        "services": _services(sp),
        "serviceRoutes": service_routes,
    }


def _refused(peers: list[dict]) -> dict[str, int]:
    """Paths refused for good (bgp.limits: counted, never stored), per reason, over every peer's
    current session: beside rejectedByReason, which counts the refused paths the RIB holds."""
    total: dict[str, int] = {}
    for p in peers:
        for reason, n in p["refused"].items():
            total[reason] = total.get(reason, 0) + n
    return dict(sorted(total.items()))


def _services(sp: Speaker) -> dict | None:
    """Whether Service routes are live, the Services refused (one line each), the allocator."""
    table = sp.services
    if table is None:
        return None
    return {"live": sp.services_live, "synced": sorted(sp.services_synced),
            "announced": len(table.announcements()) if sp.services_live else 0,
            "errors": dict(sorted(table.errors.items())),
            "allocator": sp.allocator.status() if sp.allocator is not None else None}


def plain(value: object) -> object:
    """A dataclass of the speaker as JSON values: camelCase keys, addresses and networks as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_camel(f.name): plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list, frozenset, set)):
        items = [plain(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


# ---- /metrics: prometheus_client over the speaker's state, read at scrape time ---------------

class SpeakerCollector(Collector):
    """The speaker's metric families. Nothing is counted on the hot path: a scrape reads the
    state the speaker keeps anyway (peer states, RIB sizes, `counters`), and only its sizes, not
    the sorted and formatted routes of /status."""

    def __init__(self, sp: Speaker) -> None:
        self.sp = sp

    def collect(self) -> Iterator[Metric]:
        sp = self.sp
        src, rec = sp.source, sp.reconciler.counts()
        up = GaugeMetricFamily("podbgp_peer_up", "1 if the BGP session is Established.", labels=("peer", "asn"))
        paths = GaugeMetricFamily("podbgp_peer_received_paths", "Paths learned from the peer and held in the RIB.",
                                  labels=("peer",))
        prefixes = GaugeMetricFamily("podbgp_peer_prefixes", "Paths of the peer's session that count toward its "
                                     "maxPrefixes: held in the RIB plus refused for good (counted, not stored).",
                                     labels=("peer", "family"))
        exceeded = GaugeMetricFamily("podbgp_peer_max_prefixes_exceeded", "How many paths the peer is over its "
                                     "maxPrefixes (the largest excess of its families; 0: within them).", labels=("peer",))
        refused = GaugeMetricFamily("podbgp_peer_refused_paths", "Paths of the peer's session refused for good by the "
                                    "import policy, counted and never stored, by reason.", labels=("peer", "reason"))
        bfd_up = GaugeMetricFamily("podbgp_bfd_session_up", "1 if the peer's BFD session is up (peers with BFD only).",
                                   labels=("peer",))
        bfd_downs = CounterMetricFamily("podbgp_bfd_session_downs", "Times the peer's BFD session went from up to down "
                                        "(each dropped the peer's paths at once).", labels=("peer",))
        for p in src.peers():
            up.add_metric((p.key, str(p.asn)), int(p.state == SessionState.UP))
            paths.add_metric((p.key,), p.paths)
            for fam, n in p.counted:
                prefixes.add_metric((p.key, fam), n)
            if p.max_prefixes:
                exceeded.add_metric((p.key,), p.excess)
            for reason, n in p.refused:
                refused.add_metric((p.key, reason), n)
            if p.bfd is not None:
                bfd_up.add_metric((p.key,), int(p.bfd.state == "up"))
                bfd_downs.add_metric((p.key,), p.bfd.downs)
        yield from (up, paths, prefixes, exceeded, refused, bfd_up, bfd_downs)
        yield GaugeMetricFamily("podbgp_announced_prefixes", "Prefixes announced to the peers (this node's PodCIDRs).",
                                value=len(sp.own_announced))
        if sp.services is not None:
            table = sp.services
            yield GaugeMetricFamily("podbgp_service_prefixes_announced",
                                    "Service prefixes (LoadBalancer, external, cluster IPs) this node announces.",
                                    value=len(table.announcements()) if sp.services_live else 0)
            yield GaugeMetricFamily("podbgp_services_refused", "Services with an address podbgp refuses to announce.",
                                    value=len(table.errors))
            yield GaugeMetricFamily("podbgp_services_live", "1 once the Services and EndpointSlices are listed.",
                                    value=int(sp.services_live))
            if sp.allocator is not None:
                st = sp.allocator.status()
                yield GaugeMetricFamily("podbgp_allocator_leader", "1 while this speaker is the elected LoadBalancer IP allocator.",
                                        value=int(bool(st.get("leader"))))
        yield GaugeMetricFamily("podbgp_installed_routes", "Our routes in the kernel table.",
                                value=rec.installed)
        yield GaugeMetricFamily("podbgp_converged", "1 once the RIB has converged (End-of-RIB or the grace timer).",
                                value=int(src.converged))
        yield GaugeMetricFamily("podbgp_api_reachable", "1 while the Kubernetes API answers.", value=int(sp.api_up))
        rejected = GaugeMetricFamily("podbgp_rejected_routes", "Learned paths currently refused, by reason.",
                                     labels=("reason",))
        counts = dict(rec.rejected_by_reason)  # a foreign route holding our key counts as foreign-route-present
        for reason in Reason:  # every reason, zeros included, so that no series comes and goes
            rejected.add_metric((reason.value,), counts.get(reason, 0))
        yield rejected
        events = CounterMetricFamily("podbgp_events", "Events the speaker counted, by kind.", labels=("event",))
        for name, n in sorted(sp.counters.items()):
            events.add_metric((name,), n)
        yield events


def metrics_registry(sp: Speaker) -> CollectorRegistry:
    """One registry per speaker: its own families, and the process (resident memory, CPU
    seconds, open fds) and platform (Python version) collectors."""
    registry = CollectorRegistry()
    registry.register(SpeakerCollector(sp))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def _bfd(b: BfdStatus | None) -> dict | None:
    if b is None:
        return None
    return {"state": b.state, "since": b.since, "minRx": b.min_rx, "minTx": b.min_tx, "multiplier": b.multiplier,
            "multihop": b.multihop, "diagnostics": b.diagnostics, "downs": b.downs,
            "droppedPaths": len(b.dropped), "droppedAt": b.dropped_at, "error": b.error}


def _peer_notes(p: dict) -> list[str]:
    """Under a peer's line: the paths it sent that are refused for good (counted, not stored),
    and by how much it is over its maxPrefixes."""
    out = []
    if p.get("refused"):
        out.append("  refused, not stored: " + ", ".join(f"{n:,} {r}" for r, n in sorted(p["refused"].items())))
    if p.get("overLimit"):
        back = " (torn down; back in {:.0f}s)".format(max(0, p["resumeAt"] - time.time())) if p.get("resumeAt") else ""
        out.append(f"  OVER maxPrefixes: {p['overLimit']}{back}")
    if (b := p.get("bfd")) is not None:
        held = f"; {b['droppedPaths']:,} paths dropped at its down" if b["droppedAt"] else ""
        out.append(f"  bfd {b['state']} {b['minRx']}/{b['minTx']} ms x{b['multiplier']}"
                   f"{' multihop' if b['multihop'] else ''}, downs {b['downs']}"
                   f"{', last: ' + b['diagnostics'] if b['downs'] else ''}{held}{'; ' + b['error'] if b['error'] else ''}")
    return out


def render_table(doc: dict) -> str:
    out = [f"node {doc['node']}  synced={doc['synced']} api={'up' if doc['apiReachable'] else 'down'} "
           f"converged={doc['converged']}  podCIDR source: {doc['podCIDRSource']}", "", "PEER            ASN      STATE  PATHS  EOR"]
    for p in doc["peers"]:
        out.append(f"{p['address']:<15} {p['asn']:<8} {p['state']:<6} {p['paths']:<6} {','.join(p['endOfRib']) or '-'}")
        out += _peer_notes(p)
    out += ["", "ANNOUNCED"] + [f"  {a}" for a in doc["announced"]]
    if doc.get("services") is not None:
        sv = doc["services"]
        out += ["", f"SERVICES  live={sv['live']} announced={sv['announced']}"]
        for r in doc["serviceRoutes"]:
            state = "announced" if r.get("announced") else "not announced"
            out.append(f"  {r['prefix']} {state}: {r.get('why', '')}")
        out += [f"  refused {k}: {v}" for k, v in sv["errors"].items()]
    out += ["", "INSTALLED"] + [f"  {r['prefix']} via {','.join(r['via'])}" for r in doc["installed"]]
    out += ["", "LEARNED"] + [f"  {x['prefix']} via {x['nextHop']} from {x['peer']}{' (stale)' if x['stale'] else ''}"
                              for x in doc["learned"]]
    out += ["", "REJECTED"] + [f"  {r['prefix']} via {r['nextHop']} from {r['peer']}: {r['reason']}" for r in doc["rejected"]]
    if doc["nodeErrors"]:
        out += ["", "NODE ERRORS"] + [f"  {v}" for v in doc["nodeErrors"].values()]
    return "\n".join(out)
