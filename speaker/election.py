"""Leader election through a coordination.k8s.io/v1 Lease, the way client-go's leaderelection does
it, so exactly one speaker runs the LoadBalancer IP allocator.

- The Lease `podbgp-allocator` lives in the speaker's namespace (POD_NAMESPACE, else kube-system);
  the identity is the node name.
- Absent: create it holding it. Held by another: take it over only once it has expired, judged by
  the local monotonic clock from when this speaker last saw the Lease's spec change, plus its
  leaseDurationSeconds; the clocks of two machines are never compared (renewTime is written for
  people and tools, not read).
- Every write is an update carrying the resourceVersion just read: a 409 means someone else wrote
  first, and the leader that gets one stops leading at once. A take-over increments
  leaseTransitions and sets acquireTime.
- The leader renews every `renew_interval`; `leading` turns false as soon as `renew_deadline`
  (shorter than the lease) has passed since the last successful renewal, even while a request
  hangs, so a partitioned leader stops writing before another can take over.
- A clean stop releases the Lease (holderIdentity cleared, duration 1 s) for a fast fail-over.

Blocking HTTP in its own worker thread (speaker.kubeclient.KubeClient or a test double);
`on_change(leading)` is called from that thread when leadership starts or stops.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from .kubeclient import KubeError, describe

log = logging.getLogger(__name__)
LEASE_NAME = "podbgp-allocator"
DEFAULT_NAMESPACE = "kube-system"


def pod_namespace(env: Mapping[str, str] | None = None) -> str:
    """The speaker's namespace: POD_NAMESPACE (the downward API), else kube-system."""
    return (os.environ if env is None else env).get("POD_NAMESPACE") or DEFAULT_NAMESPACE


