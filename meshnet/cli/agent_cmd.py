"""`meshnet agent`: run the per-host agent in the foreground."""

from __future__ import annotations

import grp
from pathlib import Path

import click

from meshnet import config
from meshnet.discovery import parse_addr
from meshnet.errors import MeshnetError


def _check_options(name: str | None, interface: str, socket_group: str | None,
                   dns_forward: tuple[str, ...]) -> None:
    """Refuse bad options before anything is written (each a one-line usage error)."""
    from meshnet.dns.server import _parse_forwarder
    from meshnet.plan.networks import check_name

    if name is not None:
        try:
            check_name(name, "node")
        except MeshnetError as e:
            raise click.BadParameter(str(e), param_hint="--name") from None
    if not (0 < len(interface) < 16) or any(c in interface for c in "/: \t\n") or interface in (".", ".."):
        raise click.BadParameter(f"{interface!r} is not a Linux interface name (1-15 characters, "
                                 "no '/', ':' or spaces)", param_hint="--interface")
    if socket_group is not None:
        try:
            grp.getgrnam(socket_group)
        except KeyError:
            raise click.BadParameter(f"no group {socket_group!r}", param_hint="--socket-group") from None
    for fw in dns_forward:
        try:
            _parse_forwarder(fw)
        except (OSError, ValueError):
            raise click.BadParameter(f"{fw!r} is not IP[:PORT]", param_hint="--dns-forward") from None


@click.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=config.STATE_DIR,
              show_default=True, help="Where keys and the SQLite store live.")
@click.option("--listen", default=f"0.0.0.0:{config.CONTROL_PORT}", show_default=True,
              help="ADDR:PORT of the control listener (join handshake, replication).")
@click.option("--wireguard", type=click.Choice(["auto", "kernel", "userspace"]), default="auto",
              show_default=True, help="Kernel WireGuard via netlink, or wireguard-go.")
@click.option("--wireguard-go", "wireguard_go", default=config.default_wireguard_go,
              show_default=f"{config.NEWER_WIREGUARD_GO} if present, else wireguard-go",
              help="The wireguard-go binary for the userspace backend.")
@click.option("--wireguard-port", type=click.IntRange(1, 65535), default=config.WIREGUARD_PORT,
              show_default=True)
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
    _check_options(name, interface, socket_group, dns_forward)
    if status is not None:
        check_bind(status[0], status_token)  # a MeshnetError: one line, exit 1
    run(config.AgentConfig(
        state_dir=state_dir, socket_path=Path(ctx.obj["socket"]), listen_host=host,
        listen_port=port, wireguard=wireguard, wireguard_go=wireguard_go, interface=interface,
        wireguard_port=wireguard_port, name=name, mdns=not no_mdns, status_addr=status_addr,
        status_token=status_token or None, dns_forward=list(dns_forward), socket_group=socket_group))
