"""Helpers shared by the command modules: the API client and plain-text tables."""

from __future__ import annotations

import json
from pathlib import Path

import click

from meshnet.api.client import Client


def client(ctx: click.Context) -> Client:
    return Client(Path(ctx.obj["socket"]))


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def emit(data: object, fmt: str, render) -> None:
    """Print JSON when asked (`--format json`), else the human rendering."""
    click.echo(json.dumps(data, indent=2) if fmt == "json" else render(data))


def ref_arg(_ctx: click.Context, param: click.Parameter, value):
    """Callback for name arguments that address one object in an API path: '', '.' and '..'
    would address another route (the collection, a parent), so they are a usage error."""
    for v in value if isinstance(value, tuple) else (value,):
        if v is not None and v in ("", ".", ".."):
            raise click.BadParameter(f"{v!r} is not a name", param=param)
    return value


format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]),
                             default="table", show_default=True, help="Output format.")
# `inspect` prints JSON unless asked for a table, like `docker ... inspect`.
inspect_format_option = click.option("--format", "fmt", type=click.Choice(["json", "table"]),
                                     default="json", show_default=True, help="Output format.")


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"
