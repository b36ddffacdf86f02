"""Node list+watch with the official client, in one worker thread, emitting only what changed.

Start-up (and every re-list after a 410) uses the streaming watch-list where the server has it
(`sendInitialEvents=true`, `resourceVersionMatch=NotOlderThan`: one ADDED event per Node, then a
bookmark annotated `k8s.io/initial-events-end`), else a list served from the watch cache
(`resourceVersion=0`) decoded item by item from the response stream; then a watch from the
version reached, with bookmarks and a client read timeout. Each Node is parsed here, in the
thread, to the small typed NodeInfo and compared with the last one seen: a status heartbeat that
changes nothing podbgp uses is dropped before it reaches the speaker, and no Node dict is kept.
A re-list is compared with what was known, so Nodes that vanished meanwhile become deletions.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .nodes import NodeError, NodeInfo, parse_node

log = logging.getLogger(__name__)
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True, slots=True)
class Changed:
    """Nodes that changed in a way podbgp sees; `synced` once a full list has been taken."""

    nodes: tuple[NodeInfo, ...] = ()
    invalid: tuple[tuple[str, str], ...] = ()  # (name, one-line reason)
    deleted: tuple[str, ...] = ()
    synced: bool = False


@dataclass(frozen=True, slots=True)
class ApiDown:
    error: str


@dataclass(frozen=True, slots=True)
class ApiUp:
    pass


class Expired(Exception):
    """The watch's resourceVersion is too old (410): re-list."""


class WatchListUnsupported(Exception):
    """The server refuses sendInitialEvents (422: the WatchList feature is off)."""


class NodeClient(Protocol):
    """The calls the watcher makes (KubeNodeClient below; tests pass a fake)."""

    def watch_list(self, timeout: int, stop: threading.Event) -> Iterator[dict]: ...
    def list_nodes(self) -> "ListStream": ...
    def watch_nodes(self, resource_version: str, timeout: int, stop: threading.Event) -> Iterator[dict]: ...


# ---- a NodeList decoded item by item --------------------------------------------------------

