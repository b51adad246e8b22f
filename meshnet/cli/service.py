"""`meshnet service ...`: replicated services and their tasks."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import click

from meshnet.cli.common import client, emit, format_option, inspect_format_option, ref_arg, table
from meshnet.errors import MeshnetError
from meshnet.plan.networks import parse_labels


def _path(name: str, rest: str = "") -> str:
    return f"/v1/services/{quote(name, safe='')}{rest}"


@click.group()
def service() -> None:
    """Replicated services: tasks placed across hosts, found by name."""


def _spec_options(f):
    for opt in reversed([
        click.option("--replicas", type=int, default=None, help="Number of tasks (default 1)."),
        click.option("--env", "env", multiple=True, metavar="K=V"),
        click.option("--restart-condition", "restart", type=click.Choice(["any", "on-failure", "none"]),
                     default=None),
        click.option("--constraint", "constraints", multiple=True,
                     metavar="node.name==X|node.labels.K==V"),
    ]):
        f = opt(f)
    return f


@service.command("create", context_settings={"ignore_unknown_options": True})
@click.option("--name", required=True)
@click.option("--network", "networks", multiple=True, required=True)
@click.option("--endpoint-mode", type=click.Choice(["vip", "dnsrr"]), default="vip", show_default=True)
@_spec_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def create(ctx, name, networks, endpoint_mode, replicas, env, restart, constraints, command) -> None:
    """Create a service: meshnet service create --name web --network appnet -- CMD ..."""
    out = client(ctx).post("/v1/services", {
        "name": name, "networks": list(networks), "endpoint_mode": endpoint_mode,
        "replicas": 1 if replicas is None else replicas, "env": parse_labels(env),
        "restart": restart, "constraints": list(constraints), "command": list(command)})
    click.echo(out["ID"])


@service.command("ls")
@format_option
@click.pass_context
def ls(ctx, fmt: str) -> None:
    """List services: name, mode, replicas running/desired."""
    svcs = client(ctx).get("/v1/services")["services"]
    emit(svcs, fmt, lambda ss: table(["ID", "NAME", "MODE", "REPLICAS", "ENDPOINT", "COMMAND"], [
        [s["id"][:12], s["name"], s["mode"], f"{s['running']}/{s['replicas']}", s["endpoint_mode"],
         " ".join(s["command"])[:40]] for s in ss]))


@service.command("ps")
@format_option
@click.argument("name", callback=ref_arg)
@click.pass_context
def ps(ctx, fmt: str, name: str) -> None:
    """List a service's tasks: node, state, IP, since, last error."""
    tasks = client(ctx).get(_path(name, "/ps"))["tasks"]
    emit(tasks, fmt, lambda ts: table(["TASK", "NODE", "STATE", "IP", "SINCE", "RESTARTS", "ERROR"], [
        [t["task"], t["node"], t["state"], t["ip"], t["since"], t["restarts"], t["error"]] for t in ts]))


@service.command("inspect")
@inspect_format_option
@click.argument("names", nargs=-1, required=True, callback=ref_arg)
@click.pass_context
def inspect(ctx, fmt: str, names: tuple[str, ...]) -> None:
    """Show services: JSON (`--format json`) or a short table."""
    c = client(ctx)
    svcs = [c.get(_path(n)) for n in names]
    emit(svcs, fmt, lambda ss: table(["NAME", "REPLICAS", "RUNNING", "MODE", "VIPS", "PLACEMENT"], [
        [s["Name"], s["Spec"]["Mode"]["Replicated"]["Replicas"], s["Running"],
         s["Spec"]["EndpointSpec"]["Mode"],
         ",".join(f"{v['Network']}={v['Addr']}" for v in s["Endpoint"]["VirtualIPs"]) or "-",
         " ".join(f"{k}:{v}" for k, v in sorted(s["Placement"].items(), key=lambda kv: int(kv[0])))]
        for s in ss]))


@service.command("scale")
@click.argument("pairs", nargs=-1, required=True, metavar="NAME=N...")
@click.pass_context
def scale(ctx, pairs: tuple[str, ...]) -> None:
    """Set the number of tasks: meshnet service scale backend=3 frontend=3"""
    c = client(ctx)
    for pair in pairs:
        name, sep, n = pair.partition("=")
        if not sep or name in ("", ".", "..") or not n.lstrip("-").isdigit():
            raise MeshnetError(f"invalid scale {pair!r}: expected NAME=N with N a whole number")
        out = c.patch(_path(name), {"replicas": int(n)})
        click.echo(f"{out['Name']} scaled to {n}")


@service.command("update")
@_spec_options
@click.option("--command", "command", default=None, help="New command, as one shell-quoted string.")
@click.argument("name", callback=ref_arg)
@click.pass_context
def update(ctx, replicas, env, restart, constraints, command, name) -> None:
    """Change a service's spec (tasks restart when command or env change)."""
    import shlex

    body: dict = {"replicas": replicas, "restart": restart}
    if env:
        body["env"] = parse_labels(env)
    if constraints:
        body["constraints"] = list(constraints)
    if command is not None:
        try:
            body["command"] = shlex.split(command)
        except ValueError as e:  # an unclosed quote
            raise click.BadParameter(f"{command!r}: {e}", param_hint="--command") from None
    out = client(ctx).patch(_path(name), body)
    click.echo(f"{out['Name']} updated (spec version {out['Spec']['Version']})")


@service.command("rm")
@click.argument("names", nargs=-1, required=True, callback=ref_arg)
@click.pass_context
def rm(ctx, names: tuple[str, ...]) -> None:
    """Remove services (their tasks get SIGTERM, then SIGKILL)."""
    c = client(ctx)
    for n in names:
        click.echo(c.delete(_path(n))["removed"])


@service.command("logs")
@click.option("-f", "--follow", is_flag=True)
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines of each task.")
@click.argument("name", callback=ref_arg)
@click.pass_context
def logs(ctx, follow: bool, tail: int | None, name: str) -> None:
    """Show the output of a service's tasks, gathered from every node."""
    c = client(ctx)
    offsets: dict[str, int] = {}
    query = f"?tail={tail}" if tail is not None else ""
    while True:
        out = c.get(_path(name, "/logs") + (query if not offsets else
                                            f"?offsets={quote(json.dumps(offsets))}"))
        for entry in out["logs"]:
            key = f"{entry['node']}/{entry['task']}"
            for line in entry["lines"]:
                click.echo(f"{entry['task']}@{entry['node']} | {line}")
            offsets[key] = entry["size"]
        if not follow:
            return
        time.sleep(1)
