"""The lab API server's store of Node objects: resourceVersions, events, watch fan-out, persistence.

Semantics follow the real API server where a client can tell (see the project notes): one global
resourceVersion counter, a bounded event history (older versions are "compacted": 410), writes
that change nothing produce no version and no event, podCIDR rules, status only via /status.

Each Node is kept as its serialized JSON (an `Entry`), computed once per write: lists and watches
send those bytes as they are, events share them, and nothing is deep-copied per reader. The state
on disk is a snapshot file plus an append-only log of changes, written by a background thread at
most once per `persist_interval` and in full at `close()`; see `Store._flush`.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice

log = logging.getLogger(__name__)
MIN_LOG_BYTES = 4 << 20  # the change log is folded into the snapshot once it outgrows both


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None,
                 list_continue: str | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details, self.list_continue = details, list_continue

    def status(self) -> dict:
        meta = {"continue": self.list_continue} if self.list_continue else {}
        out = {"kind": "Status", "apiVersion": "v1", "metadata": meta, "status": "Failure",
               "message": self.message, "reason": self.reason}
        if self.details:
            out["details"] = self.details
        out["code"] = self.code
        return out


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Entry:
    """One Node as stored: its serialized JSON and the few fields selectors read."""
    name: str
    rv: int
    raw: bytes
    labels: dict

    def obj(self) -> dict:
        """A fresh dict of the object (the caller may change it)."""
        return json.loads(self.raw)


def entry(obj: dict, raw: bytes | None = None) -> Entry:
    """The Entry of obj (raw: its serialized form, when at hand)."""
    meta = obj["metadata"]
    return Entry(meta["name"], int(meta["resourceVersion"]), raw or dumps(obj), dict(meta.get("labels") or {}))


@dataclass(frozen=True, slots=True)
class Event:
    rv: int
    kind: str  # ADDED | MODIFIED | DELETED
    entry: Entry  # the object at this version (for DELETED its last state, stamped with this version)
    before: Entry | None  # the object just before (None for ADDED): lets a past state be rebuilt


class Store:
    def __init__(self, path: str | None = None, history: int = 1000, persist_interval: float = 1.0) -> None:
        self.path = path
        self.nodes: dict[str, Entry] = {}
        self.rv = 1
        self.events: deque[Event] = deque(maxlen=history)
        self.compacted = 1  # a watch from an RV below compacted - 1 gets 410
        self.cond = threading.Condition()
        self._pending: list[bytes] = []  # change-log lines not yet written
        self._log_bytes = self._snap_bytes = 0
        self._io = threading.Lock()
        self._closed = threading.Event()
        if path:
            self._load()
            self._writer = threading.Thread(target=self._persist_loop, args=(persist_interval,),
                                            name="store-persist", daemon=True)
            self._writer.start()

    # -- persistence ---------------------------------------------------------------------------
    def _load(self) -> None:
        log_path = f"{self.path}.log"
        if os.path.exists(self.path):
            with open(self.path, "rb") as f:
                state = json.load(f)
            self.rv = int(state["resourceVersion"])
            for obj in state["nodes"].values():
                obj.setdefault("metadata", {}).setdefault("resourceVersion", str(self.rv))
            # two passes, so that nothing small outlives the parse of the whole file and pins its
            # memory: first only the serialized bytes, then each Node parsed on its own
            raws = [dumps(obj) for obj in state["nodes"].values()]
            del state
            for raw in raws:
                e = entry(json.loads(raw), raw)
                self.nodes[e.name] = e
        if os.path.exists(log_path):
            self._replay(log_path)
        # history is not persisted: a watch from any older version gets 410
        self.compacted = self.rv + 1
        self._flush(snapshot=True)

    def _replay(self, log_path: str) -> None:
        """Apply the change log written since the snapshot (unless the snapshot was edited offline)."""
        with open(log_path, "rb") as f:
            lines = f.read().split(b"\n")
        try:
            base = int(json.loads(lines[0])["base"])
        except (ValueError, KeyError, IndexError):
            return
        matches, last = base == self.rv, self.rv
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except ValueError:
                break  # a torn last line
            last = max(last, int(rec["rv"]))
            if matches and rec["node"] is None:
                self.nodes.pop(rec["name"], None)
            elif matches:
                self.nodes[rec["name"]] = entry(rec["node"])
        if not matches:  # versions up to `last` were handed out: the state after them must be newer
            log.warning("store.log-ignored base=%s snapshot=%s (snapshot changed offline)", base, self.rv)
            last += 1
        self.rv = max(self.rv, last)

    def _persist_loop(self, interval: float) -> None:
        while not self._closed.wait(interval):
            try:
                self._flush()
            except OSError as exc:
                log.error("store.persist-failed path=%s error=%s", self.path, exc)

    def _flush(self, snapshot: bool = False, final: bool = False) -> None:
        """Append pending changes to the log; rewrite the snapshot when asked or the log grew large."""
        with self._io:
            with self.cond:
                lines, self._pending = self._pending, []
                size = self._log_bytes + sum(map(len, lines))
                snapshot = snapshot or final or size > max(self._snap_bytes, MIN_LOG_BYTES)
                if snapshot:
                    items, rv = sorted(self.nodes.items()), self.rv
            if snapshot:
                self._write_snapshot(items, rv, final)
            elif lines:
                with open(f"{self.path}.log", "ab") as f:
                    f.writelines(lines)
                self._log_bytes = size

    def _write_snapshot(self, items: list[tuple[str, Entry]], rv: int, final: bool) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "wb") as f:
            f.write(b'{"resourceVersion":"%d","nodes":{' % rv)
            for i, (name, e) in enumerate(items):
                f.write(b'%s%s:%s' % (b"," if i else b"", dumps(name), e.raw))
            f.write(b"}}\n")
            self._snap_bytes = f.tell()
        os.replace(tmp, self.path)
        if final:
            if os.path.exists(f"{self.path}.log"):
                os.unlink(f"{self.path}.log")
            return
        header = b'{"base":"%d"}\n' % rv
        with open(f"{self.path}.log.tmp", "wb") as f:
            f.write(header)
        os.replace(f"{self.path}.log.tmp", f"{self.path}.log")
        self._log_bytes = len(header)

    def flush(self) -> None:
        """Write what is pending now (tests; the background thread does this every interval)."""
        if self.path:
            self._flush()

    def close(self) -> None:
        """Stop the writer and leave one complete snapshot (no log) behind."""
        if self.path and not self._closed.is_set():
            self._closed.set()
            self._writer.join()
            self._flush(final=True)

    def _commit(self, kind: str, obj: dict, before: Entry | None) -> Entry:
        """Record a change (caller holds the lock): new RV, event, log line, wake watchers."""
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        new = entry({"kind": "Node", "apiVersion": "v1", **obj})  # the field order a real server writes
        if kind == "DELETED":
            self.nodes.pop(new.name, None)
        else:
            self.nodes[new.name] = new
        if self.events.maxlen and len(self.events) == self.events.maxlen:
            self.compacted = self.events[0].rv + 1
        self.events.append(Event(self.rv, kind, new, before))
        if self.path:
            node = b"null" if kind == "DELETED" else new.raw
            self._pending.append(b'{"rv":%d,"name":%s,"node":%s}\n' % (self.rv, dumps(new.name), node))
        self.cond.notify_all()
        return new

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does (tests)."""
        with self.cond:
            self.events.clear()
            self.compacted = self.rv + 1

    # -- reads ---------------------------------------------------------------------------------
    def get(self, name: str) -> dict:
        return self.entry(name).obj()

    def entry(self, name: str) -> Entry:
        with self.cond:
            found = self.nodes.get(name)
        if found is None:
            raise ApiError(404, "NotFound", f'nodes "{name}" not found', {"name": name, "kind": "nodes"})
        return found

    def snapshot(self) -> tuple[list[Entry], int]:
        """Every Node in key order and the version they are consistent with (no copies)."""
        with self.cond:
            nodes, rv = dict(self.nodes), self.rv
        return [nodes[n] for n in sorted(nodes)], rv

    def snapshot_at(self, rv: int) -> list[Entry]:
        """The Nodes as they were at version rv, rebuilt from the history; 410 if compacted."""
        with self.cond:
            if rv > self.rv:
                raise too_large(rv, self.rv)
            if rv + 1 < self.compacted and rv < self.rv:
                raise ApiError(410, "Expired", "The resourceVersion for the provided list is too old.")
            nodes = dict(self.nodes)
            later = list(islice(self.events, max(0, len(self.events) - (self.rv - rv)), None))
        for ev in reversed(later):
            if ev.before is None:
                nodes.pop(ev.entry.name, None)
            else:
                nodes[ev.before.name] = ev.before
        return [nodes[n] for n in sorted(nodes)]

    def wait_for(self, rv: int, timeout: float = 3.0) -> int:
        """Block until the store has reached version rv (as a cache catching up would); 504 if not."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.rv < rv:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise too_large(rv, self.rv)
                self.cond.wait(left)
            return self.rv

    def events_after(self, rv: int, timeout: float) -> tuple[list[Event], int]:
        """Events newer than rv (waiting up to timeout for one); raises 410 if rv is compacted."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if rv + 1 < self.compacted and rv < self.rv:
                    raise ApiError(410, "Expired", f"too old resource version: {rv} ({self.compacted - 1})")
                if rv < self.rv:
                    # versions are consecutive: the events after rv are the last (self.rv - rv)
                    out = list(islice(self.events, max(0, len(self.events) - (self.rv - rv)), None))
                    return out, self.rv
                left = deadline - time.monotonic()
                if left <= 0:
                    return [], self.rv
                self.cond.wait(left)

    # -- writes --------------------------------------------------------------------------------
    def create(self, obj: dict) -> Entry:
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
                raise ApiError(409, "AlreadyExists", f'nodes "{name}" already exists', {"name": name, "kind": "nodes"})
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            for k in ("resourceVersion", "deletionTimestamp", "generation"):
                meta.pop(k, None)
            return self._commit("ADDED", obj, None)

    def update(self, name: str, obj: dict, status: bool = False) -> Entry:
        """PUT semantics: the whole object; status only through the subresource. obj is consumed."""
        with self.cond:
            current = self.nodes.get(name)
            if current is None:
                raise ApiError(404, "NotFound", f'nodes "{name}" not found', {"name": name, "kind": "nodes"})
            old = current.obj()
            meta = obj.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name in the URL")
            want_rv = meta.get("resourceVersion")
            if want_rv and want_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on nodes "{name}": '
                               "the object has been modified; please apply your changes to the latest version and try again",
                               {"name": name, "kind": "nodes"})
            if status:
                merged = current.obj()
                merged["status"] = obj.get("status", {})
            else:
                merged = obj
                merged["status"] = old.get("status", {})
                merged.setdefault("spec", {})
                validate_spec(name, merged["spec"], old.get("spec", {}))
                for k in ("uid", "creationTimestamp"):
                    merged["metadata"][k] = old["metadata"][k]
                merged["metadata"]["name"] = name
            merged["kind"], merged["apiVersion"] = "Node", "v1"
            merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            if merged == old:
                return current
            return self._commit("MODIFIED", merged, current)

    def delete(self, name: str) -> Entry:
        with self.cond:
            current = self.nodes.get(name)
            if current is None:
                raise ApiError(404, "NotFound", f'nodes "{name}" not found', {"name": name, "kind": "nodes"})
            return self._commit("DELETED", current.obj(), current)


def too_large(want: int, have: int) -> ApiError:
    """What a real API server answers when asked for a version its cache has not reached (504)."""
    return ApiError(504, "Timeout", f"Timeout: Too large resource version: {want}, current: {have}",
                    {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                     "retryAfterSeconds": 1})


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
