"""speaker.election: the Lease election with a fake clock and a fake Lease API (409 on a stale
resourceVersion, as the API server answers): create, renew, expiry judged by the local clock,
take-over with leaseTransitions, races, losing at once, release."""
import copy
import threading

import pytest

from speaker.election import Elector, Timings, pod_namespace
from speaker.kubeclient import KubeError
from tests.waiting import poll

PATH = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/podbgp-allocator"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeLeases:
    """One Lease store with resourceVersions; `before_write` lets a test race a write."""

    def __init__(self):
        self.obj = None
        self.rv = 0
        self.down = False
        self.before_write = None
        self.writes = []

    def _check(self):
        if self.down:
            raise KubeError("cannot reach the Kubernetes API: connection refused")

    def get(self, path, timeout=None):
        self._check()
        assert path == PATH
        if self.obj is None:
            raise KubeError("not found", 404)
        return copy.deepcopy(self.obj)

    def create(self, path, body, timeout=None):
        self._check()
        assert path == PATH.rsplit("/", 1)[0]
        if self.before_write:
            self.before_write()
        if self.obj is not None:
            raise KubeError("already exists", 409)
        return self._store(body)

    def replace(self, path, body, timeout=None):
        self._check()
        if self.before_write:
            self.before_write()
        if body["metadata"].get("resourceVersion") != self.obj["metadata"]["resourceVersion"]:
            raise KubeError("conflict", 409)
        return self._store(body)

    def _store(self, body):
        self.rv += 1
        self.obj = copy.deepcopy(body)
        self.obj["metadata"]["resourceVersion"] = str(self.rv)
        self.writes.append(copy.deepcopy(self.obj["spec"]))
        return copy.deepcopy(self.obj)

    def force(self, **spec):
        """Someone else writes the Lease."""
        self.obj["spec"].update(spec)
        self.rv += 1
        self.obj["metadata"]["resourceVersion"] = str(self.rv)


# the numbers below are written for client-go's lease of 15 s (renew deadline 10, renew every 3,
# retry every 2), given explicitly: the test of the defaults is test_default_timings_fail_over_within_12s
CLIENT_GO = Timings(duration=15, renew_deadline=10, renew_interval=3, retry_interval=2)


def elector(api, clock, name, changes=None, **kw):
    kw.setdefault("timings", CLIENT_GO)
    return Elector(api, name, "kube-system", clock=clock, wall=lambda: f"t{clock.now}",
                   on_change=(changes.append if changes is not None else (lambda _: None)), **kw)


def test_namespace_from_the_downward_api():
    assert pod_namespace({"POD_NAMESPACE": "podbgp"}) == "podbgp"
    assert pod_namespace({}) == "kube-system"


def test_default_timings_fail_over_within_12s():
    t = Timings()
    # a candidate that saw the last renewal up to one retry late takes over duration + retry after it
    assert t.duration + t.retry_interval <= 12 and t.renew_deadline < t.duration


def test_timings_must_make_sense():
    with pytest.raises(ValueError):
        Timings(duration=10, renew_deadline=10)


def test_creates_the_lease_when_absent_and_renews_it():
    api, clock, changes = FakeLeases(), Clock(), []
    a = elector(api, clock, "node1", changes)
    assert a.step() == 3.0
    assert a.leading and changes == [True]
    spec = api.obj["spec"]
    assert spec["holderIdentity"] == "node1" and spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0 and spec["acquireTime"] == spec["renewTime"] == "t1000.0"
    clock.now += 3
    a.step()
    assert api.obj["spec"]["renewTime"] == "t1003.0" and api.obj["spec"]["acquireTime"] == "t1000.0"
    assert api.obj["spec"]["leaseTransitions"] == 0 and changes == [True]


def test_a_held_lease_is_taken_only_after_it_expired_by_the_local_clock():
    api, clock, changes = FakeLeases(), Clock(), []
    a, b = elector(api, clock, "node1"), elector(api, clock, "node2", changes)
    a.step()
    b.step()
    assert not b.leading and b.holder == "node1"
    # node1 stops renewing; node2 waits a full duration from when it saw the last change
    clock.now += 14.9
    b.step()
    assert not b.leading
    clock.now += 0.2
    b.step()
    assert b.leading and changes == [True]
    assert api.obj["spec"]["holderIdentity"] == "node2" and api.obj["spec"]["leaseTransitions"] == 1
    assert api.obj["spec"]["acquireTime"] == f"t{clock.now}"
    # node1 comes back: it sees node2's lease and stops leading at once
    a_changes = []
    a.on_change = a_changes.append
    a.step()
    assert not a.leading and a_changes == [False]


