"""The world bench.services builds, and its pure parts: the cluster's Services and EndpointSlices,
what node0 must announce for them, the endpoint changes of the churn, the matching of API writes
to UPDATEs and the verdicts against the targets; and the BGP receiver it runs in the ToR's
namespace (`python -m bench._services_world receive ...`: a passive BGP listener that prints each
prefix of each UPDATE with the monotonic time at which its bytes were read from the socket).

Layout (default 10,000 Services, 50,000 endpoints, 100 Nodes): every Service is a LoadBalancer of
no class (so podbgp's) with one status ingress IP from the pool 100.64.0.0/16 (ipMode VIP) and
allocateLoadBalancerNodePorts false (as BGP load-balancer setups at this size run: 10,000 Services
would need 10,000 node ports; the Local ones still take a health check node port each, so the API
runs with the node port range 30000-39999, kube-apiserver's --service-node-port-range), even
indexes externalTrafficPolicy Local, odd Cluster; each has one IPv4 EndpointSlice: every Service
gets one endpoint, the endpoints left over fill Services up to 100 each (one full slice), from
the first Service on, and the remainder to the next one. At 10,000/50,000: 404 Services of 100
endpoints (40,400), one of 5 and 9,595 of 1, 10,000 slices. Endpoint j of Service i
runs on node (i + j) % nodes, so every 100-endpoint Service has one endpoint on node0 (at 100
Nodes) and one small Service in `nodes` has its only endpoint there. node0 announces the IP of
every Cluster Service with a ready endpoint anywhere and of every Local one with a ready local
endpoint: 5,000 + 202 + 95 = 5,297 prefixes at the defaults.
"""
from __future__ import annotations

import ipaddress
import os
import random
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass

POOL = ipaddress.ip_network("100.64.0.0/16")
NAMESPACES = 20
SLICE_MAX = 100
NODE_PORTS = (30000, 39999)  # the API's node port range: a health check port per Local LoadBalancer Service
OWN_NODE = "node0"

# endpoint states (the conditions an endpoint controller writes)
READY, TERMINATING, NOT_READY = "ready", "terminating", "notready"
_CONDITIONS = {READY: {"ready": True, "serving": True, "terminating": False},
               TERMINATING: {"ready": False, "serving": True, "terminating": True},
               NOT_READY: {"ready": False, "serving": False, "terminating": False}}


@dataclass(frozen=True, slots=True)
class Svc:
    index: int
    namespace: str
    name: str
    ip: ipaddress.IPv4Address
    local: bool  # externalTrafficPolicy Local
    nodes: tuple[int, ...]  # the node index of each endpoint (empty: no slice)

    @property
    def prefix(self) -> str:
        return f"{self.ip}/32"

    @property
    def slice_name(self) -> str:
        return f"{self.name}-{_suffix(self.index)}"

    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/services/{self.name}"

    def slice_path(self) -> str:
        return f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices/{self.slice_name}"


def _suffix(i: int) -> str:
    rnd = random.Random(i)
    return "".join(rnd.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))


def endpoint_counts(services: int, endpoints: int) -> list[int]:
    """Endpoints per Service: one each, then full slices from the first Service on, the remainder
    on the next Service (no Service above SLICE_MAX)."""
    if services <= 0:
        return []
    if endpoints <= services:
        return [1] * endpoints + [0] * (services - endpoints)
    if endpoints > services * SLICE_MAX:
        raise ValueError(f"{endpoints} endpoints do not fit {services} slices of {SLICE_MAX}")
    counts = [1] * services
    left = endpoints - services
    i = 0
    while left >= SLICE_MAX - 1:
        counts[i] = SLICE_MAX
        left -= SLICE_MAX - 1
        i += 1
    if left:
        counts[i] += left  # the remainder: one partial slice on the next Service
    return counts


