"""Endpoints: `meshnet run | exec | attach | detach` and `meshnet endpoint ls | rm`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import quote

import click

from meshnet.cli.common import client, emit, format_option, ref_arg, table
from meshnet.errors import MeshnetError


def _enter(ep: dict) -> list[str]:
    """argv prefix that runs a command inside an endpoint (with its own /etc files)."""
    path = ep["netns"]
    if path.startswith("/run/netns/"):
        return ["ip", "netns", "exec", Path(path).name]
    return ["nsenter", f"--net={path}", "--"]


def _local(ctx: click.Context, name: str) -> dict:
    ep = client(ctx).get(f"/v1/endpoints/{quote(name, safe='')}")
    if not ep["local"]:
        raise MeshnetError(f"endpoint {ep['name']!r} runs on {ep['node']}, not here: run this there")
    return ep


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--network", required=True, help="Network to attach the endpoint to.")
@click.option("--name", default=None, help="Endpoint name (unique in the cluster).")
@click.option("--ip", default=None, help="A fixed address in the network's subnet.")
@click.option("-d", "--detach", "detached", is_flag=True, help="Run in the background.")
@click.option("--rm", "remove", is_flag=True, help="Remove the endpoint when the command exits.")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, network: str, name: str | None, ip: str | None, detached: bool,
        remove: bool, argv: tuple[str, ...]) -> None:
    """Run a command in a new endpoint: a namespace with eth0 on the overlay."""
    if detached and remove:
        raise click.UsageError("--rm and -d do not go together")
    c = client(ctx)
    ep = c.post("/v1/endpoints", {"network": network, "name": name, "ip": ip})
    cmd = [*_enter(ep), *argv]
    if detached:
        log = Path("/run/meshnet") / f"{ep['name']}.log"
        with open(log, "ab") as f:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                    start_new_session=True)
        click.echo(f"{ep['name']} {ep['ip']} pid {proc.pid} (log: {log})")
        return
    try:
        code = subprocess.call(cmd)
    finally:
        if remove:
            c.delete(f"/v1/endpoints/{quote(ep['name'], safe='')}")
    ctx.exit(code)


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name", callback=ref_arg)
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(ctx: click.Context, name: str, argv: tuple[str, ...]) -> None:
    """Run a command inside an endpoint on this host, like `docker exec`."""
    cmd = [*_enter(_local(ctx, name)), *argv]
    os.execvp(cmd[0], cmd)


@click.command()
@click.option("--network", required=True)
@click.option("--pid", type=int, default=None, help="A process whose network namespace to attach.")
@click.option("--netns", default=None, help="A named network namespace (ip netns) to attach.")
@click.option("--name", default=None)
@click.option("--ip", default=None)
@click.pass_context
def attach(ctx: click.Context, network: str, pid: int | None, netns: str | None, name: str | None,
           ip: str | None) -> None:
    """Connect an existing namespace (a container's, by PID) to a network."""
    if (pid is None) == (netns is None):
        raise click.UsageError("give exactly one of --pid and --netns")
    ep = client(ctx).post("/v1/endpoints", {"network": network, "pid": pid, "netns": netns,
                                            "name": name, "ip": ip})
    click.echo(f"{ep['name']} {ep['ip']} ({ep['mac']})")


@click.command()
@click.argument("name", callback=ref_arg)
@click.pass_context
def detach(ctx: click.Context, name: str) -> None:
    """Disconnect an attached namespace (by endpoint name)."""
    click.echo(client(ctx).delete(f"/v1/endpoints/{quote(name, safe='')}")["removed"])


@click.group()
def endpoint() -> None:
    """Endpoints on overlay networks."""


@endpoint.command("ls")
@format_option
@click.pass_context
def ls(ctx: click.Context, fmt: str) -> None:
    """List endpoints of every host."""
    eps = client(ctx).get("/v1/endpoints")["endpoints"]
    emit(eps, fmt, lambda es: table(["NAME", "NETWORK", "NODE", "IP", "MAC"], [
        [e["name"], e["network"], e["node"], e["ip"], e["mac"]] for e in es]))


@endpoint.command("rm")
@click.argument("names", nargs=-1, required=True, callback=ref_arg)
@click.pass_context
def rm(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Remove endpoints of this host (their namespace goes with them)."""
    c = client(ctx)
    for n in names:
        click.echo(c.delete(f"/v1/endpoints/{quote(n, safe='')}")["removed"])
