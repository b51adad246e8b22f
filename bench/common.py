"""Shared bits of the benchmarks: a lab that cleans up, medians, and the results log."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import secrets
import statistics
import subprocess
from pathlib import Path

from meshnet.config import NEWER_WIREGUARD_GO
from meshnet.lab import Lab

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


@contextlib.contextmanager
def lab(hosts: int, prefix: str = "b", agent_args: list[str] | None = None):
    lb = Lab(f"{prefix}{secrets.token_hex(3)}")
    try:
        lb.up(hosts, agent_args=agent_args)
        yield lb
    finally:
        lb.down()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    wg = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "wireguard-go"], capture_output=True,
                        text=True).stdout or "?"
    newer = Path(f"{NEWER_WIREGUARD_GO}.version")
    if newer.exists():  # the agents run this one unless told otherwise
        wg = f"{newer.read_text().strip()} ({NEWER_WIREGUARD_GO}; Debian's package: {wg})"
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    return (f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"wireguard-go {wg}, {version(['iperf3', '--version'])}")


def record(title: str, command: str, table: str) -> None:
    """Append a result section to docs/benchmarks.md (machine, versions, command, table),
    unless MESHNET_BENCH_NO_RECORD is set (a trial run)."""
    if os.environ.get("MESHNET_BENCH_NO_RECORD"):
        return
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmarks\n\nEach section is appended by a command under bench/; "
                           "figures are from one run on a shared, noisy machine, so compare ratios "
                           "within a section rather than across sections.\n")
    with RESULTS.open("a") as f:
        f.write(f"\n## {title} ({stamp})\n\n- machine: {machine()}\n- command: `{command}`\n\n"
                f"{table}\n")


def endpoint_pair(lb: Lab, network: str, options: dict | None = None) -> tuple[dict, dict[int, list[str]]]:
    """A network (with driver `options`) and an endpoint on each of h1 and h2: the
    endpoints' API views, and per host the argv prefix that runs inside its endpoint."""
    lb.client(1).post("/v1/networks", {"name": network, "options": options or {}})
    eps = {k: lb.client(k).post("/v1/endpoints", {"network": network, "name": f"{network}{k}"})
           for k in (1, 2)}
    inside = {k: [*lb.enter(k), "ip", "netns", "exec", eps[k]["netns"].rsplit("/", 1)[-1]] for k in (1, 2)}
    return eps, inside