def micro_time(now: datetime | None = None) -> str:
    """A metav1.MicroTime: RFC 3339 with microseconds, UTC."""
    return (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseApi(Protocol):
    """What the elector calls (speaker.kubeclient.KubeClient; tests pass a fake)."""

    def get(self, path: str, timeout: tuple[float, float] = ...) -> dict: ...
    def create(self, path: str, body: dict, timeout: tuple[float, float] = ...) -> dict: ...
    def replace(self, path: str, body: dict, timeout: tuple[float, float] = ...) -> dict: ...


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds. client-go's defaults are 15 / 10 / 2 / 2; podbgp's lease is shorter so that another
    speaker allocates within 12 s of the leader's death (a lease expires 10 s after the last
    renewal a candidate saw, and a candidate looks every 2 s: one GET per candidate, which is
    why services.loadBalancer.allocatorNodeSelector keeps the candidates few in a large cluster)."""
    duration: float = 10.0        # leaseDurationSeconds written to the Lease
    renew_deadline: float = 7.0   # the leader gives up when it could not renew for this long
    renew_interval: float = 2.0   # the leader renews this often
    retry_interval: float = 2.0   # a candidate looks this often

    def __post_init__(self) -> None:
        if not 0 < self.renew_interval < self.renew_deadline < self.duration:
            raise ValueError("lease timings: need 0 < renew_interval < renew_deadline < duration")


class Elector:
    def __init__(self, client: LeaseApi, identity: str, namespace: str, *,
                 on_change: Callable[[bool], None] = lambda _leading: None, name: str = LEASE_NAME,
                 timings: Timings = Timings(), clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], str] = micro_time) -> None:
        self.client, self.identity, self.namespace, self.name = client, identity, namespace, name
        self.on_change, self.t, self.clock, self.wall = on_change, timings, clock, wall
        self.collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.path = f"{self.collection}/{name}"
        self.timeout = (min(2.0, self.t.renew_interval), max(0.5, self.t.renew_deadline / 3))
        self.holder: str | None = None
        self.error: str | None = None
        self.transitions = 0
        self._leader = False
        self._renewed = float("-inf")
        self._observed: dict | None = None
        self._observed_at = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def leading(self) -> bool:
        """True while this speaker holds the Lease and renewed it within renew_deadline."""
        return self._leader and self.clock() - self._renewed < self.t.renew_deadline

    # ---- one round -------------------------------------------------------------------------
    def step(self) -> float:
        """Try to acquire or renew once; the seconds to wait before the next round."""
        started = self.clock()
        if self._leader and not self.leading:
            self._set(False, f"could not renew for {self.t.renew_deadline:g}s")
        try:
            ok = self._try(started)
            self.error = None
        except KubeError as exc:
            ok, self.error = False, str(exc)
            log.warning("lease.error lease=%s/%s error=%s", self.namespace, self.name, exc)
        if ok:
            self._renewed = started
            if not self._leader:
                self._set(True, "acquired")
            return self.t.renew_interval
        if self._leader:
            # a failed renewal: keep leading until the deadline, retry sooner
            return min(self.t.retry_interval, max(0.0, self._renewed + self.t.renew_deadline - self.clock()))
        expires = self._observed_at + self._duration() - self.clock()
        return min(self.t.retry_interval, max(0.05, expires + 0.05)) if self.holder else self.t.retry_interval

    def _duration(self) -> float:
        return float((self._observed or {}).get("leaseDurationSeconds") or self.t.duration)

    def _try(self, now: float) -> bool:
        try:
            lease = self.client.get(self.path, timeout=self.timeout)
        except KubeError as exc:
            if exc.status != 404:
                raise
            return self._create(now)
        spec = dict(lease.get("spec") or {})
        seen = self.clock()
        if spec != self._observed:  # expiry runs from when this speaker saw the change
            self._observed, self._observed_at = spec, seen
        holder = spec.get("holderIdentity") or ""
        self.holder = holder or None
        self.transitions = int(spec.get("leaseTransitions") or 0)
        if holder and holder != self.identity and seen < self._observed_at + self._duration():
            if self._leader:
                self._set(False, f"held by {holder}")
            return False
        return self._update(lease, spec, holder)

    def _create(self, now: float) -> bool:
        spec = self._spec(acquire=self.wall(), transitions=0)
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        try:
            created = self.client.create(self.collection, body, timeout=self.timeout)
        except KubeError as exc:
            if exc.status == 409:  # another speaker created it first
                return False
            raise
        self._saw(created, now)
        log.info("lease.created lease=%s/%s holder=%s", self.namespace, self.name, self.identity)
        return True

    def _update(self, lease: dict, old: dict, holder: str) -> bool:
        transitions = int(old.get("leaseTransitions") or 0)
        if holder == self.identity:
            spec = self._spec(acquire=old.get("acquireTime") or self.wall(), transitions=transitions)
        else:
            spec = self._spec(acquire=self.wall(), transitions=transitions + 1)
        body = {**lease, "spec": spec}
        try:
            updated = self.client.replace(self.path, body, timeout=self.timeout)
        except KubeError as exc:
            if exc.status != 409:
                raise
            if self._leader:
                self._set(False, "the Lease was written by someone else (409)")
            return False
        self._saw(updated, self.clock())
        if holder != self.identity:
            log.info("lease.taken lease=%s/%s from=%s transitions=%d", self.namespace, self.name,
                     holder or "-", transitions + 1)
        return True

    def _spec(self, acquire: str, transitions: int) -> dict[str, Any]:
        now = self.wall()
        return {"holderIdentity": self.identity, "leaseDurationSeconds": int(round(self.t.duration)) or 1,
                "acquireTime": acquire, "renewTime": now, "leaseTransitions": transitions}

    def _saw(self, lease: dict, now: float) -> None:
        self._observed, self._observed_at = dict(lease.get("spec") or {}), now
        self.holder = self.identity
        self.transitions = int(self._observed.get("leaseTransitions") or 0)

    def _set(self, leading: bool, why: str) -> None:
        self._leader = leading
        if not leading:
            self._renewed = float("-inf")
        log.info("lease.%s lease=%s/%s identity=%s why=%s", "leading" if leading else "lost",
                 self.namespace, self.name, self.identity, why)
        try:
            self.on_change(leading)
        except Exception:  # the owner's bug must not stop the election
            log.exception("lease.callback_failed")

    def release(self) -> None:
        """Give the Lease up (holder cleared, 1 s) if this speaker holds it; errors only logged."""
        was = self._leader
        if was:
            self._set(False, "released")
        try:
            lease = self.client.get(self.path, timeout=self.timeout)
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return
            spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=self.wall())
            self.client.replace(self.path, {**lease, "spec": spec}, timeout=self.timeout)
            log.info("lease.released lease=%s/%s", self.namespace, self.name)
        except Exception as exc:  # it expires anyway
            log.warning("lease.release_failed lease=%s/%s error=%s", self.namespace, self.name, describe(exc))

    # ---- the worker thread -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True, timeout: float = 5.0) -> None:
        """Stop electing; release the Lease (the default) or let it expire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if release:
            self.release()
        elif self._leader:
            self._set(False, "stopped")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.step()
            except Exception:  # a bug here must not take the speaker down; retry
                log.exception("lease.step_failed")
                wait = self.t.retry_interval
            self._stop.wait(wait)