def layout(services: int, endpoints: int, nodes: int) -> list[Svc]:
    if services > POOL.num_addresses - 2:
        raise ValueError(f"{services} Services do not fit the pool {POOL}")
    out = []
    for i, n in enumerate(endpoint_counts(services, endpoints)):
        out.append(Svc(i, f"bench-{i % NAMESPACES:02d}", f"svc-{i:05d}", POOL.network_address + 1 + i,
                       i % 2 == 0, tuple((i + j) % nodes for j in range(n))))
    return out


# ---- the objects ----------------------------------------------------------------------------

def service_object(s: Svc) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": s.name, "namespace": s.namespace,
                         "labels": {"app.kubernetes.io/name": s.name, "tier": "web" if s.index % 3 else "api"}},
            "spec": {"type": "LoadBalancer", "selector": {"app.kubernetes.io/name": s.name},
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                     "externalTrafficPolicy": "Local" if s.local else "Cluster",
                     "allocateLoadBalancerNodePorts": False,
                     "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "sessionAffinity": "None"}}


def status_patch(s: Svc) -> dict:
    return {"status": {"loadBalancer": {"ingress": [{"ip": str(s.ip), "ipMode": "VIP"}]}}}


def pod_ip(node: int, s: Svc, j: int) -> str:
    return f"10.{128 + (node >> 8)}.{node & 255}.{2 + (s.index * 7 + j) % 250}"


def slice_object(s: Svc, states: list[str]) -> dict:
    eps = [{"addresses": [pod_ip(n, s, j)], "conditions": dict(_CONDITIONS[states[j]]), "nodeName": f"node{n}",
            "zone": f"zone-{n % 3}", "targetRef": {"kind": "Pod", "namespace": s.namespace, "name": f"{s.name}-{j}"}}
           for j, n in enumerate(s.nodes)]
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": s.slice_name, "namespace": s.namespace,
                         "labels": {"kubernetes.io/service-name": s.name,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4", "ports": [{"name": "http", "protocol": "TCP", "port": 8080}], "endpoints": eps}


# ---- what node0 must announce ------------------------------------------------------------------

class Model:
    """The endpoints' states and the announcement rule of issue 13 for node0 (eligible)."""

    def __init__(self, svcs: list[Svc]) -> None:
        self.svcs = svcs
        self.states = [[READY] * len(s.nodes) for s in svcs]

    def announced(self, i: int) -> bool:
        s, st = self.svcs[i], self.states[i]
        if s.local:
            return any(x == READY and n == 0 for x, n in zip(st, s.nodes))
        return READY in st

    def expected(self) -> set[str]:
        return {s.prefix for s in self.svcs if self.announced(s.index)}


@dataclass(frozen=True, slots=True)
class Change:
    svc: int
    endpoint: int
    state: str
    flips: str | None  # "A" (announce) or "W" (withdraw) of the Service's prefix, None: no change for node0


class Churn:
    """Endpoint condition flips: a share `change_share` that change what node0 announces (the
    deciding endpoint of a Service with one local endpoint, or of a Service with one endpoint),
    the rest flip a non-local endpoint of a 100-endpoint Service (never a change for node0).
    A Service whose announcement flips is not picked again for `quiet_s`, so each flip is one
    UPDATE that can be matched to its write."""

    def __init__(self, model: Model, seed: int = 7, change_share: float = 0.1, quiet_s: float = 2.0) -> None:
        self.model, self.rnd, self.share, self.quiet = model, random.Random(seed), change_share, quiet_s
        svcs = model.svcs
        self.big = [s.index for s in svcs if len(s.nodes) == SLICE_MAX]
        deciders = [s.index for s in svcs if self.decider(s.index) is not None]
        # half of the flips on Local Services (the last local endpoint), half on Cluster ones (the only one)
        self.deciders = [d for d in ([i for i in deciders if svcs[i].local], [i for i in deciders if not svcs[i].local]) if d]
        self.last: dict[int, float] = {}
        self.away: list[int] = []  # Services the churn withdrew, oldest first

    def decider(self, i: int) -> int | None:
        """The one endpoint whose state decides node0's announcement of Service i, if there is one."""
        s = self.model.svcs[i]
        cands = [j for j, n in enumerate(s.nodes) if n == 0] if s.local else list(range(len(s.nodes)))
        return cands[0] if len(cands) == 1 else None

    def flip_decider(self, i: int) -> Change:
        j = self.decider(i)
        before = self.model.announced(i)
        state = TERMINATING if self.model.states[i][j] == READY else READY
        return self._apply(i, j, state, before)

    def _apply(self, i: int, j: int, state: str, before: bool) -> Change:
        self.model.states[i][j] = state
        after = self.model.announced(i)
        return Change(i, j, state, None if after == before else ("A" if after else "W"))

    def next(self, now: float) -> Change:
        if self.deciders and self.rnd.random() < self.share:
            if self.away and now - self.last[self.away[0]] >= self.quiet and self.rnd.random() < 0.5:
                i = self.away.pop(0)  # bring back the oldest withdrawn: the world stays near its start
                self.last[i] = now
                return self.flip_decider(i)
            for _ in range(50):
                i = self.rnd.choice(self.rnd.choice(self.deciders))
                if now - self.last.get(i, -1e9) >= self.quiet and i not in self.away:
                    self.last[i] = now
                    ch = self.flip_decider(i)
                    if ch.flips == "W":
                        self.away.append(i)
                    return ch
        i = self.rnd.choice(self.big)
        s = self.model.svcs[i]
        j = self.rnd.choice([k for k, n in enumerate(s.nodes) if n != 0])
        state = NOT_READY if self.model.states[i][j] == READY else READY
        return self._apply(i, j, state, self.model.announced(i))


# ---- matching writes to UPDATEs; statistics; verdicts ------------------------------------------

def match(writes: list[tuple[str, str, float]], events: list[tuple[float, str, str]]) -> list[float | None]:
    """Milliseconds from each write (prefix, "A"|"W", time of the API's response) to the UPDATE
    that carried it: the k-th flip of a prefix is paired with the k-th event of that prefix of the
    same kind taken in order (None: none came). Events are (time read, kind, prefix)."""
    queues: dict[tuple[str, str], list[float]] = {}
    for t, kind, prefix in sorted(events):
        queues.setdefault((prefix, kind), []).append(t)
    used: dict[tuple[str, str], int] = {}
    out: list[float | None] = []
    for prefix, kind, t in writes:
        key = (prefix, kind)
        k = used.get(key, 0)
        q = queues.get(key, [])
        used[key] = k + 1
        out.append(round((q[k] - t) * 1000, 2) if k < len(q) else None)
    return out


def stats(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0, "median": None, "p95": None, "max": None}
    s = sorted(xs)
    p95 = s[min(len(s) - 1, max(0, -(-95 * len(s) // 100) - 1))]  # nearest rank
    mid = len(s) // 2
    med = s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
    return {"n": len(s), "median": round(med, 2), "p95": round(p95, 2), "max": round(s[-1], 2)}


TARGETS = {"cpu_pct": 5.0, "change_to_wire_ms": 100.0, "memory_added_mib": 30.0}


def verdicts(r: dict) -> dict[str, dict]:
    """pass/fail of each target, from the bench's result (a missing number fails)."""
    def one(value, limit) -> dict:
        return {"value": value, "target": limit, "pass": value is not None and value <= limit}
    lat = r.get("change_to_wire_ms", {})
    worst = max((x for x in (lat.get("p95"), lat.get("max")) if x is not None), default=None)
    return {"speaker_cpu_pct_under_churn": one(r.get("churn", {}).get("speaker_cpu_pct"), TARGETS["cpu_pct"]),
            "change_to_wire_ms_p95": one(lat.get("p95"), TARGETS["change_to_wire_ms"]),
            "change_to_wire_ms_max": one(worst, TARGETS["change_to_wire_ms"]),
            "memory_added_by_services_mib": one(r.get("memory", {}).get("speaker_added_mib"), TARGETS["memory_added_mib"]),
            "all_announced": {"value": r.get("start", {}).get("announced"), "target": r.get("start", {}).get("expected"),
                              "pass": bool(r.get("start", {}).get("complete"))}}


def profile_top(lines, top: int = 40) -> dict:
    """py-spy's raw (collapsed) output -> samples, and the functions most often on the stack
    (inclusive, counted once per sample) and at its top (self). A frame is `name (file:line)`;
    the line number is dropped so a function is one entry."""
    incl: dict[str, int] = {}
    self_: dict[str, int] = {}
    total = 0
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f for f in stack.split(";")]
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
        self_[frames[-1]] = self_.get(frames[-1], 0) + n
    def order(d: dict[str, int]) -> list[tuple[str, int]]:
        return sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {"samples": total, "inclusive": order(incl), "self": order(self_)}


# ---- the BGP receiver --------------------------------------------------------------------------

BGP_OPEN, BGP_UPDATE, BGP_NOTIFICATION, BGP_KEEPALIVE = 1, 2, 3, 4
_MARKER = b"\xff" * 16


def bgp_message(kind: int, body: bytes = b"") -> bytes:
    return _MARKER + struct.pack("!HB", 19 + len(body), kind) + body


def open_message(asn: int, router_id: str, hold: int = 9) -> bytes:
    caps = b""
    for afi in (1, 2):  # multiprotocol IPv4 and IPv6 unicast
        caps += struct.pack("!BBHBB", 1, 4, afi, 0, 1)
    caps += struct.pack("!BBI", 65, 4, asn)  # four-octet AS
    caps += struct.pack("!BB", 2, 0)  # route refresh
    params = struct.pack("!BB", 2, len(caps)) + caps
    as2 = asn if asn < 65536 else 23456
    return bgp_message(BGP_OPEN, struct.pack("!BHH4sB", 4, as2, hold, socket.inet_aton(router_id), len(params)) + params)


def open_families(body: bytes) -> set[int]:
    """The AFIs of the unicast multiprotocol capabilities in an OPEN body ({1} if it has none)."""
    afis: set[int] = set()
    plen = body[9]
    off, end = 10, 10 + plen
    while off + 2 <= end:
        ptype, length = body[off], body[off + 1]
        val = body[off + 2: off + 2 + length]
        off += 2 + length
        if ptype != 2:
            continue
        k = 0
        while k + 2 <= len(val):
            code, clen = val[k], val[k + 1]
            if code == 1 and clen == 4 and val[k + 5] == 1:
                afis.add(struct.unpack_from("!H", val, k + 2)[0])
            k += 2 + clen
    return afis or {1}


def eor(afi: int) -> bytes:
    if afi == 1:
        return bgp_message(BGP_UPDATE, b"\x00\x00\x00\x00")
    attr = struct.pack("!BBBHB", 0x80, 15, 3, afi, 1)
    return bgp_message(BGP_UPDATE, b"\x00\x00" + struct.pack("!H", len(attr)) + attr)


def _prefixes(data: bytes, afi: int) -> list[str]:
    out, off = [], 0
    size = 4 if afi == 1 else 16
    while off < len(data):
        plen = data[off]
        n = (plen + 7) // 8
        raw = data[off + 1: off + 1 + n] + b"\x00" * (size - n)
        out.append(f"{ipaddress.ip_address(raw)}/{plen}")
        off += 1 + n
    return out


def parse_update(body: bytes) -> tuple[list[str], list[str]]:
    """(announced, withdrawn) prefixes of one UPDATE body (no ADD-PATH)."""
    wlen = struct.unpack_from("!H", body, 0)[0]
    withdrawn = _prefixes(body[2: 2 + wlen], 1)
    off = 2 + wlen
    alen = struct.unpack_from("!H", body, off)[0]
    off += 2
    end = off + alen
    announced: list[str] = []
    while off < end:
        flags, kind = body[off], body[off + 1]
        if flags & 0x10:
            length = struct.unpack_from("!H", body, off + 2)[0]
            off += 4
        else:
            length = body[off + 2]
            off += 3
        val = body[off: off + length]
        off += length
        if kind == 14:  # MP_REACH_NLRI
            afi, _safi, nhl = struct.unpack_from("!HBB", val, 0)
            announced += _prefixes(val[4 + nhl + 1:], afi)
        elif kind == 15:  # MP_UNREACH_NLRI
            afi = struct.unpack_from("!H", val, 0)[0]
            withdrawn += _prefixes(val[3:], afi)
    announced += _prefixes(body[end:], 1)
    return announced, withdrawn


def split_messages(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete messages at the front of buf (removed from it): (type, body)."""
    out = []
    while len(buf) >= 19:
        length, kind = struct.unpack_from("!HB", buf, 16)
        if length < 19 or buf[:16] != _MARKER:
            raise ValueError("not a BGP stream")
        if len(buf) < length:
            break
        out.append((kind, bytes(buf[19:length])))
        del buf[:length]
    return out


def receive(listen: str, asn: int, out=sys.stdout, stop_after: float | None = None) -> None:
    """Accept BGP sessions on listen:179 and print `TIME A|W PREFIX` per prefix, `TIME UP PEER`,
    `TIME DOWN PEER WHY`; TIME is time.monotonic() right after the bytes were read."""
    ls = socket.socket(socket.AF_INET6 if ":" in listen else socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((listen, 179))
    ls.listen(8)
    conns: dict[socket.socket, dict] = {}
    start = time.monotonic()
    next_ka = start + 3.0
    print(f"{start:.6f} LISTEN {listen}", file=out, flush=True)
    while stop_after is None or time.monotonic() - start < stop_after:
        ready, _, _ = select.select([ls, *conns], [], [], 1.0)
        now = time.monotonic()
        lines = []
        for s in ready:
            if s is ls:
                c, addr = ls.accept()
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns[c] = {"peer": addr[0], "buf": bytearray(), "up": False}
                c.sendall(open_message(asn, "172.20.0.1" if ":" in listen else listen))
                continue
            st = conns[s]
            try:
                data = s.recv(1 << 20)
            except OSError as exc:
                data, why = b"", str(exc)
            else:
                why = "closed"
            t = time.monotonic()
            if not data:
                lines.append(f"{t:.6f} DOWN {st['peer']} {why}")
                del conns[s]
                s.close()
                continue
            st["buf"] += data
            try:
                msgs = split_messages(st["buf"])
            except ValueError as exc:
                lines.append(f"{t:.6f} DOWN {st['peer']} {exc}")
                del conns[s]
                s.close()
                continue
            for kind, body in msgs:
                if kind == BGP_OPEN:
                    st["afis"] = open_families(body)
                    s.sendall(bgp_message(BGP_KEEPALIVE))
                elif kind == BGP_KEEPALIVE and not st["up"]:
                    st["up"] = True  # End-of-RIB only for the families both sides have (another is an error)
                    s.sendall(b"".join(eor(a) for a in sorted(st.get("afis", {1}) & {1, 2})))
                    lines.append(f"{t:.6f} UP {st['peer']}")
                elif kind == BGP_UPDATE:
                    a, wd = parse_update(body)
                    lines += [f"{t:.6f} W {p}" for p in wd] + [f"{t:.6f} A {p}" for p in a]
                elif kind == BGP_NOTIFICATION:
                    lines.append(f"{t:.6f} NOTIFICATION {st['peer']} {body[:2].hex()}")
        if now >= next_ka:
            next_ka = now + 3.0
            for c in list(conns):
                try:
                    c.sendall(bgp_message(BGP_KEEPALIVE))
                except OSError:
                    pass
        if lines:
            out.write("\n".join(lines) + "\n")
            out.flush()


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "receive":
        print("usage: python -m bench._services_world receive LISTEN_ADDRESS ASN", file=sys.stderr)
        return 2
    try:
        receive(argv[1], int(argv[2]))
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(_main(sys.argv[1:]))
