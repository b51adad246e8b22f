"""DNS: queries per second and latency of the embedded resolver vs dnsmasq, same names,
same machine, same load generator (dnsperf, Debian's package).

- meshnet: a 2-host lab, a network, a service `web` with 2 replicas; dnsperf runs inside
  an endpoint's namespace on h1 against 127.0.0.11:53 (the agent's resolver there).
- dnsmasq: its own namespace (`mnbHEX`), 127.0.0.1:53, `--addn-hosts` with the very
  names and addresses meshnet answers, `--no-resolv`, `-k`.

Names asked, round robin: `web` (VIP), `tasks.web` (2 addresses), `web.1`, `web.2`.

    .venv/bin/python -m bench.dns_bench [--seconds 10] [--inflight 10] [--rates 5000,10000,20000]

Closed loop: dnsperf keeps --inflight queries outstanding (-q) for --seconds: the qps is
the server's ceiling at that concurrency. Latency p50/p99 come from a second closed-loop
run with dnsperf -v (every answer's latency written to a file; that costs dnsperf CPU, so
its qps is lower). Open loop: dnsperf -Q RATE with 2000 allowed in flight, 5 s each, to
show loss and the namespace's UDP RcvbufErrors, which a closed loop hides (DESIGN.md).
The server's CPU per answered query comes from /proc/PID/stat over the closed-loop run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import lab, percentile, record

SLEEPER = [sys.executable, "-c", "import time; time.sleep(100000)"]
NAMES = ["web", "tasks.web", "web.1", "web.2"]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def rcvbuf_errors(prefix: list[str]) -> int:
    snmp = subprocess.run([*prefix, "cat", "/proc/net/snmp"], capture_output=True, text=True).stdout
    udp = [ln.split() for ln in snmp.splitlines() if ln.startswith("Udp:")]
    return int(udp[1][udp[0].index("RcvbufErrors")])


def dnsperf(prefix: list[str], server: str, qfile: Path, args: list[str],
            verbose_to: Path | None = None) -> dict:
    argv = [*prefix, "dnsperf", "-s", server, "-d", str(qfile), *args]
    if verbose_to:
        with verbose_to.open("w") as f:
            subprocess.run([*argv, "-v"], stdout=f, stderr=subprocess.STDOUT, check=True)
        out = verbose_to.read_text()
    else:
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    res = {"qps": float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1)),
           "sent": int(re.search(r"Queries sent:\s+(\d+)", out).group(1)),
           "lost": int(re.search(r"Queries lost:\s+(\d+)", out).group(1)),
           "avg_ms": float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out).group(1)) * 1000}
    codes = re.search(r"Response codes:\s+(.*)", out)
    res["codes"] = codes.group(1).strip() if codes else "?"
    if verbose_to:
        lat = [float(m) * 1000 for m in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M)]
        res["p50_ms"], res["p99_ms"] = percentile(lat, 0.5), percentile(lat, 0.99)
    return res


def measure(name: str, prefix: list[str], server: str, pid: int, qfile: Path, tmp: Path,
            a: argparse.Namespace) -> dict:
    t, c = time.monotonic(), cpu_seconds(pid)
    closed = dnsperf(prefix, server, qfile, ["-l", str(a.seconds), "-q", str(a.inflight)])
    cpu = cpu_seconds(pid) - c
    wall = time.monotonic() - t
    lat = dnsperf(prefix, server, qfile, ["-l", str(a.seconds), "-q", str(a.inflight)], tmp / f"{name}.v")
    res = {"closed": closed, "us_per_q": cpu / max(closed["sent"] - closed["lost"], 1) * 1e6,
           "cpu_pct": cpu / wall * 100, "lat": lat, "open": {}}
    for rate in a.rates:
        before = rcvbuf_errors(prefix)
        o = dnsperf(prefix, server, qfile, ["-l", "5", "-q", "2000", "-Q", str(rate)])
        o["rcvbuf"] = rcvbuf_errors(prefix) - before
        res["open"][rate] = o
    return res


@contextlib.contextmanager
def dnsmasq(hosts: dict[str, list[str]], tmp: Path):
    ns = f"mnb{secrets.token_hex(3)}"
    (tmp / "hosts").write_text("".join(f"{ip} {n}\n" for n, ips in hosts.items() for ip in ips))
    proc = None
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "dnsmasq", "-k", "--no-resolv", "--no-hosts",
                                 f"--addn-hosts={tmp / 'hosts'}", "--listen-address=127.0.0.1",
                                 "--bind-interfaces", "-u", "root", "--pid-file=", "-C", "/dev/null"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            if subprocess.run(["ip", "netns", "exec", ns, "dig", "+short", "+time=1", "@127.0.0.1", "web"],
                              capture_output=True, text=True).stdout.strip():
                break
            time.sleep(0.1)
        yield ["ip", "netns", "exec", ns], proc.pid
    finally:
        if proc:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--inflight", type=int, default=10)
    ap.add_argument("--rates", default="5000,10000,20000")
    a = ap.parse_args()
    a.rates = [int(r) for r in a.rates.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="mnb-dns-"))
    qfile = tmp / "queries"
    qfile.write_text("".join(f"{n} A\n" for n in NAMES))
    results = {}
    try:
        with lab(2, "bd") as lb:
            lb.form_cluster()
            lb.client(1).post("/v1/networks", {"name": "dns"})
            lb.client(1).post("/v1/services", {"name": "web", "networks": ["dns"], "replicas": 2,
                                               "command": SLEEPER})
            ep = lb.client(1).post("/v1/endpoints", {"network": "dns", "name": "client"})
            inside = [*lb.enter(1), "ip", "netns", "exec", ep["netns"].rsplit("/", 1)[-1]]
            deadline = time.monotonic() + 60
            while True:
                tasks = [t for t in lb.client(1).get("/v1/services/web/ps")["tasks"]
                         if t["state"] == "running"]
                ans = subprocess.run([*inside, "dig", "+short", "+time=1", "@127.0.0.11", "tasks.web"],
                                     capture_output=True, text=True).stdout.split()
                if len(tasks) == 2 and len(ans) == 2:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("tasks.web never answered 2 addresses")
                time.sleep(0.3)
            hosts = {n: subprocess.run([*inside, "dig", "+short", "@127.0.0.11", n], capture_output=True,
                                       text=True).stdout.split() for n in NAMES}
            agent = int((lb.host_dir(1) / "agent.pid").read_text())
            results["meshnet (agent, 127.0.0.11)"] = measure("meshnet", inside, "127.0.0.11", agent,
                                                             qfile, tmp, a)
        with dnsmasq(hosts, tmp) as (prefix, pid):
            results["dnsmasq"] = measure("dnsmasq", prefix, "127.0.0.1", pid, qfile, tmp, a)
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    base = results["dnsmasq"]["closed"]["qps"]
    rows = [f"Closed loop, {a.inflight} in flight, {a.seconds} s; latency from a second run with "
            "dnsperf -v.",
            "", "| server | qps | vs dnsmasq | server CPU µs/query | server CPU % | avg ms | qps (-v run) "
            "| p50 ms | p99 ms | answers |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, r in results.items():
        c, lat = r["closed"], r["lat"]
        rows.append(f"| {name} | {c['qps']:.0f} | {c['qps'] / base:.2f} | {r['us_per_q']:.1f} | "
                    f"{r['cpu_pct']:.0f} | "
                    f"{c['avg_ms']:.3f} | {lat['qps']:.0f} | {lat['p50_ms']:.3f} | {lat['p99_ms']:.3f} | "
                    f"{c['codes']} |")
    rows += ["", "Open loop (dnsperf -Q RATE, 5 s): answered qps, lost %, UDP RcvbufErrors in the "
             "server's namespace.",
             "", "| server | " + " | ".join(f"{q}/s offered" for q in a.rates) + " |",
             "| --- |" + " ---: |" * len(a.rates)]
    for name, r in results.items():
        cells = [f"{o['qps']:.0f}, {100 * o['lost'] / max(o['sent'], 1):.1f} % lost, {o['rcvbuf']} rcvbuf"
                 for o in r["open"].values()]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(rows)
    print(table)
    record("DNS resolver vs dnsmasq", f"python -m bench.dns_bench --seconds {a.seconds} "
           f"--inflight {a.inflight} "
           f"--rates {','.join(map(str, a.rates))}", table)


if __name__ == "__main__":
    main()
