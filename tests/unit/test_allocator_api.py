"""speaker.lbipam.AllocatorRunner: election + allocator + writes. First against an in-memory API
(fast, every failure path), then against the lab API server in-process with the real KubeClient,
the real Services watch (speaker.listwatch + speaker.services.parse_service) and two speakers:
one leads and allocates; it stops; the other takes the Lease and allocates the next Service; no IP
is handed out twice."""
import copy
import dataclasses
import ipaddress
import threading

import pytest

from speaker.election import Timings
from speaker.kubeclient import KubeError
from speaker.lbipam import AllocatorRunner, event_body, ingress_patch, status_path
from speaker.allocator import Event
from speaker.service_config import Pool, ServicesConfig
from tests.unit.test_allocator import svc
from tests.waiting import poll

FAST = Timings(duration=1.5, renew_deadline=1.0, renew_interval=0.2, retry_interval=0.1)
CFG = ServicesConfig(pools=(Pool("default", (ipaddress.ip_network("203.0.113.0/29"),)),), allocate=True)


def test_wire_formats():
    assert status_path("web/front") == "/api/v1/namespaces/web/services/front/status"
    assert ingress_patch([ipaddress.ip_address("203.0.113.1")]) == \
        {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1", "ipMode": "VIP"}]}}}
    assert ingress_patch([]) == {"status": {"loadBalancer": {"ingress": None}}}
    body = event_body(Event("web/front", "PoolExhausted", "pool exhausted: no free IPv4 address"), "node1",
                      now="2026-12-03T15:00:00.123456Z")
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Service", "namespace": "web", "name": "front"}
    assert (body["type"], body["reason"], body["source"]) == ("Warning", "PoolExhausted",
                                                              {"component": "podbgp", "host": "node1"})
    assert body["metadata"]["namespace"] == "web" and body["metadata"]["name"].startswith("front.")
    assert body["firstTimestamp"] == "2026-12-03T15:00:00Z"


class FakeApi:
    """Leases (409 on a stale resourceVersion), Service status patches and Events in memory; a
    status patch is echoed to the subscribed runners as their Services watch would."""

    def __init__(self):
        self.lock = threading.Lock()
        self.lease = None
        self.rv = 0
        self.services = {}
        self.events = []
        self.fail_patches = 0
        self.patches = 0
        self.runners = []

    def get(self, path, timeout=None):
        with self.lock:
            if self.lease is None:
                raise KubeError("not found", 404)
            return copy.deepcopy(self.lease)

    def create(self, path, body, timeout=None):
        with self.lock:
            if path.endswith("/events"):
                self.events.append(body)
                return body
            if self.lease is not None:
                raise KubeError("exists", 409)
            return self._store(body)

    def replace(self, path, body, timeout=None):
        with self.lock:
            if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
                raise KubeError("conflict", 409)
            return self._store(body)

    def _store(self, body):
        self.rv += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(self.lease)

    def patch_object(self, path, body, content_type=None, timeout=None):
        with self.lock:
            if self.fail_patches:
                self.fail_patches -= 1
                raise KubeError("the Kubernetes API answered HTTP 503 Service Unavailable", 503)
            self.patches += 1
            ns, name = path.split("/")[4], path.split("/")[6]
            info = self.services[f"{ns}/{name}"]
            ingress = tuple((ipaddress.ip_address(i["ip"]), i["ipMode"])
                            for i in body["status"]["loadBalancer"]["ingress"] or ())
            info = self.services[info.key] = dataclasses.replace(info, ingress=ingress)
        for r in self.runners:
            r.on_services([info])
        return {}

    def add(self, info):
        self.services[info.key] = info
        for r in self.runners:
            r.on_services([info])

    def ip_of(self, name):
        ingress = self.services[f"default/{name}"].ingress
        return str(ingress[0][0]) if ingress else None


def runner(api, name, **kw):
    r = AllocatorRunner(api, CFG, name, "kube-system", timings=FAST, tick=0.05, **kw)
    api.runners.append(r)
    r.on_services(list(api.services.values()), (), True)
    r.start()
    return r


def test_one_leader_allocates_and_the_other_takes_over_when_it_stops():
    api = FakeApi()
    api.add(svc("a"))
    one = runner(api, "node1")
    poll(lambda: one.status()["leader"], 5, "node1 leading")
    two = runner(api, "node2")
    try:
        poll(lambda: api.ip_of("a") == "203.0.113.1", 5, "a allocated")
        api.add(svc("b"))
        poll(lambda: api.ip_of("b") == "203.0.113.2", 5, "b allocated")
        assert not two.status()["leader"] and two.status()["holder"] == "node1"
        assert one.status()["pools"] == {"default": {"used": 2, "size": 6}}
        one.stop(release=False)  # killed: the Lease has to expire
        api.runners.remove(one)
        api.add(svc("c"))
        poll(lambda: two.status()["leader"], 5, "node2 taking over")
        poll(lambda: api.ip_of("c") == "203.0.113.3", 5, "c allocated by node2")
        assert api.lease["spec"]["leaseTransitions"] == 1
        assert [api.ip_of(n) for n in "abc"] == ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
    finally:
        two.stop()
        one.stop()


def test_nothing_is_written_before_the_services_are_synced():
    api = FakeApi()
    r = AllocatorRunner(api, CFG, "node1", "kube-system", timings=FAST, tick=0.05)
    api.runners.append(r)
    r.start()
    try:
        r.on_services([svc("a")], (), False)
        api.services["default/a"] = svc("a")
        poll(lambda: r.elector.leading, 5, "leading")
        poll(lambda: r.status()["holder"] == "node1", 5, "status")
        assert api.patches == 0 and not r.status()["synced"]
        r.on_services([], (), True)
        poll(lambda: api.ip_of("a") == "203.0.113.1", 5, "allocated once synced")
    finally:
        r.stop()


def test_write_failures_back_off_and_retry_and_problems_become_events():
    api = FakeApi()
    api.fail_patches = 2
    for n in "abcdefg":
        api.services[f"default/{n}"] = svc(n)
    statuses = []
    r = runner(api, "node1", emit_status=statuses.append)
    try:
        poll(lambda: all(api.ip_of(n) for n in "abcdef"), 10, "six allocated despite two failures")
        poll(lambda: len(api.events) == 1, 5, "the Event for g")
        assert api.events[0]["reason"] == "PoolExhausted"
        assert api.events[0]["involvedObject"]["name"] == "g"
        st = r.status()
        assert st["problems"] == {"default/g": "service default/g: pool exhausted: no free IPv4 address in "
                                               "pool(s) default"}
        assert st["pools"]["default"] == {"used": 6, "size": 6} and st["error"] is None
        assert any("503" in (s["error"] or "") for s in statuses)
        r.on_services([], ["default/a"])
        poll(lambda: api.ip_of("g") == "203.0.113.1", 5, "g gets a's address")
    finally:
        r.stop()
    assert api.lease["spec"]["holderIdentity"] == ""  # released on a clean stop


# ---- against the lab API server ----------------------------------------------------------------

def _lab_serves_services_and_leases():
    try:
        import speaker.services  # noqa: F401
        from lab.kubestore import KINDS
    except ImportError:
        return False
    return {"services", "leases", "events"} <= set(KINDS)


lab = pytest.mark.skipif(not _lab_serves_services_and_leases(),
                         reason="needs speaker.services (P3) and the lab API server's Services and Leases (P1)")


@pytest.fixture
def kube(lab_api):
    from speaker.kubeclient import KubeClient
    return KubeClient(lab_api, read_timeout=5.0)


def service_obj(name, **spec):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], **spec}}


