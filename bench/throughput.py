"""Single-stream TCP throughput, side by side in one run, on a 2-host lab:

- underlay: host to host over the lab LAN (no tunnel);
- transit: the bare WireGuard tunnel (wireguard-go here), transit address to address;
- overlay: endpoint to endpoint over a meshnet network (VXLAN inside the tunnel).

    .venv/bin/python -m bench.throughput [--seconds 8] [--runs 3]

Prints a table (median of the runs) and appends it to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import lab, median, record
from meshnet.lab import Lab

MESHNET = [sys.executable, "-m", "meshnet"]


def iperf(lb: Lab, client: int, server: int, dst: str, seconds: int, wrap: dict[int, list[str]]) -> float:
    """One iperf3 run; `wrap[k]` is the argv prefix that runs inside the right namespace."""
    srv = subprocess.Popen([*lb.enter(server), *wrap[server], "iperf3", "-s", "-1", "-p", "5299"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            time.sleep(0.1)
            out = subprocess.run([*lb.enter(client), *wrap[client], "iperf3", "-c", dst, "-p", "5299",
                                  "-t", str(seconds), "-J"], capture_output=True, text=True)
            if out.returncode == 0:
                return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
        raise RuntimeError(f"iperf3 to {dst} failed: {out.stderr.strip() or out.stdout[-300:]}")
    finally:
        srv.kill()
        srv.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with lab(2, "bt") as lb:
        lb.form_cluster()
        nodes = {n["name"]: n for n in lb.client(1).get("/v1/nodes")["nodes"]}
        lb.client(1).post("/v1/networks", {"name": "bench"})
        eps = {k: lb.client(k).post("/v1/endpoints", {"network": "bench", "name": f"b{k}"}) for k in (1, 2)}
        plain = {1: [], 2: []}
        inside = {k: ["ip", "netns", "exec", f"mne-{eps[k]['id'][:12]}"] for k in (1, 2)}
        paths = [("underlay (LAN, no tunnel)", lb.ip(2), plain),
                 ("transit (bare WireGuard)", nodes["h2"]["transit_ip"], plain),
                 ("overlay (VXLAN in WireGuard)", eps[2]["ip"], inside)]
        results: dict[str, list[float]] = {name: [] for name, _, _ in paths}
        for _ in range(args.runs):  # interleaved, so drift on the machine hits every path alike
            for name, dst, wrap in paths:
                results[name].append(iperf(lb, 1, 2, dst, args.seconds, wrap))
    transit = median(results["transit (bare WireGuard)"])
    rows = ["| path | median Mbit/s | runs | vs transit |", "| --- | ---: | --- | ---: |"]
    for name, values in results.items():
        rows.append(f"| {name} | {median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} | "
                    f"{median(values) / transit:.2f} |")
    table = "\n".join(rows)
    print(table)
    record("Single-stream TCP throughput", f"python -m bench.throughput --seconds {args.seconds} "
           f"--runs {args.runs}", table)


if __name__ == "__main__":
    main()
