"""The lab's kube-proxy: Services and EndpointSlices rendered as nftables rules in every node.

There is no kube-proxy on the lab's machines. One process per lab lists and watches Services and
EndpointSlices from the lab API server and gives each node's network namespace a table of its
own, `table inet podbgp-proxy`, replaced in one `nft -f -` transaction whenever its text changes
(changes are debounced for 20 ms). The rules follow kube-proxy's:

- each Service IP (clusterIPs, externalIPs, status.loadBalancer.ingress ips) and port is DNATed to
  one of its endpoints at random (`numgen random mod N`), the endpoint's port being the
  EndpointSlice port of the Service port's name;
- endpoints used: ready ones (ready true or unset, not terminating); if none, the serving and
  terminating ones;
- externalTrafficPolicy Local (external IPs, LoadBalancer IPs): only endpoints on this node (same
  fallback), traffic dropped when there is none; traffic from Pods and from the node itself
  still goes to every endpoint;
- internalTrafficPolicy Local (cluster IPs): only endpoints on this node, dropped when none;
- traffic from outside the cluster CIDRs (and hairpin traffic) to a Cluster-policy Service is
  marked in the service chain and masqueraded in postrouting, so replies come back through the
  node that translated it;
- a Service port with no endpoints at all is rejected (filter hooks, forward and output).

render() is pure (unit tests in tests/unit/test_labproxy_rules.py); main() is the shell:
    python -m lab.proxy --server https://127.0.0.1:PORT --ca CA --token-file FILE \
        --node node1=NETNS ... [--cluster-cidr CIDR ...]
It prints `ready` once every node has its first table.
"""
from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import logging
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.client import HTTPSConnection
from urllib.parse import urlparse

log = logging.getLogger("lab.proxy")

TABLE = "podbgp-proxy"
MASQ_BIT = "0x00004000"
FAMILIES = {4: ("IPv4", "ip"), 6: ("IPv6", "ip6")}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# ---- values ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: str  # tcp | udp | sctp
    port: int


@dataclass(frozen=True, slots=True)
class Service:
    key: str
    cluster_ips: tuple[IPAddress, ...]
    external_ips: tuple[IPAddress, ...]  # spec.externalIPs and status.loadBalancer.ingress ips
    ports: tuple[ServicePort, ...]
    external_local: bool
    internal_local: bool


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: IPAddress
    port: int
    node: str
    ready: bool
    serving: bool
    terminating: bool


def _ip(text) -> IPAddress | None:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        return None


def parse_service(obj: dict) -> Service | None:
    """A Service as the proxy sees it; None for one with nothing to proxy (headless, ExternalName)."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return None
    cluster = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    external = list(spec.get("externalIPs") or []) + [i.get("ip") for i in ingress if i.get("ip")]
    ports = tuple(ServicePort(str(p.get("name") or ""), str(p.get("protocol") or "TCP").lower(), int(p["port"]))
                  for p in spec.get("ports") or [] if p.get("port"))
    return Service(
        key=f"{meta.get('namespace', 'default')}/{meta.get('name', '')}",
        cluster_ips=tuple(ip for ip in map(_ip, cluster) if ip is not None),
        external_ips=tuple(dict.fromkeys(ip for ip in map(_ip, external) if ip is not None)),
        ports=ports,
        external_local=spec.get("externalTrafficPolicy") == "Local",
        internal_local=spec.get("internalTrafficPolicy") == "Local")


def slice_endpoints(obj: dict, port: ServicePort) -> list[Endpoint]:
    """The endpoints of one EndpointSlice for one Service port (matched by name and protocol)."""
    if obj.get("addressType") not in ("IPv4", "IPv6"):
        return []
    target = next((int(p["port"]) for p in obj.get("ports") or []
                   if str(p.get("name") or "") == port.name and str(p.get("protocol") or "TCP").lower() == port.protocol
                   and p.get("port")), None)
    if target is None:
        return []
    out = []
    for ep in obj.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        ready = cond.get("ready") is not False
        serving = cond.get("serving") if cond.get("serving") is not None else ready
        for addr in ep.get("addresses") or []:
            ip = _ip(addr)
            if ip is not None:
                out.append(Endpoint(ip, target, str(ep.get("nodeName") or ""), ready, bool(serving),
                                    cond.get("terminating") is True))
    return out


def usable(endpoints: list[Endpoint]) -> list[Endpoint]:
    """kube-proxy's choice: the ready endpoints; if none, the serving and terminating ones."""
    ready = [e for e in endpoints if e.ready and not e.terminating]
    return ready or [e for e in endpoints if e.serving and e.terminating]