def lab_ip(kube, name):
    obj = kube.get(f"/api/v1/namespaces/default/services/{name}")
    ingress = (obj.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
    return [i["ip"] for i in ingress]


def start_speaker(kube, name):
    """A runner fed by a real Services watch, as the speaker wires it."""
    from speaker.listwatch import Changed, ListWatch
    from speaker.services import parse_service

    r = AllocatorRunner(kube, CFG, name, "kube-system", timings=FAST, tick=0.05)

    def emit(ev):
        if isinstance(ev, Changed):
            r.on_services(ev.values, ev.deleted, ev.synced)
    watch = ListWatch(kube, "/api/v1/services", parse_service, emit, name=f"services-{name}")
    r.start()
    watch.start()
    return r, watch


@lab
def test_two_speakers_against_the_lab_api_no_ip_twice(kube):
    kube.create("/api/v1/namespaces/default/services", service_obj("a"))
    one, w1 = start_speaker(kube, "node1")
    two, w2 = start_speaker(kube, "node2")
    try:
        poll(lambda: lab_ip(kube, "a") == ["203.0.113.1"], 10, "a allocated")
        leader, other = (one, two) if one.status()["leader"] else (two, one)
        kube.create("/api/v1/namespaces/default/services", service_obj("b", loadBalancerIP="203.0.113.5"))
        poll(lambda: lab_ip(kube, "b") == ["203.0.113.5"], 10, "b given the IP it asked for")
        leader.stop(release=False)
        (w1 if leader is one else w2).close()
        kube.create("/api/v1/namespaces/default/services", service_obj("c"))
        poll(lambda: other.status()["leader"], 15, "the other speaker taking the Lease")
        poll(lambda: lab_ip(kube, "c") == ["203.0.113.2"], 15, "c allocated by the new leader")
        lease = kube.get("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/podbgp-allocator")
        assert lease["spec"]["leaseTransitions"] >= 1
        assert lease["spec"]["holderIdentity"] == other.identity
        ips = [ip for n in "abc" for ip in lab_ip(kube, n)]
        assert len(ips) == len(set(ips)) == 3
    finally:
        for x in (w1, w2):
            x.close()
        one.stop()
        two.stop()


@lab
def test_kubeclient_object_calls_against_the_lab_api(kube):
    leases = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
    with pytest.raises(KubeError) as err:
        kube.get(f"{leases}/nothing")
    assert err.value.status == 404
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "x"},
            "spec": {"holderIdentity": "node1", "leaseDurationSeconds": 15}}
    made = kube.create(leases, body)
    assert made["spec"]["holderIdentity"] == "node1" and made["metadata"]["resourceVersion"]
    with pytest.raises(KubeError) as err:
        kube.create(leases, body)
    assert err.value.status == 409
    newer = kube.replace(f"{leases}/x", {**made, "spec": {**made["spec"], "holderIdentity": "node2"}})
    assert newer["spec"]["holderIdentity"] == "node2"
    with pytest.raises(KubeError) as err:  # the resourceVersion read before node2's write
        kube.replace(f"{leases}/x", {**made, "spec": {**made["spec"], "holderIdentity": "node3"}})
    assert err.value.status == 409
    kube.create("/api/v1/namespaces/default/services", service_obj("s"))
    patched = kube.patch_object(status_path("default/s"), ingress_patch([ipaddress.ip_address("203.0.113.7")]))
    assert patched["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.7", "ipMode": "VIP"}]
    cleared = kube.patch_object(status_path("default/s"), ingress_patch([]))
    assert not cleared["status"].get("loadBalancer", {}).get("ingress")
    ev = kube.create("/api/v1/namespaces/default/events",
                     event_body(Event("default/s", "PoolExhausted", "pool exhausted"), "node1"))
    assert ev["involvedObject"]["name"] == "s"


