"""A containerlab topology file as typed values. Pure."""
from __future__ import annotations

import os
from dataclasses import dataclass

import yaml


class TopologyError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class LabNode:
    name: str
    kind: str
    image: str
    exec: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]
    binds: tuple[tuple[str, str], ...]  # (host path, container path)

    def label(self, key: str, default: str = "") -> str:
        return dict(self.labels).get(key, default)

    @property
    def role(self) -> str:
        if self.label("podbgp.io/role"):
            return self.label("podbgp.io/role")
        return "tor" if self.is_frr or self.is_bird else "node"

    @property
    def is_frr(self) -> bool:
        return "frr" in self.image.lower()

    @property
    def is_bird(self) -> bool:
        """A BIRD 2 router: its image names bird; it binds /etc/bird/bird.conf."""
        return "bird" in self.image.lower()

    def bind_for(self, target: str) -> str | None:
        return next((src for src, dst in self.binds if dst == target), None)


@dataclass(frozen=True, slots=True)
class Link:
    a: tuple[str, str]  # (node, interface)
    b: tuple[str, str]


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    nodes: tuple[LabNode, ...]
    links: tuple[Link, ...]
    path: str

    def node(self, name: str) -> LabNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise TopologyError(f"no node {name!r} in {self.path}")


def load(path: str) -> Topology:
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    base = os.path.dirname(os.path.abspath(path))
    topo = raw.get("topology") or {}
    defaults = (topo.get("defaults") or {})
    nodes = []
    for name, spec in sorted((topo.get("nodes") or {}).items()):
        spec = {**defaults, **(spec or {})}
        binds = []
        for b in spec.get("binds") or []:
            src, _, rest = str(b).partition(":")
            dst = rest.split(":")[0]
            binds.append((src if os.path.isabs(src) else os.path.join(base, src), dst))
        nodes.append(LabNode(
            name=str(name), kind=str(spec.get("kind", "linux")), image=str(spec.get("image", "")),
            exec=tuple(str(c) for c in spec.get("exec") or ()),
            labels=tuple(sorted((str(k), str(v)) for k, v in (spec.get("labels") or {}).items())),
            binds=tuple(binds),
        ))
    names = {n.name for n in nodes}
    links = []
    for i, link in enumerate(topo.get("links") or []):
        eps = link.get("endpoints") or []
        if len(eps) != 2:
            raise TopologyError(f"links[{i}]: expected two endpoints")
        pair = []
        for ep in eps:
            node, _, iface = str(ep).partition(":")
            if node not in names or not iface:
                raise TopologyError(f"links[{i}]: endpoint {ep!r} names no node:interface of this topology")
            if len(iface) > 15:
                raise TopologyError(f"links[{i}]: interface name {iface!r} is longer than 15 characters")
            pair.append((node, iface))
        links.append(Link(pair[0], pair[1]))
    return Topology(name=str(raw.get("name", "lab")), nodes=tuple(nodes), links=tuple(links), path=os.path.abspath(path))
