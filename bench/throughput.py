"""Single-stream TCP throughput and ping latency, side by side in one run:

- underlay: host to host over the lab LAN (no tunnel);
- plain VXLAN: a VXLAN pair with no encryption between the two lab hosts' underlay
  addresses (its own VNI, port and device, removed afterwards);
- transit: the bare WireGuard tunnel (the same wireguard-go the agent runs);
- overlay: endpoint to endpoint over a meshnet network (VXLAN inside the tunnel);
- routed: endpoint to endpoint over a routed (mode=l3) meshnet network;
- Nebula and tinc 1.0 (switch mode), Debian's packages, each in its own pair of
  namespaces (bench/peers.py), unless --no-peers.

    .venv/bin/python -m bench.throughput [--seconds 8] [--runs 3] [--no-peers] [--plot]
                                         [--wireguard-go PATH]

Runs are interleaved (run 1 of every path, then run 2, ...) so drift on the shared
machine hits every path alike. Prints a table (median of the runs, ratios to the bare
transit and to the underlay) and the ping p50 (50 pings, -i 0.05) between endpoints vs
over the transit, and appends both to docs/benchmarks.md; --plot also writes
docs/img/throughput.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable

from bench import peers
from bench.common import endpoint_pair, lab, median, percentile, record
from meshnet.lab import Lab

MESHNET = [sys.executable, "-m", "meshnet"]

Path_ = tuple[str, list[str], list[str], str]  # name, client argv prefix, server argv prefix, dst


def iperf_on(client: list[str], server: list[str], dst: str, seconds: int,
             extra: list[str] | None = None) -> float:
    """One iperf3 run from the namespace `client` enters to `server`; Mbit/s received."""
    srv = subprocess.Popen([*server, "iperf3", "-s", "-1", "-p", "5299"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            time.sleep(0.1)
            out = subprocess.run([*client, "iperf3", "-c", dst, "-p", "5299", "-t", str(seconds), "-J",
                                  *(extra or [])], capture_output=True, text=True)
            if out.returncode == 0:
                return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
        raise RuntimeError(f"iperf3 to {dst} failed: {out.stderr.strip() or out.stdout[-300:]}")
    finally:
        srv.kill()
        srv.wait()


def iperf(lb: Lab, client: int, server: int, dst: str, seconds: int, wrap: dict[int, list[str]]) -> float:
    """One iperf3 run between lab hosts; `wrap[k]` is the argv prefix that runs inside the right namespace."""
    return iperf_on([*lb.enter(client), *wrap[client]], [*lb.enter(server), *wrap[server]], dst, seconds)


def ping_p50(prefix: list[str], dst: str, count: int = 50) -> tuple[float, float]:
    """(p50, p95) round trip in ms of `count` pings at -i 0.05."""
    out = subprocess.run([*prefix, "ping", "-c", str(count), "-i", "0.05", "-W", "1", dst],
                         capture_output=True, text=True)
    rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", out.stdout)]
    if len(rtts) < count * 0.9:
        raise RuntimeError(f"ping {dst}: only {len(rtts)}/{count} answers")
    return percentile(rtts, 0.5), percentile(rtts, 0.95)


def plot(results: dict[str, list[float]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    meds = [median(v) / 1000 for v in results.values()]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.barh(names[::-1], meds[::-1], color=["#4c72b0" if "meshnet" not in n else "#dd8452"
                                                   for n in names[::-1]])
    for b, (_n, v) in zip(bars, list(results.items())[::-1], strict=True):
        ax.plot([x / 1000 for x in v], [b.get_y() + b.get_height() / 2] * len(v), "k.", ms=4)
    ax.bar_label(bars, fmt="%.2f", padding=16)
    ax.set_xscale("log")
    ax.set_xlabel("Gbit/s, single TCP stream (median of runs; dots = runs; log scale)")
    ax.set_title("Throughput, one run side by side")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-peers", action="store_true", help="skip Nebula and tinc")
    ap.add_argument("--plot", action="store_true", help="also write docs/img/throughput.png")
    ap.add_argument("--wireguard-go", help="the wireguard-go binary the agents run (default: the agent's)")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        wg_args = ["--wireguard-go", args.wireguard_go] if args.wireguard_go else None
        lb = stack.enter_context(lab(2, "bt", wg_args))
        lb.form_cluster()
        nodes = {n["name"]: n for n in lb.client(1).get("/v1/nodes")["nodes"]}
        eps, inside = endpoint_pair(lb, "bench")
        reps, routed = endpoint_pair(lb, "benchl3", {"mode": "l3"})
        vx = stack.enter_context(peers.plain_vxlan(lb.enter(1), lb.enter(2), lb.ip(1), lb.ip(2)))
        paths: list[Path_] = [
            ("underlay (LAN, no tunnel)", lb.enter(1), lb.enter(2), lb.ip(2)),
            ("plain VXLAN (no crypto)", lb.enter(1), lb.enter(2), vx),
            ("transit (bare WireGuard)", lb.enter(1), lb.enter(2), nodes["h2"]["transit_ip"]),
            ("meshnet overlay (VXLAN in WireGuard)", inside[1], inside[2], eps[2]["ip"]),
            ("meshnet routed network (mode=l3)", routed[1], routed[2], reps[2]["ip"]),
        ]
        if not args.no_peers:
            for name, cm in (("Nebula", peers.nebula), ("tinc 1.0 switch mode", peers.tinc)):
                p = stack.enter_context(cm())
                paths.append((name, p.enter("a"), p.enter("b"), peers.INNER["b"]))
        # wait for both networks to answer before timing them
        deadline = time.monotonic() + 30
        for prefix, dst in ((inside[1], eps[2]["ip"]), (routed[1], reps[2]["ip"])):
            while subprocess.run([*prefix, "ping", "-c", "1", "-W", "1", dst],
                                 capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the overlay does not answer pings to {dst}")
        results: dict[str, list[float]] = {name: [] for name, *_ in paths}
        for _ in range(args.runs):
            for name, cli, srv, dst in paths:
                results[name].append(iperf_on(cli, srv, dst, args.seconds))
        pings: list[tuple[str, Callable[[], tuple[float, float]]]] = [
            ("underlay (LAN)", lambda: ping_p50(lb.enter(1), lb.ip(2))),
            ("transit (bare WireGuard)", lambda: ping_p50(lb.enter(1), nodes["h2"]["transit_ip"])),
            ("meshnet overlay, endpoint to endpoint", lambda: ping_p50(inside[1], eps[2]["ip"])),
            ("meshnet routed (l3), endpoint to endpoint", lambda: ping_p50(routed[1], reps[2]["ip"])),
        ]
        latency = {name: fn() for name, fn in pings}
    transit = median(results["transit (bare WireGuard)"])
    under = median(results["underlay (LAN, no tunnel)"])
    rows = ["| path | median Mbit/s | runs | vs transit | vs underlay |",
            "| --- | ---: | --- | ---: | ---: |"]
    for name, values in results.items():
        rows.append(f"| {name} | {median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} | "
                    f"{median(values) / transit:.2f} | {median(values) / under:.3f} |")
    rows += ["", "| ping (50 x, -i 0.05) | p50 ms | p95 ms |", "| --- | ---: | ---: |"]
    rows += [f"| {name} | {p50:.3f} | {p95:.3f} |" for name, (p50, p95) in latency.items()]
    table = "\n".join(rows)
    if args.plot:
        plot(results, str(peers_img()))
        table += "\n\n![throughput](img/throughput.png)"
    print(table)
    record("Single-stream TCP throughput", f"python -m bench.throughput --seconds {args.seconds} "
           f"--runs {args.runs}" + (" --no-peers" if args.no_peers else "")
           + (f" --wireguard-go {args.wireguard_go}" if args.wireguard_go else "")
           + (" --plot" if args.plot else ""), table)


def peers_img():
    from bench.common import RESULTS
    d = RESULTS.parent / "img"
    d.mkdir(exist_ok=True)
    return d / "throughput.png"


if __name__ == "__main__":
    main()
