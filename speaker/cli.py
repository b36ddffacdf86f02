"""The `podbgp` command."""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from importlib.metadata import entry_points

import click

from .config import ConfigError, load


class _Group(click.Group):
    """Adds the command groups other packages register under the `podbgp.commands` entry point,
    those whose package is there: the wheel registers `lab` but ships no lab/ (a checkout has it)."""

    def _plugins(self) -> dict:
        return {ep.name: ep for ep in entry_points(group="podbgp.commands") if _importable(ep.module)}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None and name in self._plugins():
            cmd = self._plugins()[name].load()
        return cmd


def _importable(module: str) -> bool:
    """Whether module's top-level package can be found, without importing anything."""
    from importlib.util import find_spec

    return find_spec(module.partition(".")[0]) is not None


@click.group(cls=_Group)
def main() -> None:
    """podbgp: a BGP speaker for underlay Kubernetes Pod networks."""


def _setup_logging(level: str, fmt: str = "text") -> None:
    from . import logs

    logs.setup(level, fmt)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML configuration file")
@click.option("--node-name", help="this node's name (default: $NODE_NAME)")
@click.option("--asn", type=int, help="local AS number")
@click.option("--kubeconfig", help="kubeconfig file (default: in-cluster configuration)")
@click.option("--status-address", help="HOST:PORT of the local status endpoint")
@click.option("--runtime-dir", help="directory for ExaBGP's config and API socket")
@click.option("--log-level", default="info", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="text, or one JSON object per line for log collectors (default: the config's logFormat, else text)")
def speaker(config_path, node_name, asn, kubeconfig, status_address, runtime_dir, log_level, log_format) -> None:
    """Run the speaker on this node."""
    _setup_logging(log_level, log_format or "text")
    try:
        cfg = load(config_path, overrides={"nodeName": node_name, "asn": asn, "kubeconfig": kubeconfig,
                                           "statusAddress": status_address, "runtimeDir": runtime_dir})
    except ConfigError as exc:
        raise click.ClickException(f"config refused: {exc}") from None
    if log_format is None and cfg.log_format != "text":  # the flag overrides logFormat
        _setup_logging(log_level, cfg.log_format)
    sys.exit(asyncio.run(_run_speaker(cfg)))


async def _run_speaker(cfg) -> int:
    from reconciler.kernel import KernelTable
    from reconciler.monitor import KernelMonitor

    from . import endpoint
    from .app import Speaker, services_enabled
    from .cni import ConflistWriter
    from .kubeclient import ENDPOINT_SLICES, SERVICES, KubeClient
    from .listwatch import ListWatch
    from .nodewatch import NodeWatcher

    kube = KubeClient(cfg.kubeconfig)  # one connection pool for the watches and the writes

    def start_watch(emit):
        # of the other Nodes only the labels the mesh's scope reads; the own Node's all (nodeSelector)
        keys = cfg.mesh_node_selector.keys if cfg.mesh else frozenset()
        watchers = [NodeWatcher(kube, emit, backoff_max=cfg.api_backoff_max, label_keys=keys, own=cfg.node_name)]
        if services_enabled(cfg):
            from .services import parse_service, slice_parser
            watchers += [ListWatch(kube, SERVICES, parse_service, emit, name="services", backoff_max=cfg.api_backoff_max),
                         ListWatch(kube, ENDPOINT_SLICES, slice_parser(cfg.node_name), emit, name="endpointslices",
                                   backoff_max=cfg.api_backoff_max)]
        for w in watchers:
            w.start()

        def stop() -> None:
            for w in watchers:
                w.close()
        return stop

    allocator = None
    if cfg.services.allocate:
        from .election import pod_namespace
        from .lbipam import AllocatorRunner
        allocator = AllocatorRunner(kube, cfg.services, cfg.node_name, pod_namespace())

    kernel = KernelTable(protocol=cfg.route_protocol, table=cfg.route_table)
    monitor = KernelMonitor(cfg.route_protocol, table=cfg.route_table)
    sp = Speaker(cfg, kernel, start_watch, monitor=monitor, cni=ConflistWriter(cfg.cni),
                 node_client=kube, allocator=allocator)
    sock = endpoint.socket_path(cfg.runtime_dir)
    try:
        server = await endpoint.serve(sp, cfg.status_address, sock)
    except OSError as exc:
        raise click.ClickException(f"status endpoint: cannot listen on {cfg.status_address} and {sock}: {exc}") from None
    logging.getLogger("speaker").info("speaker.start node=%s asn=%s status=%s socket=%s", cfg.node_name,
                                      cfg.asn if cfg.asn is not None else "from-annotation", cfg.status_address, sock)
    try:
        return await sp.run()
    finally:
        server.close()
        monitor.close()
        kernel.close()


