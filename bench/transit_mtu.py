"""Would larger transit packets close the VXLAN overlay's gap? An experiment, side by side.

A default (VXLAN) network hands wireguard-go one encapsulated packet per frame, so its
throughput follows the frame size. This raises the MTU of the whole overlay path (the
transit `mnet0` on both hosts, the VXLAN devices, bridges and veths) from the standard
values to a jumbo size, so wireguard-go's UDP datagrams exceed the 1500-byte underlay
and the kernel fragments them, and measures endpoint-to-endpoint TCP both ways in the
same lab. The agents are paused (SIGSTOP) while the MTUs are changed by hand, since
they would put them back; they are resumed and the lab removed afterwards.

    .venv/bin/python -m bench.transit_mtu [--seconds 8] [--runs 3] [--mtu 8920]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess

from bench.common import endpoint_pair, lab, median, record
from bench.throughput import iperf_on


def set_mtu(prefix: list[str], ifname: str, mtu: int) -> None:
    subprocess.run([*prefix, "ip", "link", "set", "dev", ifname, "mtu", str(mtu)], check=True)


def links(prefix: list[str], start: str) -> list[str]:
    out = subprocess.run([*prefix, "ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines()
            if ln.split(":")[1].strip().startswith(start)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mtu", type=int, default=8920, help="jumbo transit MTU to try")
    args = ap.parse_args()
    with lab(2, "bm") as lb:
        lb.form_cluster()
        eps, inside = endpoint_pair(lb, "mtu")
        std = lb.client(1).get("/v1/status")["transit_mtu"]
        subprocess.run([*inside[1], "ping", "-c", "3", "-W", "2", eps[2]["ip"]], check=True,
                       capture_output=True)
        agents = [int((lb.host_dir(k) / "agent.pid").read_text()) for k in (1, 2)]
        for pid in agents:
            os.kill(pid, signal.SIGSTOP)
        results: dict[str, list[float]] = {f"transit MTU {std} (standard)": [],
                                           f"transit MTU {args.mtu} (jumbo, fragmented outside)": []}
        names = list(results)
        for _ in range(args.runs):
            for mtu, name in ((std, names[0]), (args.mtu, names[1])):
                for k in (1, 2):
                    set_mtu(lb.enter(k), "mnet0", mtu)
                    for dev in [d for p in ("mnv-", "mnb-", "mnh-") for d in links(lb.enter(k), p)]:
                        set_mtu(lb.enter(k), dev, mtu - 50)
                    set_mtu(inside[k], "eth0", mtu - 50)
                results[name].append(iperf_on(inside[1], inside[2], eps[2]["ip"], args.seconds))
        for pid in agents:
            os.kill(pid, signal.SIGCONT)
    base = median(results[names[0]])
    rows = ["| overlay (VXLAN in WireGuard) | median Mbit/s | runs | vs standard |",
            "| --- | ---: | --- | ---: |"]
    rows += [f"| {n} | {median(v):.0f} | {', '.join(f'{x:.0f}' for x in v)} | {median(v) / base:.2f} |"
             for n, v in results.items()]
    table = "\n".join(rows)
    print(table)
    record("Larger transit packets (experiment)", f"python -m bench.transit_mtu --seconds {args.seconds} "
           f"--runs {args.runs} --mtu {args.mtu}", table)


if __name__ == "__main__":
    main()
