"""Node list+watch with the official client, in one worker thread.

List, then watch from the list's resourceVersion with bookmarks and a client read timeout;
reconnect from the last version seen; on 410 re-list (the snapshot replaces the whole view, so
Nodes that vanished meanwhile become deletions); back off on errors. Events go to the owner
through `emit` (the app hands them to its asyncio loop with call_soon_threadsafe).
"""
from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Snapshot:
    nodes: tuple[dict, ...]
    resource_version: str


@dataclass(frozen=True, slots=True)
class NodeEvent:
    kind: str  # ADDED | MODIFIED | DELETED
    node: dict


@dataclass(frozen=True, slots=True)
class ApiDown:
    error: str


class Expired(Exception):
    """The watch's resourceVersion is too old (410): re-list."""


class NodeClient(Protocol):
    """The two calls the watcher makes (the official CoreV1Api fits; tests pass a fake)."""

    def list_nodes(self) -> tuple[list[dict], str]: ...
    def watch_nodes(self, resource_version: str, timeout: int, stop: threading.Event) -> Any: ...


class KubeNodeClient:
    """NodeClient over the official kubernetes client, reading raw JSON (no model classes)."""

    def __init__(self, kubeconfig: str | None, read_timeout: float = 75.0) -> None:
        from kubernetes import client, config

        if kubeconfig:
            api_client = config.new_client_from_config(config_file=kubeconfig)
        else:
            config.load_incluster_config()
            api_client = client.ApiClient()
        self.api = client.CoreV1Api(api_client)
        self.read_timeout = read_timeout

    def list_nodes(self) -> tuple[list[dict], str]:
        resp = self.api.list_node(_preload_content=False, _request_timeout=(5, 30))
        body = json.loads(resp.data)
        return body.get("items") or [], str(body["metadata"]["resourceVersion"])

    def watch_nodes(self, resource_version: str, timeout: int, stop: threading.Event):
        from kubernetes.watch.watch import iter_resp_lines

        resp = self.api.list_node(watch=True, resource_version=resource_version, allow_watch_bookmarks=True,
                                  timeout_seconds=timeout, _preload_content=False,
                                  _request_timeout=(5, self.read_timeout))
        try:
            for line in iter_resp_lines(resp):
                if stop.is_set():
                    return
                yield json.loads(line)
        finally:
            resp.close()
            resp.release_conn()


class NodeWatcher:
    def __init__(self, client: NodeClient, emit: Callable[[object], None], watch_timeout: int = 300,
                 backoff_max: float = 10.0) -> None:
        self.client = client
        self.emit = emit
        self.watch_timeout = watch_timeout
        self.backoff_max = backoff_max
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="node-watch", daemon=True)
        self.resource_version: str | None = None

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()

    def _run(self) -> None:
        failures = 0
        while not self.stop.is_set():
            try:
                if self.resource_version is None:
                    items, rv = self.client.list_nodes()
                    self.resource_version = rv
                    log.info("nodes.list count=%d resourceVersion=%s", len(items), rv)
                    self.emit(Snapshot(tuple(items), rv))
                self._watch_once()
                failures = 0
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

    def _watch_once(self) -> None:
        assert self.resource_version is not None
        for event in self.client.watch_nodes(self.resource_version, self.watch_timeout, self.stop):
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Expired(obj.get("message", "410"))
                raise RuntimeError(f"watch error: {obj.get('message', obj)}")
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = str(rv)
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self.emit(NodeEvent(kind, obj))


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0][:200] if text else type(exc).__name__
