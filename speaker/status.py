"""The speaker's local endpoint: /status (JSON), /metrics (Prometheus text), /healthz, /readyz."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import urllib.request
from typing import Any

from bgp.types import SessionState
from reconciler.types import Reason

log = logging.getLogger(__name__)


def status_doc(sp: Any) -> dict:
    """Everything `podbgp status` shows, as plain JSON values (sorted, deterministic)."""
    ses, rec = sp.sessions, sp.reconciler
    peers = []
    for p in ses.peers:
        peers.append({
            "address": p.key, "asn": p.asn, "localAddress": str(p.local_address), "localAsn": p.local_asn,
            "state": ses.state.get(p.key, SessionState.IDLE).value, "since": ses.since.get(p.key),
            "reason": ses.reason.get(p.key, ""), "families": sorted(p.families),
            "endOfRib": sorted(ses.eor.get(p.key, ())), "paths": ses.rib.count(p.key),
        })
    errors = dict(sp.node_errors)
    for cidr, names in sp.view.disputed.items():
        errors[f"disputed:{cidr}"] = f"podCIDR {cidr} is claimed by overlapping nodes {', '.join(names)}; neither is trusted"
    for name, reason in sp.view.unusable.items():
        errors[f"unusable:{name}"] = reason
    return {
        "node": sp.cfg.node_name,
        "synced": sp.synced,
        "apiReachable": sp.api_up,
        "nodes": len(sp.view),
        "converged": ses.converged,
        "podCIDRSource": sp.own.source if sp.own else None,
        "peers": peers,
        "announced": sorted((str(a.prefix) for a in ses.announced), key=_net_key),
        "learned": sorted(({"prefix": str(x.prefix), "peer": x.peer, "nextHop": str(x.next_hop), "stale": x.stale}
                           for x in ses.rib.paths()), key=lambda d: (_net_key(d["prefix"]), d["peer"])),
        "installed": sorted(({"prefix": str(r.prefix), "via": [str(g) for g in r.gateways]}
                             for r in rec.installed()), key=lambda d: _net_key(d["prefix"])),
        "rejected": sorted(({"prefix": str(r.prefix), "peer": r.peer, "nextHop": str(r.next_hop),
                             "reason": r.reason.value} for r in rec.rejections()),
                           key=lambda d: (_net_key(d["prefix"]), d["peer"])),
        "rejectedByReason": {k.value: v for k, v in sorted(_by_reason(rec).items(), key=lambda kv: kv[0].value)},
        "blocked": sorted((str(p) for p in rec.blocked), key=_net_key),
        "nodeErrors": dict(sorted(errors.items())),
        "counters": dict(sorted(sp.counters.items())),
        "exabgpPid": ses.pid,
        "cniConf": sp.cni.status(),
        "networkCondition": sp.condition.status(),
        "lastReconcile": rec.last_pass,
    }


def _by_reason(rec: Any) -> dict:
    counts = {k: v for k, v in rec.rejected_count.items() if v > 0}
    if rec.blocked:
        counts[Reason.FOREIGN_ROUTE] = len(rec.blocked)
    return counts


def _net_key(text: str) -> tuple:
    n = ipaddress.ip_network(text)
    return (n.version, int(n.network_address), n.prefixlen)


def metrics_text(doc: dict) -> str:
    lines = [
        "# HELP podbgp_peer_up 1 if the BGP session is Established.",
        "# TYPE podbgp_peer_up gauge",
    ]
    for p in doc["peers"]:
        lines.append(f'podbgp_peer_up{{peer="{p["address"]}",asn="{p["asn"]}"}} {int(p["state"] == "up")}')
    lines += ["# TYPE podbgp_peer_received_paths gauge"]
    for p in doc["peers"]:
        lines.append(f'podbgp_peer_received_paths{{peer="{p["address"]}"}} {p["paths"]}')
    lines += [
        "# TYPE podbgp_announced_prefixes gauge", f"podbgp_announced_prefixes {len(doc['announced'])}",
        "# TYPE podbgp_installed_routes gauge", f"podbgp_installed_routes {len(doc['installed'])}",
        "# TYPE podbgp_converged gauge", f"podbgp_converged {int(doc['converged'])}",
        "# TYPE podbgp_api_reachable gauge", f"podbgp_api_reachable {int(doc['apiReachable'])}",
        "# HELP podbgp_rejected_routes Learned paths currently refused, by reason.",
        "# TYPE podbgp_rejected_routes gauge",
    ]
    for reason, n in doc["rejectedByReason"].items():
        lines.append(f'podbgp_rejected_routes{{reason="{reason}"}} {n}')
    lines += ["# TYPE podbgp_events_total counter"]
    for name, n in doc["counters"].items():
        lines.append(f'podbgp_events_total{{event="{name}"}} {n}')
    return "\n".join(lines) + "\n"


async def serve(sp: Any, address: str) -> asyncio.AbstractServer:
    host, _, port = address.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode(errors="replace").split()
            path = parts[1].split("?")[0] if len(parts) > 1 else "/"
            code, ctype, body = _respond(sp, path)
            data = body.encode()
            writer.write(f"HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                         "Connection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host.strip("[]"), int(port), reuse_address=True)


def _respond(sp: Any, path: str) -> tuple[str, str, str]:
    if path == "/status":
        return "200 OK", "application/json", json.dumps(status_doc(sp), indent=1)
    if path == "/metrics":
        return "200 OK", "text/plain; version=0.0.4", metrics_text(status_doc(sp))
    if path in ("/healthz", "/livez"):
        return "200 OK", "text/plain", "ok\n"
    if path == "/readyz":
        ready = sp.synced and SessionState.UP in sp.sessions.state.values()
        return ("200 OK" if ready else "503 Service Unavailable"), "text/plain", ("ok\n" if ready else "not ready\n")
    return "404 Not Found", "text/plain", "not found\n"


def fetch(address: str, path: str = "/status", timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as resp:
        return json.loads(resp.read())


def render_table(doc: dict) -> str:
    out = [f"node {doc['node']}  synced={doc['synced']} api={'up' if doc['apiReachable'] else 'down'} "
           f"converged={doc['converged']}  podCIDR source: {doc['podCIDRSource']}", "", "PEER            ASN      STATE  PATHS  EOR"]
    for p in doc["peers"]:
        out.append(f"{p['address']:<15} {p['asn']:<8} {p['state']:<6} {p['paths']:<6} {','.join(p['endOfRib']) or '-'}")
    out += ["", "ANNOUNCED"] + [f"  {a}" for a in doc["announced"]]
    out += ["", "INSTALLED"] + [f"  {r['prefix']} via {','.join(r['via'])}" for r in doc["installed"]]
    out += ["", "LEARNED"] + [f"  {x['prefix']} via {x['nextHop']} from {x['peer']}{' (stale)' if x['stale'] else ''}"
                              for x in doc["learned"]]
    out += ["", "REJECTED"] + [f"  {r['prefix']} via {r['nextHop']} from {r['peer']}: {r['reason']}" for r in doc["rejected"]]
    if doc["nodeErrors"]:
        out += ["", "NODE ERRORS"] + [f"  {v}" for v in doc["nodeErrors"].values()]
    return "\n".join(out)