class ListStream:
    """Iterate the items of a `{"metadata": ..., "items": [...]}` document arriving in chunks;
    `resource_version` is known once the metadata has gone by. Holds one item at a time."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._dec = json.JSONDecoder()
        self._pending = b""
        self.resource_version: str | None = None

    def _more(self) -> bool:
        for chunk in self._chunks:
            if not chunk:
                continue
            data = self._pending + chunk
            try:
                text = data.decode()
                self._pending = b""
            except UnicodeDecodeError as exc:  # a multi-byte character split across chunks
                text, self._pending = data[:exc.start].decode(), data[exc.start:]
            self._buf = self._buf[self._pos:] + text
            self._pos = 0
            return True
        self._eof = True
        return False

    def _skip(self, chars: str = " \t\r\n") -> str:
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in chars:
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._more():
                raise ValueError("list response ended early")

    def _value(self) -> Any:
        self._skip()
        while True:
            try:
                value, end = self._dec.raw_decode(self._buf, self._pos)
            except ValueError:
                if self._more():
                    continue
                raise
            # a number at the very end of the buffer may be cut short: make sure it is complete
            if end == len(self._buf) and not self._eof and self._more():
                continue
            self._pos = end
            return value

    def _expect(self, char: str) -> None:
        if self._skip() != char:
            raise ValueError(f"list response: expected {char!r} at offset {self._pos}")
        self._pos += 1

    def __iter__(self) -> Iterator[dict]:
        self._expect("{")
        while True:
            c = self._skip(" \t\r\n,")
            if c == "}":
                return
            key = self._value()
            self._expect(":")
            if key != "items":
                value = self._value()
                if key == "metadata" and isinstance(value, dict):
                    self.resource_version = str(value.get("resourceVersion") or "") or None
                continue
            self._expect("[")
            while True:
                if self._skip(" \t\r\n,") == "]":
                    self._pos += 1
                    break
                yield self._value()


class KubeNodeClient:
    """NodeClient over the official kubernetes client, reading raw JSON (no model classes)."""

    def __init__(self, kubeconfig: str | None, read_timeout: float = 75.0) -> None:
        from kubernetes import client, config

        if kubeconfig:
            api_client = config.new_client_from_config(config_file=kubeconfig)
        else:
            config.load_incluster_config()
            api_client = client.ApiClient()
        self.api = api_client
        self.read_timeout = read_timeout

    def _get(self, query: list[tuple[str, str]], read_timeout: float):
        """GET /api/v1/nodes through the client's auth, TLS and connection pool, the response not
        preloaded. CoreV1Api.list_node would do the same after building pydantic validators for
        its signature (about 15 MiB of schemas that a Node watch has no use for)."""
        from kubernetes.client.exceptions import ApiException

        method, url, headers, _body, _post = self.api.param_serialize(
            "GET", "/api/v1/nodes", query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        resp = self.api.call_api(method, url, headers, _request_timeout=(5, read_timeout))
        if not 200 <= resp.status <= 299:
            resp.read()
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return resp.response

    def patch_node_status(self, name: str, body: dict) -> None:
        """PATCH /api/v1/nodes/{name}/status, strategic merge (conditions merge by type)."""
        from kubernetes.client.exceptions import ApiException

        method, url, headers, data, _post = self.api.param_serialize(
            "PATCH", "/api/v1/nodes/{name}/status", path_params={"name": name}, body=body,
            header_params={"Accept": "application/json", "Content-Type": "application/strategic-merge-patch+json"},
            auth_settings=["BearerToken"])
        resp = self.api.call_api(method, url, headers, data, _request_timeout=(5, 30))
        try:
            resp.read()
        finally:
            resp.response.release_conn()
        if not 200 <= resp.status <= 299:
            raise ApiException.from_response(http_resp=resp, body=resp.data.decode(errors="replace"), data=None)

    def list_nodes(self) -> ListStream:
        resp = self._get([("resourceVersion", "0")], 60)
        return ListStream(_closing(resp.stream(1 << 16), resp))

    def watch_list(self, timeout: int, stop: threading.Event) -> Iterator[dict]:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self._get([("watch", "true"), ("sendInitialEvents", "true"), ("resourceVersionMatch", "NotOlderThan"),
                              ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout))], self.read_timeout)
        except ApiException as exc:
            if exc.status in (400, 422):
                raise WatchListUnsupported(f"HTTP {exc.status}: {_reason(exc)}") from None
            raise
        return self._lines(resp, stop)

    def watch_nodes(self, resource_version: str, timeout: int, stop: threading.Event) -> Iterator[dict]:
        resp = self._get([("watch", "true"), ("resourceVersion", resource_version), ("allowWatchBookmarks", "true"),
                          ("timeoutSeconds", str(timeout))], self.read_timeout)
        return self._lines(resp, stop)

    @staticmethod
    def _lines(resp, stop: threading.Event) -> Iterator[dict]:
        from kubernetes.watch.watch import iter_resp_lines

        try:
            for line in iter_resp_lines(resp):
                if stop.is_set():
                    return
                yield json.loads(line)
        finally:
            resp.close()
            resp.release_conn()


def _closing(chunks: Iterable[bytes], resp) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        resp.close()
        resp.release_conn()


def _reason(exc: Any) -> str:
    try:
        return json.loads(exc.body).get("message", "")[:200]
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


# ---- the watcher ------------------------------------------------------------------------------

class NodeWatcher:
    def __init__(self, client: NodeClient, emit: Callable[[object], None], watch_timeout: int = 300,
                 backoff_max: float = 10.0, label_keys: frozenset[str] | None = None, own: str = "") -> None:
        """label_keys, own: which labels of other Nodes to keep (see nodes.parse_node)."""
        self.client = client
        self.label_keys, self.own = label_keys, own
        self.emit = emit
        self.watch_timeout = watch_timeout
        self.backoff_max = backoff_max
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="node-watch", daemon=True)
        self.resource_version: str | None = None
        self.known: dict[str, NodeInfo | str] = {}  # the last value seen per Node (str: why invalid)
        self.watch_list_supported = True
        self.dropped = 0  # events that changed nothing podbgp uses

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
                    events = self.client.watch_nodes(self.resource_version, self.watch_timeout, self.stop)
                    self._up(failures)
                failures = 0
                self._follow(events)
            except Expired as exc:
                log.info("nodes.watch.expired resourceVersion=%s reason=%s relisting", self.resource_version, exc)
                self.resource_version = None
            except Exception as exc:  # network, HTTP, JSON: all mean "try again later"
                failures += 1
                delay = min(self.backoff_max, 0.2 * 2 ** min(failures, 8)) * random.uniform(0.8, 1.2)
                log.warning("nodes.watch.error error=%s retry_in=%.1fs", _one_line(exc), delay)
                if failures == 1:
                    self.emit(ApiDown(_one_line(exc)))
                if getattr(exc, "status", None) == 410:
                    self.resource_version = None
                self.stop.wait(delay)

    def _up(self, failures: int) -> None:
        if failures:
            self.emit(ApiUp())

    # -- the full list -------------------------------------------------------------------------
    def _sync(self) -> Iterator[dict]:
        """Take a full list; emit what differs from what was known. Returns the stream to follow."""
        started = time.monotonic()
        if self.watch_list_supported:
            try:
                stream = self.client.watch_list(self.watch_timeout, self.stop)
                fresh = {}
                for event in stream:
                    kind, obj = _event(event)
                    if kind == "ADDED":
                        name, value = _parse(obj, self.label_keys, self.own)
                        if name:
                            fresh[name] = value
                    elif kind == "BOOKMARK":
                        if not _initial_end(obj):  # a server that ignores sendInitialEvents
                            stream.close()  # release the connection now, not when collected
                            raise WatchListUnsupported("a bookmark came before the initial-events-end one")
                        self._synced(fresh, _rv(obj), started, "watch-list")
                        return stream
                raise RuntimeError("watch-list ended before its initial-events-end bookmark")
            except WatchListUnsupported as exc:
                log.info("nodes.watchlist.unsupported %s; listing from the watch cache instead", exc)
                self.watch_list_supported = False
        listing = self.client.list_nodes()
        fresh = {}
        for obj in listing:
            name, value = _parse(obj, self.label_keys, self.own)
            if name:
                fresh[name] = value
        if not listing.resource_version:
            raise RuntimeError("list response without metadata.resourceVersion")
        self._synced(fresh, listing.resource_version, started, "list")
        return self.client.watch_nodes(listing.resource_version, self.watch_timeout, self.stop)

    def _synced(self, fresh: dict[str, NodeInfo | str], rv: str | None, started: float, how: str) -> None:
        if not rv:
            raise RuntimeError("full list without a resourceVersion")
        deleted = tuple(sorted(set(self.known) - set(fresh)))
        changed = {n: v for n, v in fresh.items() if self.known.get(n) != v}
        self.known = fresh
        self.resource_version = rv
        log.info("nodes.list via=%s count=%d changed=%d deleted=%d resourceVersion=%s seconds=%.3f",
                 how, len(fresh), len(changed), len(deleted), rv, time.monotonic() - started)
        self.emit(_changes(changed, deleted, synced=True))

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
                name, value = _parse(obj, self.label_keys, self.own)
                if not name:
                    continue
                if self.known.get(name) == value:
                    self.dropped += 1
                    continue
                self.known[name] = value
                self.emit(_changes({name: value}, ()))
            elif kind == "DELETED":
                name = ((obj.get("metadata") or {}).get("name"))
                if name in self.known:
                    del self.known[name]
                    self.emit(Changed(deleted=(name,)))


def _changes(changed: dict[str, NodeInfo | str], deleted: Iterable[str], synced: bool = False) -> Changed:
    return Changed(nodes=tuple(v for v in changed.values() if isinstance(v, NodeInfo)),
                   invalid=tuple((n, v) for n, v in changed.items() if isinstance(v, str)),
                   deleted=tuple(deleted), synced=synced)


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


def _parse(obj: dict, label_keys: frozenset[str] | None = None, own: str = "") -> tuple[str | None, NodeInfo | str]:
    """(name, NodeInfo) or (name, reason) for a Node podbgp cannot use; (None, ..) without a name."""
    try:
        info = parse_node(obj, label_keys, own)
        return info.name, info
    except NodeError as exc:
        name = (obj.get("metadata") or {}).get("name") if isinstance(obj, dict) else None
        return (name if isinstance(name, str) and name else None), str(exc)


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0][:200] if text else type(exc).__name__
