"""`podbgp host-route`: route a workstation or VM host to the Pod network through the nodes.

The command's Kubernetes side (which Node owns which PodCIDR, following Node changes, through the
speaker's Node parsing and watcher) and its foreground loop; the routing table itself is
hostroute.routes' (netlink or route(8)). Registered as `podbgp host-route` by speaker.cli.
"""
from __future__ import annotations

import asyncio
import logging
import sys

import click

_hlog = logging.getLogger(__name__)


class _HostRouteFailed(click.ClickException):
    """One line on stderr, `podbgp host-route: <reason>`; exit 1, or 2 for bad usage."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"podbgp host-route: {self.format_message()}", err=True)


def _setup_logging(level: str) -> None:
    """The speaker's text log format (speaker.logs), so both commands' lines grep alike; a handler
    already in place (a test's) is kept."""
    from speaker.logs import TEXT_FORMAT

    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr, format=TEXT_FORMAT)


def _node_routes(nodes) -> tuple[list, list[str]]:
    """(routes, notes): each Node's spec.podCIDRs via its InternalIP of the same family; a note for
    each CIDR whose Node has no InternalIP of that family (skipped)."""
    from .routes import HostRoute

    routes, notes = [], []
    for node in sorted(nodes, key=lambda n: n.name):
        for cidr in node.pod_cidrs:
            gw = node.address(cidr.version)
            if gw is None:
                notes.append(f"node {node.name}: no InternalIP of IPv{cidr.version} for podCIDR {cidr}; skipped")
            else:
                routes.append(HostRoute(cidr, gw))
    return routes, notes


def _desired(routes, summarize: bool, strict: bool) -> list:
    """The routes to install: refused with one line if they overlap (strict, at start), else the
    overlapping ones left out and reported; merged per gateway with --summarize."""
    from . import routes as hostroute

    routes = hostroute.check(routes) if strict else routes
    good, problems = hostroute.split(routes)
    for line in problems:
        _hlog.warning("hostroute.refused %s; left out", line)
    return hostroute.summarize(good) if summarize else good


def _list_nodes(kubeconfig: str) -> list:
    """The Nodes, one list (for --once and --remove); Nodes podbgp cannot parse are reported."""
    from speaker.nodes import NodeError, parse_node
    from speaker.kubeclient import NODES, KubeClient

    nodes = []
    for obj in KubeClient(kubeconfig).list(NODES):
        try:
            nodes.append(parse_node(obj))
        except NodeError as exc:
            _hlog.warning("hostroute.node.invalid reason=%s", exc)
    return nodes


def _watch_nodes(kubeconfig: str, emit):
    """Start following the Nodes (list, then watch); returns the function that stops it."""
    from speaker.kubeclient import KubeClient
    from speaker.nodewatch import NodeWatcher

    watcher = NodeWatcher(KubeClient(kubeconfig), emit, label_keys=frozenset())  # no label is read here
    watcher.start()
    return watcher.close


@click.command("host-route")
@click.argument("cidrs", nargs=-1)
@click.option("--via", "vias", multiple=True, metavar="NODE_IP", help="gateway for the CIDRs (one per family)")
@click.option("--kubeconfig", help="route every Node's spec.podCIDRs via its InternalIP of the same family")
@click.option("--once", is_flag=True, help="add the routes and exit; they stay until --remove")
@click.option("--remove", is_flag=True, help="remove the routes (on Linux: those carrying --protocol) and exit")
@click.option("--summarize", is_flag=True, help="merge CIDRs through the same gateway into the fewest prefixes")
@click.option("--protocol", type=int, default=81, show_default=True,
              help="Linux route protocol marking host-route's routes (the speaker's is 80)")
@click.option("--log-level", default="info", show_default=True)
@click.pass_context
def host_route(ctx, cidrs, vias, kubeconfig, once, remove, summarize, protocol, log_level) -> None:
    """Route this workstation or VM to the Pod network through the nodes.

    `--via NODE_IP CIDR...` routes the CIDRs via that address; `--kubeconfig K` routes each
    Node's PodCIDRs via that Node's InternalIP. Stays in the foreground, following Node changes
    with --kubeconfig, and removes exactly the routes it added on SIGINT or SIGTERM. A
    destination that already has a route is reported and left alone, never replaced.
    """
    from . import routes as hostroute

    _setup_logging(log_level)
    obj = ctx.obj or {}  # tests inject "backend" (a factory), "list_nodes", "watch_nodes" here
    try:
        if bool(vias) == bool(kubeconfig):
            raise _HostRouteFailed("give --via NODE_IP with CIDRs, or --kubeconfig (one of the two)", 2)
        if kubeconfig and cidrs:
            raise _HostRouteFailed("with --kubeconfig the CIDRs come from the Nodes; give none", 2)
        if vias and not cidrs:
            raise _HostRouteFailed("--via needs the CIDRs to route", 2)
        if once and remove:
            raise _HostRouteFailed("--once and --remove exclude each other", 2)
        hostroute.check_protocol(protocol)
        given = hostroute.via_routes(cidrs, vias) if vias else None
        if given is not None:
            given = hostroute.check(given)
    except hostroute.HostRouteError as exc:
        raise _HostRouteFailed(str(exc), 2) from None
    try:
        backend = (obj.get("backend") or (lambda: hostroute.backend_for(sys.platform, protocol)))()
    except hostroute.HostRouteError as exc:
        raise _HostRouteFailed(str(exc)) from None
    try:
        sys.exit(_host_route_run(obj, backend, given, kubeconfig, once, remove, summarize))
    except hostroute.NeedsPrivilege:
        raise _HostRouteFailed(backend.needs_privilege) from None
    except hostroute.HostRouteError as exc:
        raise _HostRouteFailed(str(exc)) from None
    finally:
        backend.close()


