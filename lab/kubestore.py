"""The lab API server's store: objects of several kinds, resourceVersions, events, watch fan-out, persistence.

Semantics follow the real API server where a client can tell (see the project notes): one global
resourceVersion counter (as etcd's), a bounded event history per resource (as the API server's
watch cache; older versions are "compacted": 410), writes that change nothing produce no version
and no event, status only via /status. A resource's own rules (Node podCIDRs; Service defaults and
the cluster IP and node port allocation; EndpointSlice and Lease validation) are a `Rules` object
of lab.kinds that the store consults on every write; the machinery is one for all kinds.

Each object is kept as its serialized JSON (an `Entry`), computed once per write: lists and watches
send those bytes as they are, events share them, and nothing is deep-copied per reader. The state
on disk is a snapshot file plus an append-only log of changes, written by a background thread at
most once per `persist_interval` and in full at `close()`; see `Store._flush`.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .kinds import (DEFAULT_SERVICE_CIDRS, KINDS, LEASES, NODES, SERVICES, SLICES, ApiError, Kind, LeaseRules,
                    NodeRules, Rules, ServiceRules, SliceRules, dumps, invalid, not_found, now)

log = logging.getLogger(__name__)
# admission's look at a write about to be stored: (object, oldObject), None for the side that is absent;
# it refuses by raising ApiError
Review = Callable[[dict | None, dict | None], None]
MIN_LOG_BYTES = 4 << 20  # the change log is folded into the snapshot once it outgrows both


@dataclass(frozen=True, slots=True)
class Entry:
    """One object as stored: its key ("name", or "namespace/name"), serialized JSON and labels."""
    name: str
    rv: int
    raw: bytes
    labels: dict

    def obj(self) -> dict:
        """A fresh dict of the object (the caller may change it)."""
        return json.loads(self.raw)


def object_key(meta: dict) -> str:
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else meta["name"]


def entry(obj: dict, raw: bytes | None = None) -> Entry:
    """The Entry of obj (raw: its serialized form, when at hand)."""
    meta = obj["metadata"]
    return Entry(object_key(meta), int(meta["resourceVersion"]), raw or dumps(obj), dict(meta.get("labels") or {}))


@dataclass(frozen=True, slots=True)
class Event:
    rv: int
    kind: str  # ADDED | MODIFIED | DELETED
    entry: Entry  # the object at this version (for DELETED its last state, stamped with this version)
    before: Entry | None  # the object just before (None for ADDED): lets a past state be rebuilt


GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apiserver's names.SimpleNameGenerator alphabet


class Table:
    """One resource's objects by key and its recent changes (its watch cache)."""
    __slots__ = ("kind", "items", "events", "compacted")

    def __init__(self, kind: Kind, history: int) -> None:
        self.kind = kind
        self.items: dict[str, Entry] = {}
        self.events: deque[Event] = deque(maxlen=history)
        self.compacted = 1  # a watch from an RV below compacted - 1 gets 410

    def after(self, rv: int) -> list[Event]:
        """The events newer than rv, oldest first (cost: the events returned)."""
        out = []
        for ev in reversed(self.events):
            if ev.rv <= rv:
                break
            out.append(ev)
        out.reverse()
        return out

    def expired(self, rv: int, current: int) -> bool:
        return rv + 1 < self.compacted and rv < current


