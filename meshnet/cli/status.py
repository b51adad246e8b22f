"""`meshnet status`: the status page's overview in the terminal (rich tables)."""

from __future__ import annotations

import datetime
import json

import click

from meshnet.cli.common import age, client, format_option

COLOURS = {"self": "blue", "fresh": "green", "stale": "yellow", "dead": "red", "left": "dim"}


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(o: dict, console) -> None:
    from functools import partial

    from rich import box
    from rich.table import Table as RichTable

    Table = partial(RichTable, box=box.SIMPLE_HEAD, title_justify="left", title_style="bold")

    c, me = o["cluster"], o["node"]
    if not c["member"]:
        console.print(f"[bold]{me['name']}[/] is not in a cluster: run `meshnet init` or `meshnet join`")
        return
    for problem in o.get("problems", []):
        console.print(f"[bold red]PROBLEM[/] {problem}")
    console.print(f"[bold]cluster[/] {c['id']}  [bold]members[/] {c['size']}  [bold]this node[/] "
                  f"{me['name']} {me['transit_ip']}  [bold]WireGuard[/] {me['backend'] or '-'}")
    t = Table(title="Members")
    for h in ("NAME", "HEALTH", "TRANSIT IP", "ENDPOINT", "HANDSHAKE", "RTT", "AGENT", "RX", "TX",
              "BACKEND"):
        t.add_column(h, justify="right" if h in ("RX", "TX", "RTT") else "left")
    for m in o["members"]:
        colour = COLOURS.get(m["health"], "")
        t.add_row(m["name"], f"[{colour}]{m['health']}[/]", m["transit_ip"], m["endpoint"],
                  "-" if m["self"] else age(m["handshake_age"]),
                  "-" if m["rtt_ms"] is None else f"{m['rtt_ms']:.2f} ms", m["agent"],
                  "-" if m["self"] else _bytes(m["rx_bytes"]), "-" if m["self"] else _bytes(m["tx_bytes"]),
                  m["backend"] or "-")
    console.print(t)
    t = Table(title="Networks")
    for h in ("NAME", "VNI", "SUBNET", "MTU", "ENDPOINTS", "PER HOST"):
        t.add_column(h)
    if not o["networks"]:
        t.add_row("(none)", "", "", "", "", "")
    for n in o["networks"]:
        per_host = "\n".join(f"{h}: " + ", ".join(f"{e['name']} {e['ip']}" for e in eps)
                             for h, eps in n["endpoints_by_host"].items())
        t.add_row(n["name"], str(n["vni"]), n["subnet"], str(n["mtu"] or "-"), str(n["endpoints"]),
                  per_host or "-")
    console.print(t)
    if "services" in o:
        t = Table(title="Services")
        for h in ("NAME", "MODE", "REPLICAS", "NETWORKS", "TASKS"):
            t.add_column(h)
        for s in o["services"]:
            tasks = "\n".join(f"{x['task']} {x['node']} {x['state']} {x['ip']}" for x in s.get("tasks", []))
            t.add_row(s["name"], s.get("mode", "replicated"), f"{s.get('running')}/{s.get('replicas')}",
                      ", ".join(s.get("networks", [])), tasks or "-")
        console.print(t)
    t = Table(title="Recent events")
    for h in ("TIME", "EVENT", "MESSAGE"):
        t.add_column(h)
    for e in list(reversed(o["events"]))[:15]:
        when = datetime.datetime.fromtimestamp(e["time"]).strftime("%H:%M:%S")
        style = "red" if e["level"] == "error" else ""
        t.add_row(when, f"[{style}]{e['kind']}[/]" if style else e["kind"], e["message"])
    console.print(t)


@click.command()
@format_option
@click.pass_context
def status(ctx: click.Context, fmt: str) -> None:
    """Cluster overview: members and tunnel health, networks, services, recent events."""
    o = client(ctx).get("/v1/overview")
    if fmt == "json":
        click.echo(json.dumps(o, indent=2))
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # piped: do not squeeze the tables into 80 columns
    render(o, console)