def test_renewals_keep_the_lease_and_expiry_is_not_read_from_renew_time():
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, clock, "node1"), elector(api, clock, "node2")
    a.step()
    for _ in range(10):  # node2 looks every 2 s, node1 renews every 3 s: never expired
        clock.now += 1
        if clock.now % 3 == 0:
            a.step()
        if clock.now % 2 == 0:
            b.step()
    assert a.leading and not b.leading
    # a renewTime far in the past (another machine's clock) does not make it expired
    api.force(renewTime="1999-01-01T00:00:00.000000Z")
    b.step()
    assert not b.leading


def test_the_candidate_wakes_when_the_lease_would_expire():
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, clock, "node1"), elector(api, clock, "node2")
    a.step()
    b.step()
    clock.now += 14.0
    assert b.step() == pytest.approx(1.05)


def test_a_409_on_renewal_is_leadership_lost_at_once():
    api, clock, changes = FakeLeases(), Clock(), []
    a = elector(api, clock, "node1", changes)
    a.step()
    api.before_write = lambda: api.force(holderIdentity="intruder")  # someone writes between get and put
    clock.now += 3
    a.step()
    assert not a.leading and changes == [True, False]


def test_a_409_race_on_create_or_take_over_leaves_one_leader():
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, clock, "node1"), elector(api, clock, "node2")
    api.before_write = lambda: (setattr(api, "before_write", None), b.step())  # b creates first
    a.step()
    assert b.leading and not a.leading and api.obj["spec"]["holderIdentity"] == "node2"
    # both see it expire; the first writer wins, the other gets 409
    a.step()
    clock.now += 16
    api.before_write = lambda: (setattr(api, "before_write", None), a.step())
    c = elector(api, clock, "node3")
    c._observed, c._observed_at = a._observed, a._observed_at
    c.step()
    assert a.leading and not c.leading
    assert api.obj["spec"]["leaseTransitions"] == 1


def test_failing_to_renew_stops_leading_before_the_lease_expires():
    api, clock, changes = FakeLeases(), Clock(), []
    a = elector(api, clock, "node1", changes)
    a.step()
    api.down = True
    clock.now += 3
    assert a.step() <= 2.0
    assert a.leading and a.error  # still inside the renew deadline
    clock.now += 6.9
    assert a.leading
    clock.now += 0.2  # 10 s since the last renewal: no longer, even before the thread runs again
    assert not a.leading
    a.step()
    assert changes == [True, False]
    api.down = False
    clock.now += 2
    a.step()  # its own Lease: taken back without waiting
    assert a.leading and api.obj["spec"]["leaseTransitions"] == 0


def test_release_lets_the_next_take_over_at_once():
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, clock, "node1"), elector(api, clock, "node2")
    a.step()
    b.step()
    a.release()
    assert not a.leading and api.obj["spec"]["holderIdentity"] == ""
    b.step()
    assert b.leading and api.obj["spec"]["leaseTransitions"] == 1


def test_api_errors_are_retried_never_raised():
    api, clock = FakeLeases(), Clock()
    api.down = True
    a = elector(api, clock, "node1")
    assert a.step() == 2.0 and not a.leading and "connection refused" in a.error


def test_thread_runs_and_stops_releasing():
    api = FakeLeases()
    changes = []
    a = Elector(api, "node1", "kube-system", on_change=changes.append,
                timings=Timings(duration=1.5, renew_deadline=1.0, renew_interval=0.2, retry_interval=0.1))
    a.start()
    try:
        poll(lambda: a.leading, 5, "leadership")
        poll(lambda: len(api.writes) >= 3, 5, "renewals")
    finally:
        a.stop()
    assert changes == [True, False] and api.obj["spec"]["holderIdentity"] == ""
    assert not any(t.name == "lease" and t.is_alive() for t in threading.enumerate())
