"""Time from `meshnet join` to the first ping over the transit tunnel, repeated.

    .venv/bin/python -m bench.join_latency [--trials 10] [--mdns]

h1 creates a cluster; h2 joins (through h1's address, or by mDNS with --mdns), pings
h1's transit address until it answers, then leaves; p50 and p95 over the trials go to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

from bench.common import lab, percentile, record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--mdns", action="store_true", help="join with no address (mDNS discovery)")
    args = ap.parse_args()
    times: list[float] = []
    with lab(2, "bj") as lb:
        token = lb.client(1).post("/v1/init", {"advertise_addr": lb.ip(1)})["token"]
        target = lb.client(1).get("/v1/status")["transit_ip"]
        for _ in range(args.trials):
            start = time.monotonic()
            lb.client(2).post("/v1/join", {"token": token, "advertise_addr": lb.ip(2),
                                           "addrs": [] if args.mdns else [lb.ip(1)]})
            while lb.exec(2, ["ping", "-c", "1", "-W", "1", "-i", "0.05", target],
                          capture_output=True).returncode != 0:
                if time.monotonic() - start > 30:
                    raise RuntimeError("no transit ping within 30 s")
            times.append(time.monotonic() - start)
            lb.client(2).post("/v1/leave")
    how = "mDNS" if args.mdns else "seed address"
    table = (f"| join by | trials | p50 s | p95 s | max s |\n| --- | ---: | ---: | ---: | ---: |\n"
             f"| {how} | {len(times)} | {percentile(times, 0.5):.2f} | {percentile(times, 0.95):.2f} | "
             f"{max(times):.2f} |")
    print(table)
    record("Join to first transit ping", f"python -m bench.join_latency --trials {args.trials}"
           + (" --mdns" if args.mdns else ""), table)


if __name__ == "__main__":
    main()