def _host_route_run(obj, backend, given, kubeconfig, once, remove, summarize) -> int:
    from .routes import HostRouter

    router = HostRouter(backend)
    if given is None and (once or remove):
        try:
            nodes = (obj.get("list_nodes") or _list_nodes)(kubeconfig)
        except Exception as exc:  # config, network, HTTP: one line
            raise _HostRouteFailed(f"cannot list Nodes with {kubeconfig}: {_first_line(exc)}") from None
        given, notes = _node_routes(nodes)
        for line in notes:
            _hlog.warning("hostroute.node.skip %s", line)
        given = _desired(given, summarize, strict=not remove)
    elif given is not None and summarize:
        given = _desired(given, summarize, strict=True)
    if remove:
        out = router.remove_matching(given)
        _hlog.info("hostroute.removed count=%d failed=%d", len(out.removed), len(out.failed))
        return 1 if out.failed else 0
    if once:
        out = router.apply(given)
        _hlog.info("hostroute.done added=%d kept=%d skipped=%d failed=%d; they stay (remove with --remove)",
                   len(out.added), len(out.kept), len(out.skipped), len(out.failed))
        return 1 if out.failed or out.skipped else 0
    watch = None if given is not None else (obj.get("watch_nodes") or _watch_nodes)
    return asyncio.run(_host_route_foreground(router, given, watch, kubeconfig, summarize))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


async def _host_route_foreground(router, given, watch, kubeconfig, summarize) -> int:
    """Add, then wait for SIGINT/SIGTERM/SIGHUP (following the Nodes if `watch`); on the way out,
    whatever happened, remove exactly the routes this process added."""
    import signal
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    events: asyncio.Queue = asyncio.Queue()
    # pyroute2's IPRoute runs an event loop of its own, which it cannot inside a running one:
    # the router's calls go to one worker thread, one at a time
    pool = ThreadPoolExecutor(1, thread_name_prefix="host-route")

    def call(fn, *args):
        return loop.run_in_executor(pool, fn, *args)

    close = None
    try:
        if watch is None:
            out = await call(router.apply, given)
            _hlog.info("hostroute.ready added=%d kept=%d skipped=%d failed=%d; routes what was given, "
                       "until SIGINT/SIGTERM", len(out.added), len(out.kept), len(out.skipped), len(out.failed))
            if not out.added:
                _hlog.error("hostroute.nothing-added; exiting")
                return 1
        else:
            def emit(event) -> None:  # called in the watcher's thread
                try:
                    loop.call_soon_threadsafe(events.put_nowait, event)
                except RuntimeError:  # the loop has finished: on the way out
                    pass

            close = watch(kubeconfig, emit)
            await _follow_nodes(call, router, events, stop, kubeconfig, summarize)
            return 0
        await stop.wait()
        return 0
    finally:
        if close is not None:
            close()
        try:
            out = await call(router.remove_added)
            _hlog.info("hostroute.stopped removed=%d failed=%d", len(out.removed), len(out.failed))
        finally:
            pool.shutdown()


async def _follow_nodes(call, router, events: asyncio.Queue, stop: asyncio.Event, kubeconfig: str,
                        summarize: bool) -> None:
    """Route the Nodes' PodCIDRs from the first full list on, re-applied after every change (new
    Nodes get routes, deleted ones lose them), until `stop`. An API outage leaves the routes."""
    from speaker.listwatch import ApiDown, Changed

    nodes: dict = {}
    listed = applied = False
    notes: list[str] = []
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while True:
            got = asyncio.ensure_future(events.get())
            await asyncio.wait({got, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stopped.done():
                got.cancel()
                return
            batch = [got.result()]
            while not events.empty():
                batch.append(events.get_nowait())
            changed = False
            for event in batch:
                if isinstance(event, ApiDown) and not listed:
                    raise _HostRouteFailed(f"cannot list Nodes with {kubeconfig}: {event.error}")
                if isinstance(event, ApiDown):
                    _hlog.warning("hostroute.api.down error=%s; the routes stay", event.error)
                elif isinstance(event, Changed):
                    _merge_nodes(nodes, event)
                    changed, listed = True, listed or event.synced
            if not (changed and listed):
                continue
            routes, now = _node_routes(nodes.values())
            for line in sorted(set(now) - set(notes)):
                _hlog.warning("hostroute.node.skip %s", line)
            notes = now
            out = await call(router.apply, _desired(routes, summarize, strict=not applied))
            if not applied:
                applied = True
                _hlog.info("hostroute.ready nodes=%d added=%d kept=%d skipped=%d failed=%d; following Node changes "
                           "until SIGINT/SIGTERM", len(nodes), len(out.added), len(out.kept), len(out.skipped),
                           len(out.failed))
    finally:
        stopped.cancel()


def _merge_nodes(nodes: dict, event) -> None:
    """Apply one watcher `Changed` to the Nodes by name."""
    nodes.update((n.name, n) for n in event.values)
    for name, reason in event.invalid:
        nodes.pop(name, None)
        _hlog.warning("hostroute.node.invalid node=%s reason=%s", name, reason)
    for name in event.deleted:
        nodes.pop(name, None)