def service_of(obj: dict) -> str | None:
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get("kubernetes.io/service-name")
    return f"{meta.get('namespace', 'default')}/{name}" if name else None


# ---- rendering -------------------------------------------------------------------------------

def _chain_id(*parts: str) -> str:
    text = "_".join(parts)
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:80] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]


def _addr(ip: IPAddress, port: int) -> str:
    return f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"


class _Rules:
    """The chains of one table, collected while walking the Services, then printed sorted."""

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {}
        self.dispatch: list[tuple] = []  # (sort key, rule) of the services chain
        self.no_endpoints: list[tuple] = []

    def chain(self, name: str, rules: list[str]) -> str:
        self.chains[name] = rules
        return name

    def text(self) -> str:
        head = [
            f"table inet {TABLE} {{}}",
            f"delete table inet {TABLE}",
            f"table inet {TABLE} {{",
            "\tchain nat-prerouting {\n\t\ttype nat hook prerouting priority -100; policy accept;\n\t\tjump services\n\t}",
            "\tchain nat-output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}",
            ("\tchain nat-postrouting {\n\t\ttype nat hook postrouting priority 100; policy accept;\n"
             f"\t\tmeta mark & {MASQ_BIT} == 0 return\n\t\tmeta mark set meta mark ^ {MASQ_BIT}\n\t\tmasquerade fully-random\n\t}}"),
            "\tchain filter-forward {\n\t\ttype filter hook forward priority 0; policy accept;\n\t\tjump no-endpoints\n\t}",
            "\tchain filter-output {\n\t\ttype filter hook output priority 0; policy accept;\n\t\tjump no-endpoints\n\t}",
            f"\tchain mark-for-masquerade {{\n\t\tmeta mark set meta mark | {MASQ_BIT}\n\t}}",
        ]
        body = [_print_chain("services", [r for _, r in sorted(self.dispatch)]),
                _print_chain("no-endpoints", [r for _, r in sorted(self.no_endpoints)])]
        body += [_print_chain(name, rules) for name, rules in sorted(self.chains.items())]
        return "\n".join(head + body + ["}"]) + "\n"


def _print_chain(name: str, rules: list[str]) -> str:
    return "\tchain " + name + " {\n" + "".join(f"\t\t{r}\n" for r in rules) + "\t}"


def _set(items) -> str:
    return "{ " + ", ".join(str(i) for i in items) + " }"


def _endpoint_chain(rules: _Rules, base: str, ep: Endpoint, proto: str) -> str:
    fam = FAMILIES[ep.address.version][1]
    return rules.chain(f"ep-{base}-{_chain_id(str(ep.address), str(ep.port))[-8:]}", [
        f"{fam} saddr {ep.address} jump mark-for-masquerade",  # hairpin: a Pod reaching itself
        f"meta l4proto {proto} dnat {fam} to {_addr(ep.address, ep.port)}"])


def _balance(rules: _Rules, name: str, base: str, eps: list[Endpoint], proto: str) -> str | None:
    """A chain picking one of eps at random; None when eps is empty."""
    if not eps:
        return None
    targets = [_endpoint_chain(rules, base, ep, proto) for ep in eps]
    if len(targets) == 1:
        return rules.chain(name, [f"goto {targets[0]}"])
    vmap = _set(f"{i} : goto {t}" for i, t in enumerate(targets))
    return rules.chain(name, [f"numgen random mod {len(targets)} vmap {vmap}"])


