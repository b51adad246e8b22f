"""`meshnet doctor`: check this host's setup (kernel, backend, rules, MTU, clock, files)."""

from __future__ import annotations

import click

from meshnet.cli.common import client, emit, format_option, table


@click.command()
@format_option
@click.pass_context
def doctor(ctx: click.Context, fmt: str) -> None:
    """Check the host setup; exits 1 when a check fails."""
    checks = client(ctx).get("/v1/doctor")["checks"]
    emit(checks, fmt, lambda cs: table(["CHECK", "STATUS", "DETAIL"],
                                       [[c["name"], c["status"].upper(), c["detail"]] for c in cs]))
    if any(c["status"] == "fail" for c in checks):
        ctx.exit(1)