def test_what_deploy_grants_is_enough_for_the_allocator(tmp_path):
    """The speaker's service account with exactly the rules deploy/ binds to it (ClusterRole and
    the Lease Role in kube-system): the election, the status patch and the Event all pass."""
    import os
    import yaml
    from kubernetes.client.configuration import Configuration

    from lab import daemonset
    from lab.apiserver import serve
    from lab.kubestore import Store
    from speaker.kubeclient import KubeClient

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    objects = []
    for name in ("rbac.yaml", "daemonset.yaml", "serviceaccount.yaml"):
        with open(os.path.join(root, "deploy", name)) as f:
            objects += [d for d in yaml.safe_load_all(f) if d]
    user, rules = daemonset.rbac(objects)
    store = Store(str(tmp_path / "state.json"), history=50)
    servers, stopping = serve(store, [("127.0.0.1", 0, None)], token="admin", accounts=(("sa", user, rules),))

    def client(token):
        c = Configuration(host=f"http://127.0.0.1:{servers[0].server_address[1]}")
        c.api_key, c.api_key_prefix = {"BearerToken": token}, {"BearerToken": "Bearer"}
        return KubeClient(None, read_timeout=5.0, configuration=c)
    admin, sa = client("admin"), client("sa")
    one = ServicesConfig(pools=(Pool("one", (ipaddress.ip_network("203.0.113.7/32"),)),), allocate=True)
    r = AllocatorRunner(sa, one, "node1", "kube-system", timings=FAST, tick=0.05)
    try:
        for n in ("a", "b"):
            admin.create("/api/v1/namespaces/default/services", service_obj(n))
        r.on_services([svc("a"), svc("b")], (), True)
        r.start()
        poll(lambda: lab_ip(admin, "a") == ["203.0.113.7"], 10, "a allocated with the account's rights")
        poll(lambda: store_events(admin), 10, "the Event on b")
        assert r.status()["error"] is None and r.status()["leader"]
        with pytest.raises(KubeError) as err:  # the account has no rights beyond what deploy/ grants
            sa.patch_object("/api/v1/namespaces/default/services/a", {"metadata": {"labels": {"x": "y"}}})
        assert err.value.status == 403
    finally:
        r.stop()
        stopping.set()
        for s in servers:
            s.shutdown()
            s.server_close()
        store.close()


def store_events(admin):
    items = list(admin.list("/api/v1/namespaces/default/events"))
    return [e for e in items if e["involvedObject"]["name"] == "b" and e["reason"] == "PoolExhausted"]
