"""/metrics through prometheus_client: what a scrape carries, read from the speaker's state at
scrape time, served by the status endpoint on IPv4 and IPv6."""
import asyncio
import collections
import ipaddress as ia
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bgp.source import PeerStatus
from bgp.types import SessionState
from reconciler.report import ReconcilerCounts
from reconciler.types import Reason
from speaker import endpoint, status
from speaker.config import parse_address


class FakeSource:
    """A route source (bgp.source.RouteSource) with two peers whose state and path counts the test sets."""

    def __init__(self, paths):
        self.state, self.paths_of, self.converged = {}, paths, False

    def peers(self):
        return tuple(PeerStatus(key=k, address=ia.ip_address(k), asn=65000, local_address=ia.ip_address(k),
                                local_asn=65001, families=frozenset({"ipv4"}), state=self.state.get(k, SessionState.IDLE),
                                since=None, reason="", end_of_rib=frozenset(), paths=self.paths_of.get(k, 0))
                     for k in ("192.168.50.1", "fd00:50::1"))


class FakeReconciler:
    """What the collector reads of the reconciler: its counts, as the test sets them."""

    def __init__(self):
        self.installed, self.rejected = 0, collections.Counter()

    def counts(self):
        return ReconcilerCounts(installed=self.installed, rejected_by_reason=tuple(sorted(self.rejected.items())),
                                blocked=self.rejected[Reason.FOREIGN_ROUTE], failed=0, pending=0)


class FakeSpeaker:
    """The state the collector reads, and nothing else (tests/unit/test_app.py scrapes a real Speaker)."""

    def __init__(self):
        self.paths = {}
        self.source = FakeSource(self.paths)
        self.announced = self.own_announced = frozenset()
        self.services = None  # no services block configured: no Service metrics
        self.reconciler = FakeReconciler()
        self.api_up = False
        self.synced = False
        self.counters = collections.Counter()


def scrape(sp, registry=None):
    """{(name, sorted labels): value} of one scrape, parsed as Prometheus parses it."""
    code, ctype, body = endpoint.respond(sp, "/metrics", registry)
    assert code == "200 OK" and ctype == "text/plain; version=0.0.4; charset=utf-8"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_every_family_parses_with_its_names_and_labels():
    sp = FakeSpeaker()
    got = scrape(sp)
    v4, v6 = ("peer", "192.168.50.1"), ("peer", "fd00:50::1")
    assert got[("podbgp_peer_up", (("asn", "65000"), v4))] == 0
    assert got[("podbgp_peer_up", (("asn", "65000"), v6))] == 0
    assert got[("podbgp_peer_received_paths", (v4,))] == 0
    for name in ("podbgp_announced_prefixes", "podbgp_installed_routes", "podbgp_converged", "podbgp_api_reachable"):
        assert got[(name, ())] == 0
    assert {labels for name, labels in got if name == "podbgp_rejected_routes"} == {
        (("reason", r.value),) for r in Reason}  # every reason, zeros included
    assert not [name for name, _ in got if name.startswith("podbgp_events")]  # nothing counted yet


def test_process_and_platform_metrics_come_with_the_speakers():
    got = scrape(FakeSpeaker())
    names = {name for name, _ in got}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
            "process_max_fds", "process_start_time_seconds", "python_info"} <= names
    assert got[("process_resident_memory_bytes", ())] > 1 << 20 and got[("process_open_fds", ())] > 0


