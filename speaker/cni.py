"""This node's CNI conflist: rendered from its PodCIDR(s), written only over a file podbgp wrote.

The bridge plugin with host-local IPAM hands each Pod an address of the node's PodCIDR(s); the
bridge is the Pods' gateway (isDefaultGateway), so the plugin adds a default route per family
itself (calcGateways in containernetworking/plugins' bridge.go); host-local needs no `routes`.

Ownership: the file carries a top-level `"podbgp": {"managed": true}`. libcni reads only the
list's own keys (name, cniVersion(s), disableCheck, disableGC, loadOnlyInlinedPlugins, plugins)
and passes each plugin its own object, so the marker reaches no plugin. It lives in the file, so
it survives a reboot that empties the runtime directory and tells an operator who wrote it. A
file at the path without it is someone else's: left alone, reported.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence

from bgp.types import IPNetwork

from .config import CNIConfig

log = logging.getLogger(__name__)

MARKER_KEY = "podbgp"
MARKER = {"managed": True}


def conflist(cidrs: Sequence[IPNetwork], cfg: CNIConfig) -> dict:
    """The conflist of a node with these PodCIDRs (IPv4 range first). Pure."""
    ipam: dict = {"type": "host-local",
                  "ranges": [[{"subnet": str(c)}] for c in sorted(cidrs, key=lambda c: c.version)]}
    if cfg.data_dir:
        ipam["dataDir"] = cfg.data_dir
    bridge: dict = {"type": "bridge", "bridge": cfg.bridge, "isGateway": True, "isDefaultGateway": True,
                    "ipMasq": cfg.ip_masq, "hairpinMode": cfg.hairpin_mode, "ipam": ipam}
    if cfg.mtu:
        bridge["mtu"] = cfg.mtu
    plugins = [bridge]
    if cfg.portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    return {"cniVersion": "1.0.0", "name": "podbgp", "plugins": plugins, MARKER_KEY: dict(MARKER)}


def render(cidrs: Sequence[IPNetwork], cfg: CNIConfig) -> str:
    """The file's text: sorted keys, two-space indent, a final newline. Pure and deterministic."""
    if not cidrs:
        raise ValueError("a conflist needs at least one PodCIDR")
    return json.dumps(conflist(cidrs, cfg), indent=2, sort_keys=True) + "\n"


def owned(text: str) -> bool:
    """True if this file text carries podbgp's marker."""
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get(MARKER_KEY), dict) and doc[MARKER_KEY].get("managed") is True


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Temp file in the same directory, fsync, rename over the target, fsync the directory."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    # a .tmp suffix: runtimes load only .conf, .conflist and .json files from the directory
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class ConflistWriter:
    """Keeps the file at cfg.conf_path equal to the rendered conflist, unless it is not ours.

    Never deletes it: Pods need it for as long as the node runs, speaker or not."""

    def __init__(self, cfg: CNIConfig) -> None:
        self.cfg = cfg
        self.written = False  # the file holds what we rendered for the current PodCIDRs
        self.error: str | None = None
        self._cidrs: tuple[IPNetwork, ...] = ()

    def sync(self, cidrs: Sequence[IPNetwork], check: bool = False) -> None:
        """Write the conflist of these PodCIDRs if the file differs; `check` reads the file even when
        these are the PodCIDRs last written (a periodic pass putting back a removed file)."""
        if not self.cfg.enabled or not cidrs:
            return
        if not check and self.written and tuple(cidrs) == self._cidrs:
            return
        self._cidrs = tuple(cidrs)
        path, text = self.cfg.conf_path, render(cidrs, self.cfg)
        try:
            current = _read(path)
            if current is not None and not owned(current):
                self._fail(f"cni: {path} was not written by podbgp (no \"{MARKER_KEY}\": {{\"managed\": true}}); "
                           "left alone", "cni.foreign path=%s left alone", path)
                return
            if current == text:
                log.debug("cni.unchanged path=%s", path)
            else:
                write_atomic(path, text)
                log.info("cni.write path=%s podCIDRs=%s", path, ",".join(map(str, cidrs)))
        except OSError as exc:
            self._fail(f"cni: cannot write {path}: {exc.strerror or exc}", "cni.error path=%s error=%s", path,
                       exc.strerror or exc)
            return
        self.written, self.error = True, None

    def _fail(self, error: str, fmt: str, *args: object) -> None:
        if error != self.error:  # once per distinct problem, not on every pass
            log.warning(fmt, *args)
        self.written, self.error = False, error

    def status(self) -> dict:
        return {"path": self.cfg.conf_path, "written": self.written, "error": self.error}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        return ""  # not text: certainly not ours
