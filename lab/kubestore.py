"""The lab API server's store of Node objects: resourceVersions, events, watch fan-out.

Semantics follow the real API server where a client can tell (see the project notes): one global
resourceVersion counter, a bounded event history (older versions are "compacted": 410), writes
that change nothing produce no version and no event, podCIDR rules, status only via /status.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import os
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    def __init__(self, path: str | None = None, history: int = 1000) -> None:
        self.path = path
        self.nodes: dict[str, dict] = {}
        self.rv = 1
        self.events: deque[tuple[int, str, dict]] = deque(maxlen=history)
        self.compacted = 1  # a watch from an RV below this gets 410
        self.cond = threading.Condition()
        if path and os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
            self.nodes = state["nodes"]
            self.rv = int(state["resourceVersion"])
            self.compacted = self.rv + 1  # history is not persisted: a watch from any older version gets 410

    # -- persistence ---------------------------------------------------------------------------
    def _save(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"resourceVersion": str(self.rv), "nodes": self.nodes}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def _commit(self, kind: str, obj: dict) -> dict:
        """Record a change (caller holds the lock): new RV, event, persist, wake watchers."""
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        if self.events.maxlen and len(self.events) == self.events.maxlen:
            self.compacted = self.events[0][0] + 1
        self.events.append((self.rv, kind, copy.deepcopy(obj)))
        self._save()
        self.cond.notify_all()
        return obj

    # -- reads ---------------------------------------------------------------------------------
    def get(self, name: str) -> dict:
        with self.cond:
            node = self.nodes.get(name)
            if node is None:
                raise ApiError(404, "NotFound", f'nodes "{name}" not found')
            return copy.deepcopy(node)

    def list(self) -> tuple[list[dict], str]:
        with self.cond:
            items = [copy.deepcopy(self.nodes[n]) for n in sorted(self.nodes)]
            return items, str(self.rv)

    def events_after(self, rv: int, timeout: float) -> tuple[list[tuple[int, str, dict]], int]:
        """Events newer than rv (waiting up to timeout for one); raises 410 if rv is compacted."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if rv + 1 < self.compacted and rv < self.rv:
                    raise ApiError(410, "Expired", f"too old resource version: {rv} ({self.compacted})")
                out = [e for e in self.events if e[0] > rv]
                if out:
                    return out, out[-1][0]
                left = deadline - time.monotonic()
                if left <= 0:
                    return [], self.rv
                self.cond.wait(left)

    # -- writes --------------------------------------------------------------------------------
    def create(self, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "Node is invalid: metadata.name: Required value: name is required")
        obj["kind"], obj["apiVersion"] = "Node", "v1"
        obj.setdefault("spec", {})
        obj.setdefault("status", {})
        validate_spec(name, obj["spec"], None)
        with self.cond:
            if name in self.nodes:
                raise ApiError(409, "AlreadyExists", f'nodes "{name}" already exists')
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            for k in ("resourceVersion", "deletionTimestamp", "generation"):
                meta.pop(k, None)
            self.nodes[name] = obj
            return copy.deepcopy(self._commit("ADDED", obj))

    def update(self, name: str, obj: dict, status: bool = False) -> dict:
        """PUT semantics: the whole object; status only through the subresource."""
        with self.cond:
            old = self.nodes.get(name)
            if old is None:
                raise ApiError(404, "NotFound", f'nodes "{name}" not found')
            new = copy.deepcopy(obj)
            meta = new.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name in the URL")
            want_rv = meta.get("resourceVersion")
            if want_rv and want_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on nodes "{name}": '
                               "the object has been modified; please apply your changes to the latest version and try again")
            if status:
                merged = copy.deepcopy(old)
                merged["status"] = new.get("status", {})
            else:
                merged = new
                merged["status"] = copy.deepcopy(old.get("status", {}))
                merged.setdefault("spec", {})
                validate_spec(name, merged["spec"], old.get("spec", {}))
                for k in ("uid", "creationTimestamp"):
                    merged["metadata"][k] = old["metadata"][k]
                merged["metadata"]["name"] = name
            merged["kind"], merged["apiVersion"] = "Node", "v1"
            merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            if merged == old:
                return copy.deepcopy(old)
            self.nodes[name] = merged
            return copy.deepcopy(self._commit("MODIFIED", merged))

    def delete(self, name: str) -> dict:
        with self.cond:
            old = self.nodes.pop(name, None)
            if old is None:
                raise ApiError(404, "NotFound", f'nodes "{name}" not found')
            return copy.deepcopy(self._commit("DELETED", old))


def validate_spec(name: str, spec: dict, old: dict | None) -> None:
    def invalid(field: str, msg: str) -> ApiError:
        return ApiError(422, "Invalid", f'Node "{name}" is invalid: {field}: {msg}')

    pod_cidr = spec.get("podCIDR", "") or ""
    cidrs = spec.get("podCIDRs") or []
    families = set()
    for i, c in enumerate(cidrs):
        try:
            net = ipaddress.ip_network(c, strict=False)
        except ValueError:
            raise invalid(f"spec.podCIDRs[{i}]", f'Invalid value: "{c}": must be a valid CIDR') from None
        if net.version in families:
            raise invalid("spec.podCIDRs", "Invalid value: may specify no more than one CIDR for each IP family")
        families.add(net.version)
    if pod_cidr:
        try:
            ipaddress.ip_network(pod_cidr, strict=False)
        except ValueError:
            raise invalid("spec.podCIDR", f'Invalid value: "{pod_cidr}": must be a valid CIDR') from None
    if cidrs and cidrs[0] != pod_cidr:
        raise invalid("spec.podCIDRs", "Invalid value: the first entry must equal spec.podCIDR")
    if old is not None:
        before = old.get("podCIDR", "") or ""
        if before and before != pod_cidr:
            raise invalid("spec.podCIDR", "Forbidden: podCIDR cannot be changed once set")
        old_cidrs = old.get("podCIDRs") or []
        if old_cidrs and old_cidrs != cidrs:
            raise invalid("spec.podCIDRs", "Forbidden: node updates may not change podCIDR except from \"\" to valid")