@pytest.mark.parametrize("attempt", [1, 2])  # the registry is scraped again and again: it must not drift
def test_values_follow_the_state_at_each_scrape(attempt):
    sp = FakeSpeaker()
    registry = status.metrics_registry(sp)
    for _ in range(attempt):
        scrape(sp, registry)
    sp.source.state["192.168.50.1"] = SessionState.UP
    sp.source.state["fd00:50::1"] = SessionState.CONNECTED
    sp.paths["192.168.50.1"] = 4999
    sp.announced = sp.own_announced = frozenset({"10.42.1.0/24", "fd00:42:0:1::/64"})
    sp.source.converged = True
    sp.api_up = True
    sp.reconciler.installed = 4998
    sp.reconciler.rejected.update({Reason.NEXT_HOP_MISMATCH: 2, Reason.DEFAULT_ROUTE: 1, Reason.FOREIGN_ROUTE: 1})
    sp.counters.update({"decode_errors": 3, "routes_replaced": 4998})
    got = scrape(sp, registry)
    assert got[("podbgp_peer_up", (("asn", "65000"), ("peer", "192.168.50.1")))] == 1
    assert got[("podbgp_peer_up", (("asn", "65000"), ("peer", "fd00:50::1")))] == 0
    assert got[("podbgp_peer_received_paths", (("peer", "192.168.50.1"),))] == 4999
    assert (got[("podbgp_announced_prefixes", ())], got[("podbgp_installed_routes", ())]) == (2, 4998)
    assert got[("podbgp_converged", ())] == 1 and got[("podbgp_api_reachable", ())] == 1
    rejected = {dict(labels)["reason"]: v for (name, labels), v in got.items() if name == "podbgp_rejected_routes"}
    assert rejected["next-hop-mismatch"] == 2 and rejected["default-route"] == 1
    assert rejected["foreign-route-present"] == 1 and rejected["own-cidr"] == 0
    assert got[("podbgp_events_total", (("event", "decode_errors"),))] == 3
    assert got[("podbgp_events_total", (("event", "routes_replaced"),))] == 4998
    sp.source.state["192.168.50.1"] = SessionState.IDLE  # the session drops
    sp.counters["decode_errors"] += 1
    got = scrape(sp, registry)
    assert got[("podbgp_peer_up", (("asn", "65000"), ("peer", "192.168.50.1")))] == 0
    assert got[("podbgp_events_total", (("event", "decode_errors"),))] == 4


def test_events_are_a_counter_named_with_total():
    sp = FakeSpeaker()
    sp.counters["resync"] = 1
    _, _, body = endpoint.respond(sp, "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["podbgp_events"].type == "counter"
    assert [s.name for s in families["podbgp_events"].samples] == ["podbgp_events_total"]
    assert b"# TYPE podbgp_events_total counter\n" in body


@pytest.mark.parametrize("text, want", [
    ("127.0.0.1:9469", ("127.0.0.1", 9469)),
    ("0.0.0.0:9469", ("0.0.0.0", 9469)),
    ("localhost:9469", ("localhost", 9469)),
    ("[::]:9469", ("::", 9469)),
    ("[::1]:9469", ("::1", 9469)),
    ("[fd00:50::11]:80", ("fd00:50::11", 80)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
])
def test_status_addresses(text, want):
    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["::1:9469", "fd00::1", "9469", ":9469", "[::1]", "[::1]9469", "[10.0.0.1]:80",
                                  "[::1:9469", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:65536", "127.0.0.1:-1"])
def test_status_addresses_refused_with_the_reason(text):
    with pytest.raises(ValueError, match="status address"):
        parse_address(text)


async def http_get(host, port, path, accept=None):
    reader, writer = await asyncio.open_connection(host, port)
    extra = f"Accept: {accept}\r\n" if accept else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers, body


def has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("address", [
    "127.0.0.1:0",
    pytest.param("[::1]:0", marks=pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")),
])
def test_the_endpoint_serves_metrics_on_ipv4_and_ipv6(address):
    async def body():
        sp = FakeSpeaker()
        server = await endpoint.serve_public(sp, address)
        try:
            host, port = server.sockets[0].getsockname()[:2]
            assert server.sockets[0].family == (socket.AF_INET6 if address.startswith("[") else socket.AF_INET)
            line, headers, text = await http_get(host, port, "/metrics")
            assert line == "HTTP/1.1 200 OK" and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert int(headers["Content-Length"]) == len(text)
            names = {f.name for f in text_string_to_metric_families(text.decode())}
            assert {"podbgp_peer_up", "process_resident_memory_bytes"} <= names
            sp.api_up = True  # the next scrape sees it
            _, _, text = await http_get(host, port, "/metrics")
            assert "podbgp_api_reachable 1.0\n" in text.decode()
            # a scraper that asks for OpenMetrics gets it
            line, headers, text = await http_get(host, port, "/metrics", accept="application/openmetrics-text; version=1.0.0")
            assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
            assert text.endswith(b"# EOF\n")
            assert (await http_get(host, port, "/healthz"))[2] == b"ok\n"
            assert (await http_get(host, port, "/readyz"))[0] == "HTTP/1.1 503 Service Unavailable"
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(body())
