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


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def _usage_line(e: click.UsageError) -> str:
    """A usage error as one line, naming the command whose --help explains it."""
    names, ctx = [], e.ctx
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    where = " ".join(["meshnet", *reversed(names)])
    return f"meshnet: error: {e.format_message()} (see `{where} --help`)"


def main() -> None:
    try:
        # standalone_mode=False returns ctx.exit(N)'s code instead of exiting: pass it on
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except _NO_ARGS_IS_HELP as e:  # `meshnet node` alone: the help, exit 2
        e.show()
        sys.exit(e.exit_code)
    except click.UsageError as e:  # bad options or arguments: one line, exit 2
        click.echo(_usage_line(e), err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except MeshnetError as e:
        click.echo(f"meshnet: error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
