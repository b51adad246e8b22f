"""MTU sweep over a meshnet network: no black hole, no cliff.

On a 2-host lab, from an endpoint on h1 to one on h2:
- ping -M do (DF set) at sizes up to the largest that fits the endpoint MTU: every one
  must be answered, and one byte more must fail locally ("message too long"), not vanish;
- iperf3 single stream with MSS 536, 1000, 1300 and the endpoint's maximum (MTU - 40).

    .venv/bin/python -m bench.mtu_sweep [--seconds 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import re
import subprocess

from bench.common import endpoint_pair, lab, median, record
from bench.throughput import iperf_on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3, help="iperf3 runs per MSS, interleaved; median")
    a = ap.parse_args()
    with lab(2, "bm") as lb:
        lb.form_cluster()
        eps, inside = endpoint_pair(lb, "mtu")
        link = subprocess.run([*inside[1], "ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        mtu = max(int(m) for m in re.findall(r"mtu (\d+)", link) if int(m) != 65536)
        transit_mtu = lb.client(1).get("/v1/status").get("transit_mtu")
        dst = eps[2]["ip"]
        for _ in range(30):
            if subprocess.run([*inside[1], "ping", "-c", "1", "-W", "1", dst],
                              capture_output=True).returncode == 0:
                break
        top = mtu - 28
        sizes = sorted({0, 56, 200, 500, 1000, 1200, top - 100, top - 1, top})
        rows = [f"Endpoint MTU {mtu}, transit MTU {transit_mtu}; largest DF ICMP payload {top}.", "",
                "| ping -M do -s | sent | answered | result |", "| ---: | ---: | ---: | --- |"]
        for s in sizes:
            out = subprocess.run([*inside[1], "ping", "-M", "do", "-c", "5", "-i", "0.05", "-W", "2",
                                  "-s", str(s), dst], capture_output=True, text=True)
            got = int(m.group(1)) if (m := re.search(r"(\d+) received", out.stdout)) else 0
            rows.append(f"| {s} | 5 | {got} | {'ok' if got == 5 else 'LOSS'} |")
        over = subprocess.run([*inside[1], "ping", "-M", "do", "-c", "1", "-W", "2", "-s", str(top + 1), dst],
                              capture_output=True, text=True)
        said = (over.stderr + over.stdout).strip().splitlines()
        local = next((ln for ln in said if "too long" in ln.lower()), "")
        verdict = f"fails locally: `{local.strip()}`" if local else "BLACK HOLE?"
        rows.append(f"| {top + 1} | 1 | 0 | {verdict} |")
        rows += ["", "| iperf3 -M (MSS) | median Mbit/s | runs |", "| ---: | ---: | --- |"]
        mss_list = (536, 1000, 1300, mtu - 40)
        runs: dict[int, list[float]] = {m: [] for m in mss_list}
        for _ in range(a.runs):  # interleaved, so load from others hits every size alike
            for mss in mss_list:
                runs[mss].append(iperf_on(inside[1], inside[2], dst, a.seconds, ["-M", str(mss)]))
        rows += [f"| {m} | {median(v):.0f} | {', '.join(f'{x:.0f}' for x in v)} |" for m, v in runs.items()]
    table = "\n".join(rows)
    print(table)
    record("MTU sweep over the overlay", f"python -m bench.mtu_sweep --seconds {a.seconds} --runs {a.runs}",
           table)


if __name__ == "__main__":
    main()