class Store:
    def __init__(self, path: str | None = None, history: int = 1000, persist_interval: float = 1.0,
                 service_cidrs: list[str] | tuple[str, ...] | None = None,
                 node_ports: tuple[int, int] | None = None) -> None:
        self.path = path
        self.tables = {name: Table(kind, history) for name, kind in KINDS.items()}
        self.rules: dict[str, Rules] = {name: Rules(kind) for name, kind in KINDS.items()}
        self.rules["nodes"] = NodeRules(NODES)
        self.rules["services"] = ServiceRules(SERVICES, service_cidrs or DEFAULT_SERVICE_CIDRS, node_ports)
        self.rules["endpointslices"] = SliceRules(SLICES)
        self.rules["leases"] = LeaseRules(LEASES)
        self.rv = 1
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

    # the Nodes' table under the names the store had when it held only Nodes
    @property
    def nodes(self) -> dict[str, Entry]:
        return self.tables["nodes"].items

    @property
    def events(self) -> deque[Event]:
        return self.tables["nodes"].events

    @property
    def compacted(self) -> int:
        return self.tables["nodes"].compacted

    @compacted.setter
    def compacted(self, value: int) -> None:
        self.tables["nodes"].compacted = value

    def set_service_cidrs(self, cidrs: list[str] | tuple[str, ...], node_ports: tuple[int, int] | None = None) -> None:
        """Allocate cluster IPs (and node ports) from these ranges from now on (the Services stored keep theirs)."""
        with self.cond:
            rules = ServiceRules(SERVICES, cidrs, node_ports)
            rules.load(self.tables["services"].items.values())
            self.rules["services"] = rules

    # -- persistence ---------------------------------------------------------------------------
    def _load(self) -> None:
        log_path = f"{self.path}.log"
        if os.path.exists(self.path):
            with open(self.path, "rb") as f:
                state = json.load(f)
            self.rv = int(state["resourceVersion"])
            for name in self.tables:
                objs = state.pop(name, None) or {}
                for obj in objs.values():
                    obj.setdefault("metadata", {}).setdefault("resourceVersion", str(self.rv))
                # two passes, so that nothing small outlives the parse of the whole file and pins its
                # memory: first only the serialized bytes, then each object parsed on its own
                raws = [dumps(obj) for obj in objs.values()]
                del objs
                items = self.tables[name].items
                for raw in raws:
                    e = entry(json.loads(raw), raw)
                    items[e.name] = e
            del state
        if os.path.exists(log_path):
            self._replay(log_path)
        for name, table in self.tables.items():
            self.rules[name].load(table.items.values())
            # history is not persisted: a watch from any older version gets 410
            table.compacted = self.rv + 1
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
            items = self.tables[rec.get("res", "nodes")].items
            obj = rec["obj"] if "obj" in rec else rec.get("node")  # "node": the log of the Nodes-only store
            if matches and obj is None:
                items.pop(rec["name"], None)
            elif matches:
                items[rec["name"]] = entry(obj)
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
                    tables = {n: sorted(t.items.items()) for n, t in self.tables.items() if t.items or n == "nodes"}
                    rv = self.rv
            if snapshot:
                self._write_snapshot(tables, rv, final)
            elif lines:
                with open(f"{self.path}.log", "ab") as f:
                    f.writelines(lines)
                self._log_bytes = size

    def _write_snapshot(self, tables: dict[str, list[tuple[str, Entry]]], rv: int, final: bool) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "wb") as f:
            f.write(b'{"resourceVersion":"%d"' % rv)
            for table, items in tables.items():
                f.write(b',%s:{' % dumps(table))
                for i, (key, e) in enumerate(items):
                    f.write(b'%s%s:%s' % (b"," if i else b"", dumps(key), e.raw))
                f.write(b"}")
            f.write(b"}\n")
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

    def _commit(self, res: str, kind: str, obj: dict, before: Entry | None) -> Entry:
        """Record a change (caller holds the lock): new RV, event, log line, wake watchers."""
        table = self.tables[res]
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        # the field order a real server writes
        new = entry({"kind": table.kind.kind, "apiVersion": table.kind.api_version, **obj})
        if kind == "DELETED":
            table.items.pop(new.name, None)
        else:
            table.items[new.name] = new
        if table.events.maxlen and len(table.events) == table.events.maxlen:
            table.compacted = table.events[0].rv + 1
        table.events.append(Event(self.rv, kind, new, before))
        self.rules[res].committed(before, None if kind == "DELETED" else new)
        if self.path:
            raw = b"null" if kind == "DELETED" else new.raw
            self._pending.append(b'{"rv":%d,"res":%s,"name":%s,"obj":%s}\n' % (self.rv, dumps(res), dumps(new.name), raw))
        self.cond.notify_all()
        return new

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does (tests)."""
        with self.cond:
            for table in self.tables.values():
                table.events.clear()
                table.compacted = self.rv + 1

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: str, res: str = "nodes") -> dict:
        return self.entry(key, res).obj()

    def entry(self, key: str, res: str = "nodes") -> Entry:
        table = self.tables[res]
        with self.cond:
            found = table.items.get(key)
        if found is None:
            raise not_found(table.kind, key.rpartition("/")[2])
        return found

    def snapshot(self, res: str = "nodes", ns: str | None = None) -> tuple[list[Entry], int]:
        """Every object (of namespace ns) in key order and the version they are consistent with (no copies)."""
        with self.cond:
            items, rv = dict(self.tables[res].items), self.rv
        return _in_order(items, ns), rv

    def snapshot_at(self, rv: int, res: str = "nodes", ns: str | None = None) -> list[Entry]:
        """The objects as they were at version rv, rebuilt from the history; 410 if compacted."""
        table = self.tables[res]
        with self.cond:
            if rv > self.rv:
                raise too_large(rv, self.rv)
            if table.expired(rv, self.rv):
                raise ApiError(410, "Expired", "The resourceVersion for the provided list is too old.")
            items = dict(table.items)
            later = table.after(rv)
        for ev in reversed(later):
            if ev.before is None:
                items.pop(ev.entry.name, None)
            else:
                items[ev.before.name] = ev.before
        return _in_order(items, ns)

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

    def events_after(self, rv: int, timeout: float, res: str = "nodes") -> tuple[list[Event], int]:
        """Events of res newer than rv (waiting up to timeout for one) and the version the caller has
        then seen; raises 410 if rv is compacted."""
        deadline = time.monotonic() + timeout
        table = self.tables[res]
        with self.cond:
            while True:
                if table.expired(rv, self.rv):
                    raise ApiError(410, "Expired", f"too old resource version: {rv} ({table.compacted - 1})")
                if rv < self.rv:
                    out = table.after(rv)
                    if out:
                        return out, self.rv
                    rv = self.rv  # changes of other kinds only: this watch is current up to here
                left = deadline - time.monotonic()
                if left <= 0:
                    return [], self.rv
                self.cond.wait(left)

    # -- writes --------------------------------------------------------------------------------
    def create(self, obj: dict, res: str = "nodes", ns: str | None = None, review: Review | None = None) -> Entry:
        table, rules = self.tables[res], self.rules[res]
        kind = table.kind
        obj = copy.deepcopy(obj)
        if not isinstance(obj, dict) or not isinstance(obj.setdefault("metadata", {}), dict):
            raise ApiError(400, "BadRequest", "the body of the request must be an object with metadata")
        meta = obj["metadata"]
        _place(kind, meta, ns)
        if not meta.get("name") and not meta.get("generateName"):
            raise invalid(kind, "", "metadata.name", "Required value: name or generateName is required", "FieldValueRequired")
        obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
        if kind.status and not rules.status_on_create:
            obj.pop("status", None)
        with self.cond:
            if not meta.get("name"):
                meta["name"] = self._generate(table, meta)
            rules.admit(meta["name"], obj, None, False)
            key = object_key(meta)
            if key in table.items:
                raise ApiError(409, "AlreadyExists", f'{kind.qualified} "{meta["name"]}" already exists',
                               kind.details(meta["name"]))
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            for k in ("resourceVersion", "deletionTimestamp", "generation"):
                meta.pop(k, None)
            if review is not None:
                review(obj, None)
            return self._commit(res, "ADDED", obj, None)

    @staticmethod
    def _generate(table: Table, meta: dict) -> str:
        for _ in range(8):
            name = meta["generateName"] + "".join(random.choices(GENERATE_CHARS, k=5))
            if object_key({**meta, "name": name}) not in table.items:
                return name
        raise ApiError(409, "AlreadyExists", "could not generate a unique name")

    def update(self, key: str, obj: dict, status: bool = False, res: str = "nodes", review: Review | None = None) -> Entry:
        """PUT semantics: the whole object; status only through the subresource. obj is consumed.
        review(new, old), when given, sees the object as it would be stored and may refuse it (raise)."""
        table, rules = self.tables[res], self.rules[res]
        kind = table.kind
        ns, _, name = key.rpartition("/")
        with self.cond:
            current = table.items.get(key)
            if current is None:
                raise not_found(kind, name)
            old = current.obj()
            if not isinstance(obj, dict) or not isinstance(obj.setdefault("metadata", {}), dict):
                raise ApiError(400, "BadRequest", "the body of the request must be an object with metadata")
            meta = obj["metadata"]
            if meta.get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name in the URL")
            if kind.namespaced and meta.get("namespace", ns) != ns:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
            want_rv = meta.get("resourceVersion")
            if want_rv and want_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind.qualified} "{name}": '
                               "the object has been modified; please apply your changes to the latest version and try again",
                               kind.details(name))
            if status:
                merged = current.obj()
                merged["status"] = obj.get("status", {})
            else:
                merged = obj
                if kind.status:
                    merged["status"] = old.get("status", {})
                for k in ("uid", "creationTimestamp"):
                    merged["metadata"][k] = old["metadata"][k]
                merged["metadata"]["name"] = name
                if kind.namespaced:
                    merged["metadata"]["namespace"] = ns
            merged["kind"], merged["apiVersion"] = kind.kind, kind.api_version
            merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            rules.admit(name, merged, old, status)
            if review is not None:
                review(merged, old)
            if merged == old:
                return current
            return self._commit(res, "MODIFIED", merged, current)

    def delete(self, key: str, res: str = "nodes", review: Review | None = None) -> Entry:
        table = self.tables[res]
        with self.cond:
            current = table.items.get(key)
            if current is None:
                raise not_found(table.kind, key.rpartition("/")[2])
            if review is not None:
                review(None, current.obj())
            return self._commit(res, "DELETED", current.obj(), current)


def _place(kind: Kind, meta: dict, ns: str | None) -> None:
    """Set the object's namespace from the request's (400 if the body names another one)."""
    if not kind.namespaced:
        meta.pop("namespace", None)
        return
    if ns and meta.get("namespace") not in (None, "", ns):
        raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
    meta["namespace"] = ns or meta.get("namespace") or "default"


def _in_order(items: dict[str, Entry], ns: str | None) -> list[Entry]:
    if ns is None:
        return [items[k] for k in sorted(items)]
    prefix = f"{ns}/"
    return [items[k] for k in sorted(k for k in items if k.startswith(prefix))]