def _local_endpoint(f):
    """--socket and --config of the commands that ask the speaker's Unix socket; --address, which
    pointed them at the TCP address before /status and /explain left it, refused with the reason."""
    f = click.option("--address", hidden=True, expose_value=False, callback=_no_address)(f)
    f = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="the speaker's config file: its runtimeDir holds the socket")(f)
    return click.option("--socket", "socket", envvar="PODBGP_STATUS_SOCKET", metavar="PATH",
                        help="the speaker's Unix socket (default: <runtimeDir>/status.sock, runtimeDir from "
                             "$PODBGP_RUNTIME_DIR, else from --config, else /run/podbgp)")(f)


def _no_address(ctx, param, value) -> None:
    if value is not None:
        raise click.BadParameter("/status and /explain are served only on the node's Unix socket now; "
                                 "run this on the node, or give --socket PATH")


def _socket(socket: str | None, config_path: str | None) -> str:
    from . import endpoint
    from .config import runtime_dir

    if socket:
        return socket
    try:
        return endpoint.socket_path(runtime_dir(config_path))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _ask(sock: str, target: str) -> dict:
    from . import endpoint

    try:
        return endpoint.fetch(sock, target)
    except PermissionError as exc:
        raise click.ClickException(f"cannot open {sock}: {exc.strerror} (it is root's: run as root on the node)") from None
    except OSError as exc:
        raise click.ClickException(f"no speaker answers on {sock}: {exc}") from None
    except endpoint.EndpointError as exc:
        if exc.status == 404:
            raise click.ClickException(f"the speaker on {sock} does not answer {target.partition('?')[0]} "
                                       "(an older version?)") from None
        raise click.ClickException(str(exc)) from None


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
@_local_endpoint
def status_cmd(as_json: bool, socket: str | None, config_path: str | None) -> None:
    """Ask the speaker on this node for its peers, routes and rejections."""
    from . import status

    doc = _ask(_socket(socket, config_path), "/status")
    click.echo(json.dumps(doc, indent=2) if as_json else status.render_table(doc))


@main.command("explain")
@click.argument("prefix")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
@_local_endpoint
def explain_cmd(prefix: str, as_json: bool, socket: str | None, config_path: str | None) -> None:
    """Why PREFIX is or is not in this node's kernel: who holds it, who offers it, the policy's
    verdict on each path, what the kernel holds (a foreign route in the way included)."""
    from urllib.parse import quote

    from . import explain

    doc = _ask(_socket(socket, config_path), f"/explain?prefix={quote(prefix, safe='')}")
    click.echo(json.dumps(doc, indent=2) if as_json else explain.render(doc))


@main.group("config")
def config_group() -> None:
    """Configuration tools."""


@config_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def config_check(path: str) -> None:
    """Validate a configuration file without starting anything."""
    try:
        cfg = load(path, env={})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    asn = cfg.asn if cfg.asn is not None else "from the Node's podbgp.io/asn annotation"
    click.echo(f"ok: node {cfg.node_name} asn {asn}, {len(cfg.peers)} peer(s), "
               f"cluster {','.join(map(str, cfg.cluster_cidrs))}, service {','.join(map(str, cfg.service_cidrs)) or '-'}")


# ---- podbgp --version ------------------------------------------------------------------------


class _Versions:
    """podbgp's version and ExaBGP's, looked up only when --version asks (not at every start)."""

    def __str__(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("podbgp")
        except PackageNotFoundError:
            text = "(not installed)"
        try:
            return f"{text} (exabgp {version('exabgp')})"
        except PackageNotFoundError:
            return text


# applied to the group here, so the definition of `main` above stays as it is
click.version_option(_Versions(), "--version", prog_name="podbgp", message="%(prog)s %(version)s")(main)


# ---- podbgp host-route (the workstation's program: hostroute/cli.py) --------------------------

from hostroute.cli import host_route  # noqa: E402

main.add_command(host_route)

if __name__ == "__main__":
    main()
