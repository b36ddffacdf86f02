"""`podbgp explain PREFIX`: why one prefix is or is not in this node's kernel, as one document.

`explain(sp, prefix)` is pure over the speaker's state: the Node view (who holds the PodCIDR),
the RIB (who offers it, via which next hop), the import policy's verdicts (reconciler.policy's
`evaluate`, the very function the reconcile loop calls: nothing is re-derived here) and the
reconciler's report at that prefix (`Reconciler.report_at`: its model of the kernel, and whether
the prefix is blocked, failed or pending). The status endpoint may also hand it the routes of our
table at that prefix, read fresh through the speaker's route table (`RouteTable.routes_at`) in a
worker thread: the model keeps only the keys of foreign routes, the fresh read also their
protocol and next hops.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
import urllib.parse
from typing import TYPE_CHECKING

from bgp.types import IPNetwork, Path, SessionState
from reconciler.policy import Policy, evaluate, static_check
from reconciler.report import PrefixReport, net_key
from reconciler.types import KernelRoute, Reason, ReconcilerError

from .config import SpeakerError

if TYPE_CHECKING:  # the speaker's state, read through its typed parts (bgp.source, reconciler.report)
    from .app import Speaker
    from .nodes import NodeView

log = logging.getLogger(__name__)

# rtm_protocol numbers as iproute2 names them (/etc/iproute2/rt_protos); others print as numbers
PROTOCOLS = {2: "kernel", 3: "boot", 4: "static", 11: "zebra", 12: "bird", 16: "dhcp", 42: "babel",
             186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp"}


class BadPrefix(SpeakerError):
    """The prefix asked about is not a CIDR; one line saying why."""


def parse_prefix(text: str) -> IPNetwork:
    """A CIDR (a bare address is its host prefix); host bits set is refused with the fix."""
    text = text.strip()
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise BadPrefix(f"explain: {text!r} is not an IPv4 or IPv6 CIDR") from None
    raise BadPrefix(f"explain: {text} has host bits set; did you mean {net}?")


# ---- the document ----------------------------------------------------------------------------

def explain(sp: Speaker, prefix: IPNetwork, kernel: list[KernelRoute] | None = None,
            kernel_error: str | None = None) -> dict:
    """Everything `podbgp explain` shows about `prefix`. `kernel`: the routes of our table at
    this prefix read just now (None: what the reconciler's model holds)."""
    rec = sp.reconciler.report_at(prefix)
    policy = rec.policy
    paths = sorted(sp.source.paths_for(prefix), key=lambda p: p.peer)
    route, rejected = evaluate(policy, prefix, paths)
    refused = {r.peer: r.reason for r in rejected}
    owner = _owner(sp.view, prefix)
    announced = any(a.prefix == prefix for a in sp.announced)
    doc = {
        "prefix": str(prefix),
        "owner": owner,
        "own": {"own": prefix in policy.own, "announced": announced},
        "paths": [_path(sp, p, refused.get(p.peer), policy) for p in paths],
        "desired": None if route is None else {"via": [str(g) for g in route.gateways], "metric": route.metric,
                                                "ecmp": len(route.gateways) > 1},
        "kernel": _kernel(sp, rec, kernel, kernel_error),
        "refused": _for_good(sp, prefix, policy),
        "bfd": _bfd_dropped(sp, prefix),
    }
    doc["verdict"], doc["summary"] = _verdict(rec, doc)
    doc["services"] = _services(sp, prefix)
    if doc["services"] and doc["verdict"] in ("absent", "rejected"):  # a Service IP: what matters is our announcement
        doc["verdict"], doc["summary"] = _service_verdict(doc["services"])
    return {k: doc[k] for k in ("prefix", "verdict", "summary", "owner", "own", "paths", "refused", "bfd",
                                "desired", "kernel", "services")}


def _bfd_dropped(sp: Speaker, prefix: IPNetwork) -> list[dict]:
    """The peers whose path to prefix was dropped when their BFD session went down (until it is up
    again)."""
    return [{"peer": p.key, "at": p.bfd.dropped_at, "diagnostics": p.bfd.diagnostics}
            for p in sp.source.peers() if p.bfd is not None and prefix in p.bfd.dropped]


def _for_good(sp: Speaker, prefix: IPNetwork, policy: Policy) -> dict | None:
    """A prefix the policy refuses whatever the Nodes say: such paths are counted per peer and
    reason, not stored (bgp.limits), so what is known is the reason and each peer's count of
    paths refused for it in its current session, not whether this very prefix was among them."""
    reason = static_check(policy, prefix)
    if reason is None:
        return None
    peers = [{"peer": p.key, "paths": n} for p in sp.source.peers() for r, n in p.refused if r == reason.value and n]
    return {"reason": reason.value, "why": why_prefix(prefix, reason, policy), "peers": peers}


def _services(sp: Speaker, prefix: IPNetwork) -> list[dict]:
    """The Services that own this address (a host prefix, or a Service CIDR), as status shows them."""
    if sp.services is None:
        return []
    from .status import plain  # status imports this module
    seen = [plain(r) for r in sp.services.explain(prefix.network_address)] if prefix.prefixlen == prefix.max_prefixlen else []
    return seen or [plain(r) for r in sp.services.report() if r.prefix == prefix]


def _service_verdict(services: list[dict]) -> tuple[str, str]:
    first = services[0]
    who = ", ".join(first.get("services") or ()) or "the Service CIDR"
    if first.get("announced"):
        return "service", f"a Service address of {who}: announced by this node ({first.get('why', '')})"
    return "service", f"a Service address of {who}: not announced by this node: {first.get('why', '')}"


def _owner(view: NodeView, prefix: IPNetwork) -> dict:
    """Who holds `prefix` by the Kubernetes view: exactly, inside a larger PodCIDR, or nobody."""
    if prefix in view.owners:
        name = view.owners[prefix].node
        info = view.get(name)
        ips = [str(a) for a in (info.addresses if info else view.owners[prefix].addresses)]
        return {"state": "owned", "node": name, "internalIPs": ips, "cidr": str(prefix),
                "reason": f"{prefix} is {name}'s PodCIDR"}
    if prefix in view.disputed:
        names = list(view.disputed[prefix])
        return {"state": "disputed", "nodes": names, "cidr": str(prefix),
                "reason": f"{prefix} is claimed by overlapping nodes {', '.join(names)}; neither is trusted"}
    if prefix in view.unusable_at:
        name, reason = view.unusable_at[prefix]
        return {"state": "unusable", "node": name, "cidr": str(prefix), "reason": reason}
    for length in range(prefix.prefixlen - 1, -1, -1):  # the nearest claimed CIDR around it
        sup = prefix.supernet(new_prefix=length)
        holder = _holder(view, sup)
        if holder:
            return {"state": "inside", "node": holder, "cidr": str(sup),
                    "reason": f"no Node holds it; it is more specific than {holder}'s PodCIDR {sup} (a hijack?)"}
    inner = sorted((c for d in (view.owners, view.disputed, view.unusable_at) for c in d
                    if c.version == prefix.version and c.subnet_of(prefix)), key=net_key)
    if inner:
        shown = ", ".join(f"{c} ({_holder(view, c)})" for c in inner[:4]) + (", ..." if len(inner) > 4 else "")
        return {"state": "covers", "node": None, "cidr": None, "covers": len(inner),
                "reason": f"no Node holds it; it covers {len(inner)} PodCIDR(s): {shown}"}
    return {"state": "none", "node": None, "cidr": None, "reason": "no Node holds it"}


def _holder(view: NodeView, cidr: IPNetwork) -> str | None:
    if cidr in view.owners:
        return view.owners[cidr].node
    if cidr in view.disputed:
        return " and ".join(view.disputed[cidr])
    if cidr in view.unusable_at:
        return view.unusable_at[cidr][0]
    return None


def _path(sp: Speaker, path: Path, reason: Reason | None, policy: Policy) -> dict:
    peer = sp.source.peer(path.peer)  # None in direct mode: the path's "peer" is the Node
    return {"peer": path.peer, "nextHop": str(path.next_hop), "asPath": list(path.as_path), "stale": path.stale,
            "peerState": (peer.state if peer else SessionState.IDLE).value, "peerSince": peer.since if peer else None,
            "verdict": "accepted" if reason is None else "rejected",
            "reason": None if reason is None else reason.value,
            "why": _accepted(sp, path, policy) if reason is None else why(sp, path, reason, policy)}


def _accepted(sp: Speaker, path: Path, policy: Policy) -> str:
    owner = sp.view.owners.get(path.prefix)
    node = owner.node if owner else "?"
    if not policy.strict_next_hop:
        return f"{path.prefix} is {node}'s PodCIDR (next hop not checked: strictNextHop is off)"
    return f"{path.prefix} is {node}'s PodCIDR and {path.next_hop} is its InternalIP"


def why(sp: Speaker, path: Path, reason: Reason, policy: Policy) -> str:
    """The policy's reason for refusing `path`, as a sentence naming what it collided with."""
    prefix, hop = path.prefix, path.next_hop
    if (text := why_prefix(prefix, reason, policy)) is not None:
        return text
    if reason is Reason.OWN_CIDR:
        return f"{prefix} overlaps this node's own PodCIDR {_hits(prefix, policy.own)}"
    if reason is Reason.CONNECTED:
        return f"{prefix} overlaps {_hits(prefix, policy.connected)}, a subnet connected to this node"
    if reason is Reason.LINK_LOCAL_NEXT_HOP:
        return f"next hop {hop} is link-local"
    owner = _owner(sp.view, prefix)
    if reason is Reason.NEXT_HOP_MISMATCH:
        owned = sp.view.owners.get(prefix)
        ips = ", ".join(str(a) for a in owned.addresses) if owned else "?"
        return f"next hop {hop} is not {owner['node']}'s InternalIP ({ips})"
    if reason is Reason.NO_SUCH_NODE and owner["state"] == "inside":
        return f"{prefix} is more specific than {owner['node']}'s PodCIDR {owner['cidr']}; no Node holds it (a hijack?)"
    return owner["reason"]  # disputed, unusable, or no Node at all


def why_prefix(prefix: IPNetwork, reason: Reason, policy: Policy) -> str | None:
    """The sentence for a reason that depends on the prefix alone (reconciler.policy.PERMANENT);
    None for the others."""
    if reason is Reason.DEFAULT_ROUTE:
        return "a default route is never installed"
    if reason is Reason.SERVICE_RANGE:
        return f"{prefix} overlaps the service range {_hits(prefix, policy.service)}"
    if reason is Reason.SERVICE_ADDRESS:
        return (f"{prefix} overlaps the Service address range {_hits(prefix, policy.service_ranges)} (a LoadBalancer "
                "pool or allowed ExternalIP range): nodes announce Service addresses, they never install them from a peer")
    if reason is Reason.OUTSIDE_CLUSTER:
        mine = [c for c in policy.cluster if c.version == prefix.version]
        if not mine:
            return f"{prefix} is outside the cluster CIDRs (none of IPv{prefix.version} is configured)"
        return f"{prefix} is outside the cluster CIDRs ({', '.join(map(str, sorted(mine, key=net_key)))})"
    return None


def _hits(prefix: IPNetwork, nets: frozenset[IPNetwork]) -> str:
    hit = sorted((n for n in nets if n.version == prefix.version and n.overlaps(prefix)), key=net_key)
    return ", ".join(map(str, hit)) or "?"


def _kernel(sp: Speaker, rec: PrefixReport, routes: list[KernelRoute] | None, error: str | None) -> dict:
    metric = rec.policy.metric
    protocol = sp.cfg.route_protocol
    if routes is not None:
        held = [_held(r.protocol == protocol, r.protocol, r.metric, r.gateways) for r in routes]
    else:  # the model: our routes at our metric; of foreign ones only where they sit
        ours = rec.installed
        held = [_held(True, protocol, metric, ours.gateways)] if ours is not None else []
        held += [_held(False, None, m, None) for m in rec.foreign_metrics]
    held.sort(key=lambda h: (h["metric"], h["owner"] != "podbgp"))
    doc = {"source": "netlink" if routes is not None else "model", "table": sp.cfg.route_table,
           "protocol": protocol, "metric": metric, "routes": held,
           "blocked": rec.blocked, "failed": rec.failed, "pending": rec.pending,
           "lastReconcile": rec.last_pass}
    if error:
        doc["error"] = error
    return doc


def _held(ours: bool, protocol: int | None, metric: int, gateways) -> dict:
    """One route of the table at the prefix; the model knows a foreign route's key, not its
    protocol or next hops (None)."""
    name = "podbgp" if ours else PROTOCOLS.get(protocol) if protocol is not None else None
    return {"owner": "podbgp" if ours else "foreign", "protocol": protocol, "protocolName": name,
            "metric": metric, "via": None if gateways is None else [str(g) for g in gateways]}


def _verdict(rec: PrefixReport, doc: dict) -> tuple[str, str]:
    """(verdict, one-line summary): own, installed, blocked, failed, pending, rejected, absent."""
    k, want, owner = doc["kernel"], doc["desired"], doc["owner"]
    ours = next((h for h in k["routes"] if h["owner"] == "podbgp" and h["metric"] == k["metric"]), None)
    foreign = [h for h in k["routes"] if h["owner"] == "foreign"]
    in_way = next((h for h in foreign if h["metric"] == k["metric"]), None)
    if doc["own"]["own"]:
        state = "announced" if doc["own"]["announced"] else "not announced (yet)"
        return "own", f"this node's own PodCIDR: {state}, never installed"
    if want is not None:
        via = ", ".join(want["via"]) + (" (ECMP)" if want["ecmp"] else "")
        if not rec.synced:
            return "pending", f"wanted via {via}; waiting for the first full list of Nodes"
        if in_way is not None or k["blocked"]:
            return "blocked", f"blocked by a foreign route{_proto(in_way)} at metric {k['metric']}"
        if ours is not None and sorted(ours["via"]) == sorted(want["via"]):
            shadow = next((h for h in foreign if h["metric"] < k["metric"]), None)
            tail = f"; but a foreign route{_proto(shadow)} at metric {shadow['metric']} wins" if shadow else ""
            return "installed", f"installed via {via}{tail}"
        if k["failed"]:
            return "failed", f"wanted via {via}; the kernel refused it, retrying"
        have = f"the kernel still has via {', '.join(ours['via'])}" if ours else "not in the kernel yet"
        return "pending", f"wanted via {via}; {have}"
    stays = ""
    if ours is not None:
        stays = ("; our route is still in the kernel, to be removed" if rec.converged
                 else "; our old route stays until the RIB has converged")
    refused = [p for p in doc["paths"] if p["verdict"] == "rejected"]
    if refused:
        more = f" (and {len(refused) - 1} more path(s))" if len(refused) > 1 else ""
        return "rejected", f"rejected: {refused[0]['why']}{more}{stays}"
    if (good := doc["refused"]) is not None and good["peers"]:  # refused whatever the Nodes say: counted
        counts = "; ".join(f"{p['paths']:,} such path{'s' * (p['paths'] != 1)} from {p['peer']}" for p in good["peers"])
        return "rejected", f"rejected: {good['why']}; {counts}{stays}"
    node = f" ({owner['node']}'s PodCIDR)" if owner["state"] == "owned" else f"; {owner['reason']}"
    dead = "".join(f"; the path from {b['peer']} was dropped when its BFD session went down" for b in doc.get("bfd") or ())
    return "absent", f"no peer offers it{node}{dead}{stays}"


def _proto(held: dict | None) -> str:
    return f" (proto {_proto_name(held)})" if held and held["protocol"] is not None else ""


def _proto_name(held: dict) -> str:
    if held["protocol"] is None:
        return "?"
    return held["protocolName"] if held["owner"] == "foreign" and held["protocolName"] else str(held["protocol"])


# ---- the shell: a fresh kernel read, the HTTP answer, the CLI's rendering --------------------

async def respond(sp: Speaker, query: str) -> tuple[str, str, bytes]:
    """The answer to GET /explain?prefix=CIDR: the document, or a 400 with one line."""
    values = urllib.parse.parse_qs(query).get("prefix", [])
    try:
        if len(values) != 1:
            raise BadPrefix("explain: give exactly one prefix: /explain?prefix=CIDR")
        prefix = parse_prefix(values[0])
    except BadPrefix as exc:
        return "400 Bad Request", "text/plain", f"{exc}\n".encode()
    try:  # the routes at the prefix now, protocols and next hops included; else the model
        routes, error = await asyncio.to_thread(sp.kernel.routes_at, prefix), None
    except ReconcilerError as exc:
        log.warning("explain.kernel.failed prefix=%s error=%s", prefix, exc)
        routes, error = None, str(exc)
    return "200 OK", "application/json", json.dumps(explain(sp, prefix, routes, error), indent=1).encode()


def render(doc: dict, now: float | None = None) -> str:
    """A few aligned lines, the verdict first."""
    now = time.time() if now is None else now
    rows = [("owner", doc["owner"]["reason"] + _ips(doc["owner"]))]
    for r in doc.get("services") or ():
        state = "announced" if r.get("announced") else "not announced"
        rows.append(("service", f"{', '.join(r.get('services') or ()) or '-'} {r.get('kind', '')}: {state}, {r.get('why', '')}"))
    if doc["own"]["own"]:
        rows.append(("own", "announced" if doc["own"]["announced"] else "not announced"))
    for p in doc["paths"] or [None]:
        if p is None:
            rows.append(("path", "none"))
            continue
        up = f" ({p['peerState']} for {_span(p['peerSince'], now)})" if p["peerSince"] else ""
        stale = " stale" if p["stale"] else ""
        verdict = "accepted" if p["verdict"] == "accepted" else f"rejected, {p['reason']}: {p['why']}"
        rows.append(("path", f"from {p['peer']}{up} via {p['nextHop']}{stale}: {verdict}"))
    for b in doc.get("bfd") or ():
        rows.append(("bfd", f"the path from {b['peer']} was dropped {_span(b['at'], now)} ago: BFD down "
                            f"({b['diagnostics']}); its session was torn down"))
    good = doc.get("refused")
    for p in (good or {}).get("peers", ()):
        rows.append(("refused", f"from {p['peer']}: {p['paths']:,} paths {good['reason']} this session "
                                "(counted, not stored)"))
    want = doc["desired"]
    rows.append(("desired", f"via {', '.join(want['via'])} metric {want['metric']}" if want else "none"))
    k = doc["kernel"]
    for h in k["routes"] or [None]:
        if h is None:
            rows.append(("kernel", f"nothing at {doc['prefix']} in table {k['table']}"))
            continue
        via = f" via {', '.join(h['via'])}" if h["via"] else ""
        note = ""
        if h["owner"] == "foreign" and doc["desired"] and h["metric"] <= k["metric"]:
            note = " (holds our key)" if h["metric"] == k["metric"] else " (preferred over ours)"
        rows.append(("kernel", f"{h['owner']}, proto {_proto_name(h)}{via} metric {h['metric']}{note}"))
    read = "read from netlink just now" if k["source"] == "netlink" else "the reconciler's model"
    error = f" {k['error']}" if "error" in k else ""
    rows.append(("", f"({read}; last reconcile {_ago(k['lastReconcile'], now)}){error}"))
    out = [f"{doc['prefix']}: {doc['summary']}"]
    label = ""
    for name, text in rows:
        out.append(f"  {'' if name == label else name:<8} {text}")
        label = name or label
    return "\n".join(out)


def _ips(owner: dict) -> str:
    return f" (InternalIP {', '.join(owner['internalIPs'])})" if owner.get("internalIPs") else ""


def _ago(t: float | None, now: float) -> str:
    return "never" if t is None else f"{_span(t, now)} ago"


def _span(t: float, now: float) -> str:
    s = max(0, int(now - t))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"
