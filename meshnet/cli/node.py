"""`meshnet node ls`: the members of the cluster."""

from __future__ import annotations

import click

from meshnet.cli.common import age, client, emit, format_option, table


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
        return table(["NAME", "ID", "TRANSIT IP", "ENDPOINT", "STATE", "HANDSHAKE"], [
            [n["name"] + (" *" if n["self"] else ""), n["id"], n["transit_ip"], n["endpoint"],
             n["state"], "self" if n["self"] else age(n["handshake_age"])] for n in ns])

    emit(nodes, fmt, render)
