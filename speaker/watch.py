"""Names kept for the modules that still import them from here (speaker/app.py and
speaker/hostroute_cmd.py). The code lives in kubeclient (HTTP), listwatch (the list/watch
protocol) and nodewatch (the Node parser); import from those."""
from __future__ import annotations

from .kubeclient import NODES, KubeClient, ListStream
from .listwatch import ApiDown, ApiUp, Changed, Expired, WatchListUnsupported
from .nodewatch import NodeWatcher
from .listwatch import changes as _changes
from .nodewatch import parse as _parse

__all__ = ["ApiDown", "ApiUp", "Changed", "Expired", "KubeNodeClient", "ListStream", "NodeWatcher",
           "WatchListUnsupported", "_changes", "_parse"]


class KubeNodeClient(KubeClient):
    """A KubeClient that also lists the Nodes in one call (speaker/hostroute_cmd.py uses it)."""

    def list_nodes(self) -> ListStream:
        return self.list(NODES)
