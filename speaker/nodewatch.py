"""The Node watch: the list/watch machinery handed `/api/v1/nodes` and the Node parser.

What it adds to the machinery is the parse: each Node becomes the small typed NodeInfo
(nodes.parse_node), keeping of the other Nodes only the labels in `label_keys` (what a selector
reads) and of the own Node every label, so a heartbeat or an unread label compares equal to the
last value and is dropped as a no-op before it reaches the speaker.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .kubeclient import NODES
from .listwatch import Lister, ListWatch
from .nodes import NodeError, NodeInfo, parse_node

__all__ = ["NodeWatcher", "parse"]


def parse(obj: dict, label_keys: frozenset[str] | None = None, own: str = "") -> tuple[str | None, NodeInfo | str]:
    """(name, NodeInfo) or (name, reason) for a Node podbgp cannot use; (None, ..) without a name."""
    try:
        info = parse_node(obj, label_keys, own)
        return info.name, info
    except NodeError as exc:
        name = (obj.get("metadata") or {}).get("name") if isinstance(obj, dict) else None
        return (name if isinstance(name, str) and name else None), str(exc)


class NodeWatcher(ListWatch):
    def __init__(self, client: Lister | None, emit: Callable[[object], None], watch_timeout: int = 300,
                 backoff_max: float = 10.0, label_keys: frozenset[str] | None = None, own: str = "") -> None:
        """label_keys, own: which labels of other Nodes to keep (see nodes.parse_node)."""
        super().__init__(client, NODES, partial(parse, label_keys=label_keys, own=own), emit, name="nodes",
                         watch_timeout=watch_timeout, backoff_max=backoff_max)
        self.label_keys, self.own = label_keys, own
