"""List, then watch, one resource in one worker thread, emitting only what changed: the protocol
written once and handed a resource path and a parser, as client-go's reflector is handed a type.

Start-up (and every re-list after a 410) uses the streaming watch-list where the server has it
(`sendInitialEvents=true`, `resourceVersionMatch=NotOlderThan`: one ADDED event per object, then a
bookmark annotated `k8s.io/initial-events-end`), else a list served from the watch cache
(`resourceVersion=0`) decoded item by item; then a watch from the version reached, with bookmarks
and a client read timeout. Each object is parsed in the thread to a small typed value and
compared with the last one seen: an update that changes nothing the parser keeps is dropped
here, and no object dict is kept. A re-list is compared with what was known, so objects that
vanished meanwhile become deletions.

The parser maps an object to (key, value), or to (key, reason) for an object that cannot be used
(a str: the one-line reason); key None skips the object. Keys are `object_key(obj)` (the name, or
namespace/name), which is also how deletions are named.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .kubeclient import WatchListUnsupported, describe

log = logging.getLogger(__name__)
INITIAL_EVENTS_END = "k8s.io/initial-events-end"

Parse = Callable[[dict], tuple[str | None, Any]]

__all__ = ["ApiDown", "ApiUp", "Changed", "Expired", "ListWatch", "WatchListUnsupported", "object_key"]


@dataclass(frozen=True, slots=True)
class Changed:
    """Objects that changed in a way the parser sees (`values`: what the parser made of them);
    `synced` once a full list has been taken; `resource` names the watch."""

    values: tuple[Any, ...] = ()
    invalid: tuple[tuple[str, str], ...] = ()  # (key, one-line reason)
    deleted: tuple[str, ...] = ()
    synced: bool = False
    resource: str = "nodes"


@dataclass(frozen=True, slots=True)
class ApiDown:
    error: str
    resource: str = "nodes"


@dataclass(frozen=True, slots=True)
class ApiUp:
    resource: str = "nodes"


class Expired(Exception):
    """The watch's resourceVersion is too old (410): re-list."""


class Lister(Protocol):
    """The calls the machinery makes (kubeclient.KubeClient; tests pass a fake)."""

    def watch_list(self, path: str, timeout: int, stop: threading.Event) -> Iterator[dict]: ...
    def list(self, path: str) -> Iterable[dict]: ...  # with .resource_version once iterated
    def watch(self, path: str, resource_version: str, timeout: int, stop: threading.Event) -> Iterator[dict]: ...


def object_key(obj: dict) -> str | None:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = (meta or {}).get("name")
    if not isinstance(name, str) or not name:
        return None
    ns = meta.get("namespace")
    return f"{ns}/{name}" if isinstance(ns, str) and ns else name


