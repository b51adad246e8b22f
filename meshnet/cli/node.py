"""`meshnet node ls`: the members of the cluster."""

from __future__ import annotations

import time
from urllib.parse import quote

import click

from meshnet.cli.common import age, client, emit, format_option, ref_arg, table
from meshnet.plan.networks import parse_labels


@click.group()
def node() -> None:
    """Cluster members."""


@node.command("ls")
@format_option
@click.pass_context
def ls(ctx: click.Context, fmt: str) -> None:
    """List members: name, id, transit IP, underlay endpoint, state, last handshake."""
    nodes = client(ctx).get("/v1/nodes")["nodes"]

    def render(ns: list[dict]) -> str:
        now = time.time()
        return table(["NAME", "ID", "TRANSIT IP", "ENDPOINT", "STATE", "SINCE", "HANDSHAKE", "LABELS"], [
            [n["name"] + (" *" if n["self"] else ""), n["id"], n["transit_ip"], n["endpoint"],
             n.get("health", n["state"]),
             age(now - n["health_since"]) if n.get("health_since") else "-",
             "self" if n["self"] else age(n["handshake_age"]),
             ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items()))] for n in ns])

    emit(nodes, fmt, render)


@node.command("rm")
@click.argument("names", nargs=-1, required=True, callback=ref_arg)
@click.pass_context
def rm(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Remove members: every node drops them and refuses their state from now on."""
    c = client(ctx)
    for n in names:
        click.echo(c.delete(f"/v1/nodes/{quote(n, safe='')}")["removed"])


@node.command("update")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Add or change a label.")
@click.option("--label-rm", "remove", multiple=True, metavar="K", help="Remove a label.")
@click.argument("name", required=False, callback=ref_arg)
@click.pass_context
def update(ctx: click.Context, labels: tuple[str, ...], remove: tuple[str, ...], name: str | None) -> None:
    """Set a node's labels (default: this node), for placement constraints."""
    out = client(ctx).post(f"/v1/nodes/{quote(name or 'self', safe='')}/labels",
                           {"add": parse_labels(labels), "remove": list(remove)})
    click.echo(f"{out['name']}: " + (", ".join(f"{k}={v}" for k, v in sorted(out["labels"].items()))
                                     or "no labels"))
