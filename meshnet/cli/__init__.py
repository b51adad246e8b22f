"""The `meshnet` command. One module per command group; each talks only to the API client."""

from __future__ import annotations

import sys

import click

from meshnet.cli.agent_cmd import agent
from meshnet.cli.cluster import init, join, keys, leave, token
from meshnet.cli.doctor import doctor
from meshnet.cli.endpoint import attach, detach, endpoint, exec_, run
from meshnet.cli.lab import lab
from meshnet.cli.network import network
from meshnet.cli.node import node
from meshnet.cli.service import service
from meshnet.cli.status import status
from meshnet.errors import MeshnetError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", envvar="MESHNET_SOCKET", default="/run/meshnet/agent.sock",
              show_default=True, help="The local agent's API socket.")
@click.pass_context
def cli(ctx: click.Context, socket_path: str) -> None:
    """meshnet: encrypted overlay networks across Linux hosts."""
    ctx.obj = {"socket": socket_path}


for command in (agent, init, join, token, keys, leave, status, doctor, node, network, service, run,
                exec_, attach, detach, endpoint, lab):
    cli.add_command(command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except MeshnetError as e:
        click.echo(f"meshnet: error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