def _port_rules(rules: _Rules, node: str, svc: Service, port: ServicePort, version: int,
                endpoints: list[Endpoint], cluster_cidrs: list) -> None:
    fam = FAMILIES[version][1]
    base = _chain_id(svc.key, port.name or str(port.port), port.protocol, str(version))
    everyone = usable(endpoints)
    local = usable([e for e in endpoints if e.node == node])
    all_chain = _balance(rules, f"svc-{base}", base, everyone, port.protocol)
    local_chain = _balance(rules, f"local-{base}", base, local, port.protocol)
    cidrs = [c for c in cluster_cidrs if c.version == version]
    from_outside = f"{fam} saddr != {_set(cidrs)} " if cidrs else ""
    match = f"meta l4proto {port.protocol} th dport {port.port}"

    def entry(ip: IPAddress, kind: str, rules_: list[str]) -> None:
        name = rules.chain(f"{kind}-{base}", rules_)
        rules.dispatch.append(((ip.version, int(ip), port.protocol, port.port, svc.key),
                               f"{fam} daddr {ip} {match} goto {name}"))

    if all_chain is None:  # nothing anywhere: refused, as kube-proxy does
        for ip in svc.cluster_ips + svc.external_ips:
            if ip.version == version:
                rules.no_endpoints.append(((ip.version, int(ip), port.protocol, port.port),
                                           f"{fam} daddr {ip} {match} reject"))
        return
    internal_target = (f"goto {local_chain}" if local_chain else "drop") if svc.internal_local else f"goto {all_chain}"
    for ip in svc.cluster_ips:
        if ip.version == version:
            entry(ip, "cip", [f"{from_outside}jump mark-for-masquerade", internal_target])
    if svc.external_local:
        ext = [f"{fam} saddr {_set(cidrs)} goto {all_chain}"] if cidrs else []  # Pods: every endpoint
        ext += ["fib saddr type local jump mark-for-masquerade", f"fib saddr type local goto {all_chain}",
                f"goto {local_chain}" if local_chain else "drop"]
    else:
        ext = [f"{from_outside}jump mark-for-masquerade", f"goto {all_chain}"]
    for ip in svc.external_ips:
        if ip.version == version:
            entry(ip, "ext", ext)


def render(node: str, services, slices, cluster_cidrs=()) -> str:
    """The nft script that replaces node's table: Services and EndpointSlices as API objects
    (dicts), cluster_cidrs the cluster's Pod ranges (traffic from elsewhere is masqueraded)."""
    cidrs = sorted((ipaddress.ip_network(str(c)) for c in cluster_cidrs), key=lambda n: (n.version, n))
    by_service: dict[str, list[dict]] = {}
    for obj in slices:
        key = service_of(obj)
        if key:
            by_service.setdefault(key, []).append(obj)
    rules = _Rules()
    parsed = sorted((s for s in map(parse_service, services) if s is not None), key=lambda s: s.key)
    for svc in parsed:
        own = sorted(by_service.get(svc.key, []), key=lambda o: (o.get("metadata") or {}).get("name", ""))
        for port in svc.ports:
            for version, (address_type, _) in FAMILIES.items():
                eps = {}
                for obj in own:
                    if obj.get("addressType") == address_type:
                        for ep in slice_endpoints(obj, port):
                            eps.setdefault((ep.address, ep.port), ep)
                _port_rules(rules, node, svc, port, version, [eps[k] for k in sorted(eps)], cidrs)
    return rules.text()


def delete_script() -> str:
    return f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"


# ---- the shell: list+watch, debounce, apply ---------------------------------------------------

class Api:
    """Plain HTTPS to the lab API server with a bearer token."""

    def __init__(self, server: str, ca: str, token: str) -> None:
        url = urlparse(server)
        self.host, self.port = url.hostname, url.port or 443
        self.ctx = ssl.create_default_context(cafile=ca)
        self.token = token

    def open(self, path: str, timeout: float):
        conn = HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)
        conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            body = resp.read()[:200]
            conn.close()
            raise OSError(f"GET {path}: {resp.status} {body!r}")
        return conn, resp


