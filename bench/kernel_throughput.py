"""Emulated single-stream TCP throughput in the qemu guest: overlay over kernel WireGuard,
over IPsec, and unencrypted, all in one guest run (issue 9, item 4).

    sudo .venv/bin/python -m bench.kernel_throughput [--runs N] [--json FILE]

Boots the kernel-test guest (tests/kernel/run, TCG) once per run with the bench-only
file tests/kernel/bench_throughput.py (never collected by CI: its name is not
`test_*.py`), reads its `MESHNET-BENCH {json}` line and prints a Markdown table with
Mbit/s per path and the ratios to unencrypted VXLAN. Under TCG every instruction is
emulated, so the absolute figures mean nothing; compare the ratios only. With several
runs, each path's median is shown. About 2 minutes per run on a quiet machine (boot,
imports, 4 streams of 8 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATHS = ("veth", "vxlan", "vxlan/wireguard", "vxlan/ipsec")
LABELS = {
    "veth": "raw veth (underlay, no overlay)",
    "vxlan": "overlay, unencrypted (VXLAN over the veth)",
    "vxlan/wireguard": "overlay over kernel WireGuard",
    "vxlan/ipsec": "overlay over IPsec (ESP tunnel, AES-128-GCM)",
}


def one_run() -> dict:
    cmd = [str(REPO / "tests/kernel/run"), "tests/kernel/bench_throughput.py",
           "-k", "kernel_throughput_figures", "-s"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("MESHNET-BENCH "):
            return json.loads(line.removeprefix("MESHNET-BENCH "))["results"]
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
    raise SystemExit(f"the guest gave no figures (exit {proc.returncode})")


def table(runs: list[dict]) -> str:
    med = {p: statistics.median(r[p]["mbit_s"] for r in runs) for p in PATHS}
    base = med["vxlan"]
    rows = ["| path | Mbit/s (emulated) | ratio to unencrypted overlay |", "| --- | ---: | ---: |"]
    for p in PATHS:
        each = ", ".join(f"{r[p]['mbit_s']:.1f}" for r in runs)
        shown = f"{med[p]:.1f}" + (f" (runs: {each})" if len(runs) > 1 else "")
        rows.append(f"| {LABELS[p]} | {shown} | {med[p] / base:.2f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1, help="guest boots (default 1)")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args()
    runs = []
    for i in range(args.runs):
        runs.append(one_run())
        print(f"run {i + 1}: " + json.dumps(runs[-1]), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
    print(table(runs))


if __name__ == "__main__":
    main()
