"""The LoadBalancer IP allocator as the speaker runs it: elected through the Lease
(speaker.election), deciding with the pure core (speaker.allocator), writing Service status and
Events from a worker thread.

    Services watch (asyncio loop) --on_services--> queue --> worker thread
        leader and synced?  allocator.decide / on_service / on_delete --> actions
        PATCH services/NAME/status (merge patch), POST events; HTTP failures retried with backoff

It acts only while this speaker leads and only once the Services list is complete; on gaining
leadership it rebuilds everything from the Services' current status (no IP handed out twice after
a fail-over); on losing it, it drops what it had not yet written and stops writing at once (each
write first asks the elector, whose `leading` turns false at the renew deadline even while its own
request hangs). Nothing here raises into the speaker.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .allocator import LOAD_BALANCER, Action, Allocator, Event, SetIngress
from .election import Elector, Timings, micro_time
from .kubeclient import KubeError, describe

if TYPE_CHECKING:
    from .service_config import ServicesConfig
    from .services import ServiceInfo

log = logging.getLogger(__name__)
_STOP = object()
MAX_EVENTS = 200  # Events waiting to be posted; older ones are dropped past this


def status_path(key: str) -> str:
    ns, _, name = key.partition("/")
    return f"/api/v1/namespaces/{ns}/services/{name}/status"


def ingress_patch(ips: Iterable) -> dict:
    """The merge patch that sets (or, with no IPs, removes) status.loadBalancer.ingress."""
    ingress = [{"ip": str(ip), "ipMode": "VIP"} for ip in ips]
    return {"status": {"loadBalancer": {"ingress": ingress or None}}}


def event_body(ev: Event, identity: str, now: str | None = None) -> dict:
    """A core/v1 Warning Event on the Service, from component podbgp."""
    ns, _, name = ev.key.partition("/")
    now = now or micro_time()
    stamp = now[:19] + "Z"  # firstTimestamp/lastTimestamp are metav1.Time (seconds)
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Service", "namespace": ns, "name": name},
        "reason": ev.reason, "message": ev.message, "type": "Warning",
        "source": {"component": "podbgp", "host": identity},
        "reportingComponent": "podbgp", "reportingInstance": identity,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": now, "action": "Allocate", "count": 1,
    }


class AllocatorRunner:
    """Owned by the speaker: `start()`, `on_services(...)` from the loop, `status()` from anywhere,
    `stop()` on shutdown (releases the Lease unless told otherwise)."""

    def __init__(self, client: Any, cfg_services: ServicesConfig, identity: str, namespace: str,
                 emit_status: Callable[[dict], None] | None = None, *, timings: Timings = Timings(),
                 backoff_max: float = 30.0, tick: float = 1.0) -> None:
        self.client, self.identity, self.namespace = client, identity, namespace
        self.emit_status, self.backoff_max, self.tick = emit_status, backoff_max, tick
        self.allocator = Allocator(cfg_services)
        self.elector = Elector(client, identity, namespace, timings=timings,
                               on_change=lambda _leading: self._queue.put(("leader",)))
        self._queue: queue.Queue = queue.Queue()
        self._known: dict[str, ServiceInfo] = {}  # Services of type LoadBalancer or with an ingress
        self._synced = False
        self._active = False  # leading, synced and rebuilt: the allocator's books are the truth
        self._writes: dict[str, SetIngress] = {}
        self._events: collections.deque[Event] = collections.deque(maxlen=MAX_EVENTS)
        self._failures = 0
        self._retry_at = 0.0
        self._error: str | None = None
        self._status: dict = self._snapshot()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ---- the speaker's side ------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="allocator", daemon=True)
        self._thread.start()
        self.elector.start()

    def stop(self, release: bool = True, timeout: float = 5.0) -> None:
        """Stop writing first, then stop electing and release the Lease (unless told not to), so
        no write of this speaker lands after the next leader has started."""
        self._stopping.set()
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
        self.elector.stop(release=release, timeout=timeout)

    close = stop  # the speaker closes what it started

    def on_services(self, values: Iterable[ServiceInfo], deleted: Iterable[str] = (), synced: bool = False) -> None:
        """What the Services watch delivered (values: ServiceInfo; deleted: keys); any thread.
        A Service the parser refused is not deleted: leave it out, and the IP it holds stays held."""
        self._queue.put(("services", tuple(values), tuple(deleted), synced))

    def status(self) -> dict:
        """For `podbgp status`: leader, holder, pools {name: {used, size}}, problems {key: line}."""
        return {**self._status, "leader": self.elector.leading, "holder": self.elector.holder}

    # ---- the worker thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            wait = max(0.0, self._retry_at - time.monotonic()) if self._pending() else self.tick
            try:
                batch = [self._queue.get(timeout=wait)]
            except queue.Empty:
                batch = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                return
            try:
                self._round(batch)
            except Exception:  # a bug in the core: say so loudly, rebuild later, never kill the speaker
                log.exception("allocator.failed")
                self._active = False
                self._error = "allocator failed; see the speaker's log"

    def _round(self, batch: list) -> None:
        for msg in batch:
            if msg[0] == "services":
                self._services(*msg[1:])
        self._leadership()
        if self._active and self._pending() and time.monotonic() >= self._retry_at:
            self._flush()
        snap = self._snapshot()
        if snap != self._status:
            self._status = snap
            if self.emit_status is not None:
                self.emit_status(self.status())

    def _services(self, values: tuple, deleted: tuple, synced: bool) -> None:
        actions: list[Action] = []
        for key in deleted:
            self._known.pop(key, None)
            self._writes.pop(key, None)
            if self._active:
                actions += self.allocator.on_delete(key)
        for info in values:
            if info.type == LOAD_BALANCER or info.ingress:
                self._known[info.key] = info
            else:
                self._known.pop(info.key, None)
            if self._active:
                actions += self.allocator.on_service(info)
        self._synced |= synced
        self._take(actions)

    def _leadership(self) -> None:
        leading = self.elector.leading
        if self._active and not leading:
            log.info("allocator.stopped identity=%s unwritten=%d", self.identity, len(self._writes))
            self._active = False
            self._writes.clear()
            self._events.clear()
        elif not self._active and leading and self._synced:
            self._active = True
            actions = self.allocator.decide(self._known.values())
            log.info("allocator.leading identity=%s services=%d writes=%d", self.identity,
                     len(self._known), len(actions))
            self._writes.clear()
            self._take(actions)

    def _take(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, SetIngress):
                self._writes[a.key] = a
                log.info("allocator.assign service=%s ips=%s", a.key, ",".join(map(str, a.ips)) or "-")
            else:
                self._events.append(a)
                log.warning("allocator.refused service=%s reason=%s message=%s", a.key, a.reason, a.message)

    def _pending(self) -> bool:
        return self._active and bool(self._writes or self._events)

    def _flush(self) -> None:
        """Write what is pending while still leading; the first failure backs off."""
        while self._writes or self._events:
            if not self.elector.leading or self._stopping.is_set():
                return
            try:
                if self._writes:
                    key = next(iter(self._writes))
                    self._write(self._writes[key])
                    del self._writes[key]
                else:
                    self._post(self._events[0])
                    self._events.popleft()
            except KubeError as exc:
                self._failed(exc)
                return
        self._failures, self._error = 0, None

    def _write(self, a: SetIngress) -> None:
        try:
            self.client.patch_object(status_path(a.key), ingress_patch(a.ips))
        except KubeError as exc:
            if exc.status not in (404, 422):  # gone: nothing to write; refused: retrying will not help
                raise
            if exc.status == 422:
                log.warning("allocator.write_refused service=%s error=%s", a.key, exc)

    def _post(self, ev: Event) -> None:
        ns = ev.key.partition("/")[0]
        try:
            self.client.create(f"/api/v1/namespaces/{ns}/events", event_body(ev, self.identity))
        except KubeError as exc:
            if exc.status not in (403, 404, 422):  # not allowed or not acceptable: drop, the log has it
                raise
            log.warning("allocator.event_dropped service=%s error=%s", ev.key, describe(exc))

    def _failed(self, exc: KubeError) -> None:
        self._failures += 1
        delay = min(self.backoff_max, 0.5 * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay
        self._error = str(exc)
        log.warning("allocator.write_failed error=%s retry_in_s=%.1f failures=%d", exc, delay, self._failures)

    def _snapshot(self) -> dict:
        doc = self.allocator.status() if self._active else {"pools": {}, "problems": {}}
        return {"leader": self._active, "allocating": self._active, "holder": self.elector.holder,
                "synced": self._synced,
                "pools": doc["pools"], "problems": doc["problems"],
                "pending_writes": len(self._writes), "error": self._error or self.elector.error}
