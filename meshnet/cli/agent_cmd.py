"""`meshnet agent`: run the per-host agent in the foreground."""

from __future__ import annotations

from pathlib import Path

import click

from meshnet import config
from meshnet.discovery import parse_addr


@click.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=config.STATE_DIR,
              show_default=True, help="Where keys and the SQLite store live.")
@click.option("--listen", default=f"0.0.0.0:{config.CONTROL_PORT}", show_default=True,
              help="ADDR:PORT of the control listener (join handshake, replication).")
@click.option("--wireguard", type=click.Choice(["auto", "kernel", "userspace"]), default="auto",
              show_default=True, help="Kernel WireGuard via netlink, or wireguard-go.")
@click.option("--wireguard-go", "wireguard_go", default="wireguard-go", show_default=True,
              help="The wireguard-go binary for the userspace backend.")
@click.option("--wireguard-port", type=int, default=config.WIREGUARD_PORT, show_default=True)
@click.option("--interface", default=config.INTERFACE, show_default=True,
              help="Name of the WireGuard transit interface.")
@click.option("--name", default=None, help="Node name (default: the hostname).")
@click.option("--no-mdns", is_flag=True, help="Do not announce this member on the LAN.")
@click.option("--status-addr", default=f"127.0.0.1:{config.STATUS_PORT}", show_default=True,
              help="ADDR:PORT of the read-only status page and /metrics; 'off' for none.")
@click.option("--status-token", envvar="MESHNET_STATUS_TOKEN", default=None,
              help="Token the status page asks for; required unless --status-addr is loopback "
                   "(env MESHNET_STATUS_TOKEN).")
@click.option("--socket-group", default=None, metavar="GROUP",
              help="Let this group use the API socket too (mode 0660); default: root only.")
@click.option("--dns-forward", "dns_forward", multiple=True, metavar="IP[:PORT]",
              help="Resolver for names outside the cluster (default: the host's, from /etc/resolv.conf).")
@click.pass_context
def agent(ctx: click.Context, state_dir: Path, listen: str, wireguard: str, wireguard_go: str,
          wireguard_port: int, interface: str, name: str | None, no_mdns: bool, status_addr: str,
          status_token: str | None, socket_group: str | None, dns_forward: tuple[str, ...]) -> None:
    """Run the meshnet agent in the foreground (as root)."""
    from meshnet.agent import run
    from meshnet.api.status import check_bind, parse_status_addr

    try:
        host, port = parse_addr(listen)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--listen") from None
    try:
        status = parse_status_addr(status_addr)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--status-addr") from None
    if status is not None:
        check_bind(status[0], status_token)  # a MeshnetError: one line, exit 1
    run(config.AgentConfig(
        state_dir=state_dir, socket_path=Path(ctx.obj["socket"]), listen_host=host,
        listen_port=port, wireguard=wireguard, wireguard_go=wireguard_go, interface=interface,
        wireguard_port=wireguard_port, name=name, mdns=not no_mdns, status_addr=status_addr,
        status_token=status_token or None, dns_forward=list(dns_forward), socket_group=socket_group))
