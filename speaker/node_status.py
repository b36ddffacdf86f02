"""The node's NetworkUnavailable condition: set to False once this node's PodCIDR is announced.

The cloud node controller, kubeadm and some installers leave NetworkUnavailable=True on a new
Node (and the scheduler keeps Pods off it) until the network plugin says otherwise; Calico and
kube-router patch it False at start-up with a strategic merge on nodes/status, as this does.
podbgp never sets it True, not even on shutdown: the routes stay in place while it is away.

Patched once per process after the first announcement, and again when the announced PodCIDRs
change (including a Node deleted and created again with the same ones, which passes through
"nothing to announce"). The call runs in a worker thread (the client is blocking) and is retried with backoff
until it succeeds; the speaker's loop never waits for it.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from bgp.types import IPNetwork

log = logging.getLogger(__name__)

CONDITION = "NetworkUnavailable"
REASON = "PodbgpIsUp"
MESSAGE = "podbgp is running on this node"


class StatusClient(Protocol):
    def patch_node_status(self, name: str, body: dict) -> None: ...


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def condition_patch(now: float) -> dict:
    """The strategic-merge patch body: conditions merge by type, so Ready and the rest stay."""
    ts = rfc3339(now)
    return {"status": {"conditions": [{"type": CONDITION, "status": "False", "reason": REASON, "message": MESSAGE,
                                       "lastTransitionTime": ts, "lastHeartbeatTime": ts}]}}


class NetworkCondition:
    def __init__(self, client: StatusClient | None, node_name: str, clock: Callable[[], float] = time.time,
                 backoff: tuple[float, float] = (1.0, 60.0), disabled: bool = False) -> None:
        self.client, self.node_name, self.clock = client, node_name, clock
        self.backoff_min, self.backoff_max = backoff
        self.patched = False
        self.at: float | None = None  # unix time of the last successful patch
        self.disabled = disabled  # the config's networkUnavailable: false
        self.error: str | None = None if client is not None or disabled else "no API client to write the Node's status with"
        self._for: tuple[IPNetwork, ...] = ()  # the PodCIDRs the last request was for
        self._wanted = self._done = 0
        self._task: asyncio.Task | None = None

    def announced(self, cidrs: Sequence[IPNetwork]) -> None:
        """This node now announces cidrs: patch unless already asked for these. Returns at once."""
        key = tuple(sorted(cidrs, key=lambda c: (c.version, int(c.network_address), c.prefixlen)))
        if not key:
            self._for = ()  # e.g. our Node was deleted: a Node created again starts without our condition
            return
        if key == self._for or self.client is None:
            return
        self._for = key
        self._wanted += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="node-condition")

    async def _run(self) -> None:
        failures = 0
        while self._done < self._wanted:
            wanted, now = self._wanted, self.clock()
            try:
                await asyncio.to_thread(self.client.patch_node_status, self.node_name, condition_patch(now))
            except Exception as exc:  # network, HTTP, auth: all mean "try again later"
                failures += 1
                delay = min(self.backoff_max, self.backoff_min * 2 ** min(failures - 1, 16)) * random.uniform(0.8, 1.2)
                self.error = _one_line(exc)
                log.warning("node.condition.error type=%s node=%s error=%s retry_in=%.1fs", CONDITION, self.node_name,
                            self.error, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            self._done, self.patched, self.at, self.error = wanted, True, now, None
            log.info("node.condition type=%s status=False reason=%s node=%s", CONDITION, REASON, self.node_name)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def status(self) -> dict:
        return {"patched": self.patched, "at": self.at, "error": self.error, "enabled": not self.disabled}


def _one_line(exc: BaseException) -> str:
    """The failure in words (kubeclient.describe): what could not be reached and why, or what the
    API answered, on one line."""
    from .kubeclient import describe

    return describe(exc)
