"""`podbgp lab ...`: the network-namespace lab (registered as a podbgp.commands entry point).

The lab runs from a checkout only: the wheel and the image ship no lab/. `make venv` puts the
checkout on its venv's path, which makes `podbgp lab` appear; `python -m lab.cli` from the
checkout's root does the same without it."""
from __future__ import annotations

import json
import os
import sys

import click

from . import runner


def _fail(exc: Exception):
    raise click.ClickException(str(exc))


@click.group()
def lab() -> None:
    """Run the lab (FRR ToR, nodes, Pods, lab API) in network namespaces, no Docker needed."""


@lab.command()
@click.argument("topology", required=False, default=runner.DEFAULT_TOPOLOGY, type=click.Path(exists=True, dir_okay=False))
@click.option("--name", help="lab name (default: the topology's name); prefixes every namespace")
@click.option("--no-speakers", is_flag=True,
              help="bring the lab up without podbgp on the nodes (and so without Pods: their CNI config is podbgp's)")
@click.option("--speaker-config", type=click.Path(exists=True, dir_okay=False),
              help="replace the ConfigMap's config.yaml with this file")
@click.option("--manifests", default=runner.DEFAULT_MANIFESTS, show_default=True,
              help="kustomization whose DaemonSet and ConfigMap start the speakers")
@click.option("--image", "images", multiple=True, metavar="NODE=IMAGE",
              help="run NODE's speaker from a container image (make image)")
def up(topology: str, name: str | None, no_speakers: bool, speaker_config: str | None, manifests: str,
       images: tuple[str, ...]) -> None:
    """Create the lab from a containerlab topology file."""
    try:
        state = runner.up(topology, name=name, speakers=not no_speakers, speaker_config=speaker_config,
                          manifests=manifests, speaker_images=dict(i.split("=", 1) for i in images))
    except runner.LabError as exc:
        _fail(exc)
    click.echo(f"lab {state.name} is up: {len(state.nodes)} nodes, {len(state.pods)} pods; "
               f"kubeconfig {state.kubeconfig}")


@lab.command()
@click.option("--name", help="lab name (default: the only lab up, or $PODBGP_LAB)")
def down(name: str | None) -> None:
    """Stop everything the lab started and delete its namespaces."""
    try:
        runner.down(name)
    except runner.LabError as exc:
        _fail(exc)
    click.echo("lab is down")


@lab.command()
@click.option("--name")
@click.option("--json", "as_json", is_flag=True)
def status(name: str | None, as_json: bool) -> None:
    """Nodes, Pods and their addresses."""
    try:
        doc = runner.status(name)
    except runner.LabError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"lab {doc['name']} (api pid {doc['apiserver']['pid']}, proxy pid {doc['proxy']['pid']}, "
               f"kubeconfig {doc['kubeconfig']})")
    for n in doc["nodes"]:
        click.echo(f"  {n['name']:<8} {n['role']:<5} {n['netns']:<22} {' '.join(n['addresses'])}")
    for p in doc["pods"]:
        click.echo(f"  {p['name']:<12} on {p['node']:<6} {p['netns']:<22} {p['ipv4']} {p['ipv6']}")


@lab.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--name")
@click.argument("target")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec(name: str | None, target: str, argv: tuple[str, ...]) -> None:  # noqa: A001
    """Run a command in a node or Pod: podbgp lab exec node1 -- ip route"""
    try:
        state = runner.State.load(name)
        args = list(argv[1:] if argv and argv[0] == "--" else argv)
        if not args:
            raise runner.LabError("no command given: podbgp lab exec NAME -- CMD...")
        full = runner.exec_argv(state, target, args)
    except runner.LabError as exc:
        _fail(exc)
    env = runner.tool_env({"KUBECACHEDIR": os.path.join(state.dir, "kubecache")})
    os.execvpe(full[0], full, env)


@lab.command()
@click.option("--name")
def kubeconfig(name: str | None) -> None:
    """Print the path of a kubeconfig for the lab API server."""
    try:
        click.echo(runner.State.load(name).kubeconfig)
    except runner.LabError as exc:
        _fail(exc)


@lab.command()
@click.argument("topology", required=False, default=runner.DEFAULT_TOPOLOGY, type=click.Path(exists=True, dir_okay=False))
@click.option("--name", default=None)
@click.option("--keep", is_flag=True, help="leave the lab up afterwards")
def demo(topology: str, name: str | None, keep: bool) -> None:
    """Bring the lab up, show the installed routes and a Pod-to-Pod ping matrix, tear down."""
    from .demo import run_demo

    sys.exit(run_demo(topology, name, keep))


if __name__ == "__main__":
    lab(prog_name="podbgp lab")
