"""`meshnet network create | ls | inspect | rm`: overlay networks."""

from __future__ import annotations

from urllib.parse import quote

import click

from meshnet.cli.common import client, emit, format_option, inspect_format_option, ref_arg, table
from meshnet.errors import MeshnetError
from meshnet.plan.networks import parse_labels


@click.group()
def network() -> None:
    """Overlay networks that span every host."""


@network.command("create")
@click.option("-d", "--driver", default="overlay", show_default=True)
@click.option("--subnet", default=None, help="CIDR (default: the next free /24 of the pool).")
@click.option("--gateway", default=None, help="Reserved gateway address (default: first host).")
@click.option("--label", "labels", multiple=True, metavar="K=V")
@click.option("-o", "--opt", "opts", multiple=True, metavar="K=V",
              help="Driver option: mode=l2 (bridged VXLAN, the default) or mode=l3 (routed).")
@click.argument("name")
@click.pass_context
def create(ctx: click.Context, driver: str, subnet: str | None, gateway: str | None,
           labels: tuple[str, ...], opts: tuple[str, ...], name: str) -> None:
    """Create an overlay network."""
    out = client(ctx).post("/v1/networks", {"name": name, "driver": driver, "subnet": subnet,
                                            "gateway": gateway, "labels": parse_labels(labels),
                                            "options": parse_labels(opts, "option")})
    click.echo(out["Id"])


@network.command("ls")
@format_option
@click.pass_context
def ls(ctx: click.Context, fmt: str) -> None:
    """List networks."""
    nets = client(ctx).get("/v1/networks")["networks"]
    emit(nets, fmt, lambda ns: table(
        ["NETWORK ID", "NAME", "DRIVER", "MODE", "SCOPE", "SUBNET", "VNI", "ENDPOINTS"],
        [[n["id"][:12], n["name"], n["driver"], n["mode"], n["scope"], n["subnet"], n["vni"], n["endpoints"]]
         for n in ns]))


@network.command("inspect")
@inspect_format_option
@click.argument("names", nargs=-1, required=True, callback=ref_arg)
@click.pass_context
def inspect(ctx: click.Context, fmt: str, names: tuple[str, ...]) -> None:
    """Show networks as JSON shaped like `docker network inspect` (the default), or a table."""
    c = client(ctx)
    nets = [c.get(f"/v1/networks/{quote(n, safe='')}") for n in names]
    emit(nets, fmt, lambda ns: table(["NAME", "ID", "SUBNET", "VNI", "ENDPOINTS", "PEERS"], [
        [n["Name"], n["Id"][:12], n["IPAM"]["Config"][0]["Subnet"],
         n["Options"]["com.docker.network.driver.overlay.vxlanid_list"], len(n["Containers"]),
         ",".join(p["Name"] for p in n["Peers"])] for n in ns]))


@network.command("rm")
@click.option("-f", "--force", is_flag=True, help="Remove even with endpoints attached.")
@click.argument("names", nargs=-1, required=True, callback=ref_arg)
@click.pass_context
def rm(ctx: click.Context, force: bool, names: tuple[str, ...]) -> None:
    """Remove networks (refused while endpoints are attached, unless --force)."""
    c = client(ctx)
    failed = []
    for n in names:
        try:
            click.echo(c.delete(f"/v1/networks/{quote(n, safe='')}", force="1" if force else "0")["removed"])
        except MeshnetError as e:
            failed.append(str(e))
    if failed:
        raise MeshnetError("; ".join(failed))