class ListWatch:
    def __init__(self, client: Lister, path: str, parse: Parse, emit: Callable[[object], None], *,
                 name: str = "", watch_timeout: int = 300, backoff_max: float = 10.0) -> None:
        """`name` (default: the path's last segment) starts the log events and names the thread."""
        self.client, self.path, self.parse, self.emit = client, path, parse, emit
        self.name = name or path.rstrip("/").rsplit("/", 1)[-1]
        self.watch_timeout = watch_timeout
        self.backoff_max = backoff_max
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"{self.name}-watch", daemon=True)
        self.resource_version: str | None = None
        self.known: dict[str, Any] = {}  # the last value seen per key (str: why invalid)
        self.watch_list_supported = True
        self.dropped = 0  # events that changed nothing the parser keeps

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()

    def _run(self) -> None:
        failures = 0
        while not self.stop.is_set():
            try:
                if self.resource_version is None:
                    events = self._sync()
                else:
                    events = self.client.watch(self.path, self.resource_version, self.watch_timeout, self.stop)
                    self._up(failures)
                failures = 0
                self._follow(events)
            except Expired as exc:
                log.info("%s.watch.expired resourceVersion=%s reason=%s relisting", self.name, self.resource_version, exc)
                self.resource_version = None
            except Exception as exc:  # network, HTTP, JSON: all mean "try again later"
                failures += 1
                self._failed(exc, failures)

    def _failed(self, exc: Exception, failures: int) -> None:
        delay = min(self.backoff_max, 0.2 * 2 ** min(failures, 8)) * random.uniform(0.8, 1.2)
        line = describe(exc)
        log.warning("%s.watch.error %s; retrying in %.1fs", self.name, line, delay,
                    extra={"fields": {"resource": self.name, "error": line, "status": getattr(exc, "status", None),
                                      "retry_in_s": round(delay, 1), "failures": failures}})
        if failures == 1:
            self.emit(ApiDown(line, self.name))
        if getattr(exc, "status", None) == 410:
            self.resource_version = None
        self.stop.wait(delay)

    def _up(self, failures: int) -> None:
        if failures:
            self.emit(ApiUp(self.name))

    # -- the full list -------------------------------------------------------------------------
    def _sync(self) -> Iterator[dict]:
        """Take a full list; emit what differs from what was known. Returns the stream to follow."""
        started = time.monotonic()
        if self.watch_list_supported:
            try:
                return self._watch_list(started)
            except WatchListUnsupported as exc:
                log.info("%s.watchlist.unsupported %s; listing from the watch cache instead", self.name, exc)
                self.watch_list_supported = False
        listing = self.client.list(self.path)
        fresh = {}
        for obj in listing:
            key, value = self.parse(obj)
            if key:
                fresh[key] = value
        rv = getattr(listing, "resource_version", None)
        if not rv:
            raise RuntimeError("list response without metadata.resourceVersion")
        self._synced(fresh, rv, started, "list")
        return self.client.watch(self.path, rv, self.watch_timeout, self.stop)

    def _watch_list(self, started: float) -> Iterator[dict]:
        stream = self.client.watch_list(self.path, self.watch_timeout, self.stop)
        fresh = {}
        for event in stream:
            kind, obj = _event(event)
            if kind == "ADDED":
                key, value = self.parse(obj)
                if key:
                    fresh[key] = value
            elif kind == "BOOKMARK":
                if not _initial_end(obj):  # a server that ignores sendInitialEvents
                    stream.close()  # release the connection now, not when collected
                    raise WatchListUnsupported("a bookmark came before the initial-events-end one")
                self._synced(fresh, _rv(obj), started, "watch-list")
                return stream
        raise RuntimeError("watch-list ended before its initial-events-end bookmark")

    def _synced(self, fresh: dict[str, Any], rv: str | None, started: float, how: str) -> None:
        if not rv:
            raise RuntimeError("full list without a resourceVersion")
        deleted = tuple(sorted(set(self.known) - set(fresh)))
        changed = {k: v for k, v in fresh.items() if self.known.get(k) != v}
        self.known = fresh
        self.resource_version = rv
        log.info("%s.list via=%s count=%d changed=%d deleted=%d resourceVersion=%s seconds=%.3f", self.name,
                 how, len(fresh), len(changed), len(deleted), rv, time.monotonic() - started)
        self.emit(self._changes(changed, deleted, synced=True))

    # -- the watch -----------------------------------------------------------------------------
    def _follow(self, events: Iterator[dict]) -> None:
        for event in events:
            kind, obj = _event(event)
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Expired(obj.get("message", "410"))
                raise RuntimeError(f"watch error: {obj.get('message', obj)}")
            rv = _rv(obj)
            if rv:
                self.resource_version = rv
            if kind in ("ADDED", "MODIFIED"):
                key, value = self.parse(obj)
                if not key:
                    continue
                if self.known.get(key) == value:
                    self.dropped += 1
                    continue
                self.known[key] = value
                self.emit(self._changes({key: value}, ()))
            elif kind == "DELETED":
                key = object_key(obj)
                if key in self.known:
                    del self.known[key]
                    self.emit(Changed(deleted=(key,), resource=self.name))

    def _changes(self, changed: dict[str, Any], deleted: Iterable[str], synced: bool = False) -> Changed:
        return changes(changed, deleted, synced, self.name)


def changes(changed: dict[str, Any], deleted: Iterable[str], synced: bool = False, resource: str = "nodes") -> Changed:
    """A Changed from parsed values by key (a str value: why that object is invalid)."""
    return Changed(values=tuple(v for v in changed.values() if not isinstance(v, str)),
                   invalid=tuple((k, v) for k, v in changed.items() if isinstance(v, str)),
                   deleted=tuple(deleted), synced=synced, resource=resource)


def _event(event: Any) -> tuple[str, dict]:
    if not isinstance(event, dict):
        raise RuntimeError("watch event is not an object")
    obj = event.get("object")
    return str(event.get("type")), obj if isinstance(obj, dict) else {}


def _rv(obj: dict) -> str | None:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return str(rv) if rv else None


def _initial_end(obj: dict) -> bool:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(INITIAL_EVENTS_END) == "true"