class Watcher(threading.Thread):
    """List, then watch, one resource; re-list after a failure or a 410. Objects by key in `objects`."""

    def __init__(self, api: Api, path: str, changed: threading.Event, lock: threading.Lock) -> None:
        super().__init__(daemon=True, name=f"watch {path}")
        self.api, self.path, self.changed, self.lock = api, path, changed, lock
        self.objects: dict[str, dict] = {}
        self.listed = threading.Event()  # set after the first list (or a first failure)

    @staticmethod
    def key(obj: dict) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}"

    def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                rv = self._list()
                backoff = 0.1
                self._watch(rv)
            except Exception as exc:  # noqa: BLE001 any failure: log, re-list after a pause
                log.warning("watch.failed path=%s error=%s", self.path, str(exc)[:200])
                self.listed.set()
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _list(self) -> str:
        conn, resp = self.api.open(self.path, timeout=10)
        try:
            doc = json.loads(resp.read())
        finally:
            conn.close()
        with self.lock:
            self.objects = {self.key(o): o for o in doc.get("items") or []}
        self.changed.set()
        self.listed.set()
        return str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, rv: str) -> None:
        while True:
            conn, resp = self.api.open(f"{self.path}?watch=1&allowWatchBookmarks=true&resourceVersion={rv}"
                                       "&timeoutSeconds=300", timeout=330)
            try:
                for line in resp:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    rv = self._apply(event) or rv
            finally:
                conn.close()

    def _apply(self, event: dict) -> str | None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise OSError(f"watch error: {obj.get('code')} {obj.get('message')}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            with self.lock:
                self.objects[self.key(obj)] = obj
            self.changed.set()
        elif kind == "DELETED":
            with self.lock:
                self.objects.pop(self.key(obj), None)
            self.changed.set()
        return rv


def nft_apply(netns: str, script: str) -> None:
    # nsenter: only the network namespace (ip netns exec also remounts /sys: half again slower)
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "nft", "-f", "-"], input=script, text=True,
                          check=False, capture_output=True, timeout=10)
    if proc.returncode != 0:
        raise OSError(f"nft -f in {netns}: {proc.stderr.strip()[:400]}")


def sync(nodes: dict[str, str], services: list[dict], slices: list[dict], cidrs, applied: dict[str, str]) -> bool:
    """Render every node's table and apply those that changed, all nodes at once; True when all are in place."""
    texts = {node: render(node, services, slices, cidrs) for node in sorted(nodes)}
    changed = [node for node, text in texts.items() if applied.get(node) != text]
    failed: dict[str, str] = {}

    def apply(node: str) -> None:
        try:
            nft_apply(nodes[node], texts[node])
        except (OSError, subprocess.SubprocessError) as exc:
            failed[node] = str(exc)

    threads = [threading.Thread(target=apply, args=(node,)) for node in changed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for node in changed:
        if node in failed:
            applied.pop(node, None)
            log.error("table.failed node=%s error=%s", node, failed[node])
        else:
            applied[node] = texts[node]
            log.info("table.replaced node=%s lines=%d", node, texts[node].count("\n"))
    return not failed


def run_proxy(api: Api, nodes: dict[str, str], cidrs, stop: threading.Event, debounce: float = 0.02) -> None:
    changed, lock = threading.Event(), threading.Lock()
    svc = Watcher(api, "/api/v1/services", changed, lock)
    eps = Watcher(api, "/apis/discovery.k8s.io/v1/endpointslices", changed, lock)
    svc.start()
    eps.start()
    svc.listed.wait(15)
    eps.listed.wait(15)
    applied: dict[str, str] = {}
    ready = False
    while not stop.is_set():
        changed.clear()
        with lock:
            services, slices = list(svc.objects.values()), list(eps.objects.values())
        ok = sync(nodes, services, slices, cidrs, applied)
        if not ready:
            print("ready", flush=True)
            ready = True
        if changed.wait(None if ok else 1.0) and not stop.is_set():
            stop.wait(debounce)  # let a burst of events land; one apply for all of them


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--node", action="append", default=[], metavar="NAME=NETNS", required=True)
    parser.add_argument("--cluster-cidr", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with open(args.token_file) as f:
        api = Api(args.server, args.ca, f.read().strip())
    nodes = dict(n.split("=", 1) for n in args.node)
    stop = threading.Event()

    def on_term(_sig, _frame) -> None:
        stop.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    try:
        run_proxy(api, nodes, args.cluster_cidr, stop)
    finally:
        for netns in nodes.values():
            try:
                nft_apply(netns, delete_script())
            except (OSError, subprocess.SubprocessError):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
