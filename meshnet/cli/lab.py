"""`meshnet lab`: simulated hosts (namespaces) on this machine."""

from __future__ import annotations

import os
import signal

import click

from meshnet.cli.common import emit, format_option, table
from meshnet.config import STATUS_PORT
from meshnet.lab import Lab, labs

name_option = click.option("--name", default="lab", show_default=True, help="Lab name.")


@click.group()
def lab() -> None:
    """Simulated hosts for demos and tests."""


@lab.command("up")
@click.option("--hosts", type=int, default=3, show_default=True)
@click.option("--init", "do_init", is_flag=True, help="h1 runs init, the others join.")
@click.option("--status-port-base", type=int, default=STATUS_PORT, show_default=True,
              help="Forward 127.0.0.1:(BASE+K) here to host hK's status page; 0 picks free ports, "
                   "-1 forwards nothing.")
@name_option
def up(hosts: int, do_init: bool, status_port_base: int, name: str) -> None:
    """Build N hosts h1..hN on one LAN, an agent in each."""
    lb = Lab(name)
    lb.up(hosts, status_port_base=status_port_base if status_port_base >= 0 else None)
    click.echo(f"lab {name}: {hosts} hosts on {lb.lan_ns} ({', '.join(lb.ip(k) for k in lb.hosts())})")
    if do_init:
        lb.form_cluster()
        click.echo(f"lab {name}: h1 created the cluster, h2..h{hosts} joined")
    _print_status_urls(lb)


def _print_status_urls(lb: Lab) -> None:
    ports = lb.status_ports()
    if not ports:
        return
    click.echo(f"lab {lb.name}: status pages")
    for k, port in sorted(ports.items()):
        if isinstance(port, int):
            click.echo(f"  h{k}  http://127.0.0.1:{port}/")
        else:
            click.echo(f"  h{k}  not forwarded: {port}; pick other ports with --status-port-base")


@lab.command("down")
@name_option
def down(name: str) -> None:
    """Remove the lab: namespaces, processes, mounts, files."""
    Lab(name).down()
    click.echo(f"lab {name}: removed")


@lab.command("ls")
@format_option
def ls(fmt: str) -> None:
    """List labs on this machine."""
    emit(labs(), fmt, lambda rows: table(["NAME", "HOSTS", "AGENTS RUNNING", "DIR"], [
        [r["name"], r["hosts"], r["agents_running"], r["dir"]] for r in rows]))


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@name_option
@click.argument("host")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, host: str, argv: tuple[str, ...]) -> None:
    """Run a command on a lab host: meshnet lab exec h2 -- meshnet node ls"""
    lb = Lab(name)
    prefix = lb.enter(lb.host_index(host))
    os.execvp(prefix[0], [*prefix, *argv])


@lab.command("restart")
@name_option
@click.option("--kill", is_flag=True, help="SIGKILL the agent instead of a clean stop.")
@click.argument("host")
def restart(name: str, kill: bool, host: str) -> None:
    """Stop and start a lab host's agent."""
    lb = Lab(name)
    k = lb.host_index(host)
    lb.stop_agent(k, signal.SIGKILL if kill else signal.SIGTERM)
    lb.start_agent(k)
    click.echo(f"lab {name}: agent on {host} restarted")


