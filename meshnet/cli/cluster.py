"""`meshnet init | join | token | leave`: making and changing membership."""

from __future__ import annotations

import ipaddress

import click

from meshnet.cli.common import client
from meshnet.errors import MeshnetError


@click.command()
@click.option("--advertise-addr", default=None, metavar="IP[:PORT]",
              help="Address other hosts reach this one at (default: the default route's source).")
@click.option("--transit-cidr", default=None, help="Range for transit addresses (default 10.249.0.0/16).")
@click.option("--network-pool", default=None, help="Pool for overlay subnets (default 10.10.0.0/16).")
@click.option("--encryption", type=click.Choice(["wireguard", "ipsec"]), default=None,
              help="Transit encryption for the whole cluster (default wireguard; see docs/ipsec.md).")
@click.pass_context
def init(ctx: click.Context, advertise_addr, transit_cidr, network_pool, encryption) -> None:
    """Create a cluster with this host as its first member."""
    for cidr, what in ((transit_cidr, "transit range"), (network_pool, "network pool")):
        try:
            if cidr is not None:
                ipaddress.ip_network(cidr)
        except ValueError:  # the agent says the same, but only after "already a member"
            raise MeshnetError(f"invalid {what} {cidr!r}: expected a CIDR like 10.249.0.0/16") from None
    out = client(ctx).post("/v1/init", {"advertise_addr": advertise_addr,
                                        "transit_cidr": transit_cidr, "network_pool": network_pool,
                                        "encryption": encryption})
    click.echo(f"Cluster {out['cluster_id']} created. To add a host, run there:\n\n"
               f"    {out['join_command']}\n")


@click.command()
@click.option("--token", required=True, help="The join token (`meshnet token` on a member).")
@click.option("--advertise-addr", default=None, metavar="IP", help="This host's underlay address.")
@click.argument("addrs", nargs=-1, metavar="[ADDR[:PORT]]...")
@click.pass_context
def join(ctx: click.Context, token: str, advertise_addr: str | None, addrs: tuple[str, ...]) -> None:
    """Join a cluster through any listed member, or one found on the LAN by mDNS."""
    out = client(ctx).post("/v1/join", {"token": token, "addrs": list(addrs),
                                        "advertise_addr": advertise_addr})
    click.echo(f"Joined cluster {out['cluster_id']} as {out['transit_ip']} "
               f"({out['members']} members).")


@click.group(invoke_without_command=True)
@click.option("--quiet", "-q", is_flag=True, help="Print only the token.")
@click.pass_context
def token(ctx: click.Context, quiet: bool) -> None:
    """Print the join token and command again (`token rotate` makes a new one)."""
    if ctx.invoked_subcommand is None:
        out = client(ctx).get("/v1/token")
        click.echo(out["token"] if quiet else out["join_command"])


@token.command("rotate")
@click.pass_context
def token_rotate(ctx: click.Context) -> None:
    """Issue a new join token: the old one stops admitting nodes; members are unaffected."""
    out = client(ctx).post("/v1/token/rotate")
    click.echo(f"New join command (the old token no longer works):\n\n    {out['join_command']}\n")


@click.group()
def keys() -> None:
    """This node's keys."""


@keys.command("rotate")
@click.pass_context
def keys_rotate(ctx: click.Context) -> None:
    """Give this node a new WireGuard key, without an outage: peers learn it first."""
    out = client(ctx).post("/v1/keys/rotate")
    click.echo(f"WireGuard public key {out['old']} -> {out['new']}")


@click.command()
@click.pass_context
def leave(ctx: click.Context) -> None:
    """Leave the cluster: peers drop this host, the tunnel is removed, keys are kept."""
    out = client(ctx).post("/v1/leave")
    click.echo(f"Left cluster {out['left']}.")
