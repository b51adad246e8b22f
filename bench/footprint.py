"""Agent footprint: CPU (utime+stime from /proc/PID/stat over a window) and RSS of every
agent, with 3, 10 and 20 hosts, idle and under churn.

Each size gets its own lab: a cluster, one network and one service with one task per
host (spread). Then:
- idle: nothing happens for --window seconds;
- churn: every second, for --window seconds, the service is scaled between N and N/2
  and an endpoint is created or removed on a rotating host (one action after the other:
  when an action takes longer than a second, fewer happen; the table says how many and
  how long each took).
wireguard-go's CPU on each host is measured over the same windows. On the largest lab
the run also checks that the cluster works: transit pings from every host to a sample of
others, overlay pings from an endpoint on h1 to every task, and `service ps` showing a
task on every host. Kernel "neighbour table overflow" messages are counted.

    .venv/bin/python -m bench.footprint [--sizes 3,10,20] [--window 20] [--plot]

Prints the table, appends it to docs/benchmarks.md and the largest size's figures to
docs/scale.md ("20-host lab"); --plot writes docs/img/footprint.png.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, lab, machine, record
from meshnet.lab import Lab

SLEEPER = [sys.executable, "-c", "import time; time.sleep(100000)"]
TICK = os.sysconf("SC_CLK_TCK")
SCALE_MD = RESULTS.parent / "scale.md"


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime (and, with `children`, cutime+cstime of reaped children: nft, ip, the
    processes pyroute2 forks to open a socket in another namespace, task launches)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if children else 0)) / TICK


def rss_mb(pid: int) -> float:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1]) / 1024
    return 0.0


def wg_pid(lb: Lab, k: int) -> int | None:
    pids = subprocess.run(["ip", "netns", "pids", lb.ns(k)], capture_output=True, text=True).stdout.split()
    for p in pids:
        try:
            if Path(f"/proc/{p}/comm").read_text().strip() == "wireguard-go":
                return int(p)
        except OSError:
            pass
    return None


def running(lb: Lab, k: int, svc: str) -> list[dict]:
    return [t for t in lb.client(k).get(f"/v1/services/{svc}/ps")["tasks"] if t["state"] == "running"]


def wait(what: str, ok, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def overflow_count() -> int:
    out = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    return out.count("neighbour table overflow") + out.count("neighbor table overflow")


def window(lb: Lab, seconds: float, churn: bool, n: int, profile: Path | None = None) -> dict:
    agents = {k: int((lb.host_dir(k) / "agent.pid").read_text()) for k in lb.hosts()}
    spy = None
    if profile:  # py-spy on h2's agent (not the one the churn talks to most) for the window
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking",
                                "--format", "raw", "-r", "50", "-d", str(int(seconds)), "-p", str(agents[2]),
                                "-o", str(profile)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wgs = {k: p for k in lb.hosts() if (p := wg_pid(lb, k))}
    c0 = {k: cpu_seconds(p) for k, p in agents.items()}
    k0 = {k: cpu_seconds(p, True) for k, p in agents.items()}
    w0 = {k: cpu_seconds(p) for k, p in wgs.items()}
    t0 = time.monotonic()
    i, errors, ep_on, took = 0, 0, None, []
    while time.monotonic() - t0 < seconds:
        if churn:
            k = 1 + i % n
            t = time.monotonic()
            try:
                lb.client(k).patch("/v1/services/fp", {"replicas": n if i % 2 else max(n // 2, 1)})
                if ep_on is None:
                    lb.client(k).post("/v1/endpoints", {"network": "fp", "name": "churn"})
                    ep_on = k
                else:
                    lb.client(ep_on).delete("/v1/endpoints/churn")
                    ep_on = None
            except Exception:
                errors += 1
            took.append(time.monotonic() - t)
            i += 1
        time.sleep(max(0.0, t0 + i - time.monotonic()) if churn else 0.5)
    wall = time.monotonic() - t0
    cpu = [(cpu_seconds(p) - c0[k]) / wall * 100 for k, p in agents.items()]
    kids = [(cpu_seconds(p, True) - k0[k]) / wall * 100 for k, p in agents.items()]
    wg = [(cpu_seconds(p) - w0[k]) / wall * 100 for k, p in wgs.items()]
    rss = [rss_mb(p) for p in agents.values()]
    if ep_on is not None:
        lb.client(ep_on).delete("/v1/endpoints/churn")
    if churn:
        lb.client(1).patch("/v1/services/fp", {"replicas": n})
    if spy:
        spy.wait(timeout=60)
    return {"cpu": cpu, "kids": kids, "rss": rss, "wg": wg, "errors": errors, "actions": i, "took": took}


def check(lb: Lab, n: int) -> list[str]:
    """Transit pings (every host to 3 others, h1 to all), overlay pings h1 -> every task, ps on all."""
    notes = []
    nodes = {x["name"]: x["transit_ip"] for x in lb.client(1).get("/v1/nodes")["nodes"]}
    rnd = random.Random(7)
    pairs = {(1, k) for k in range(2, n + 1)}
    for k in range(2, n + 1):
        pairs |= {(k, j) for j in rnd.sample([j for j in range(1, n + 1) if j != k], min(3, n - 1))}
    bad = [(a, b) for a, b in sorted(pairs) if lb.exec(a, ["ping", "-c", "1", "-W", "2", nodes[f"h{b}"]],
                                                        capture_output=True).returncode != 0]
    notes.append(f"transit pings: {len(pairs) - len(bad)}/{len(pairs)} pairs answered"
                 + (f" (failed: {bad[:10]})" if bad else ""))
    tasks = running(lb, 1, "fp")
    on = {t["node"] for t in tasks}
    notes.append(f"service ps: {len(tasks)} running tasks on {len(on)}/{n} hosts")
    ep = lb.client(1).post("/v1/endpoints", {"network": "fp", "name": "check"})
    inside = [*lb.enter(1), "ip", "netns", "exec", ep["netns"].rsplit("/", 1)[-1]]
    ok = sum(subprocess.run([*inside, "ping", "-c", "1", "-W", "2", t["ip"]],
                            capture_output=True).returncode == 0 for t in tasks)
    notes.append(f"overlay pings from an endpoint on h1 to every task: {ok}/{len(tasks)}")
    lb.client(1).delete("/v1/endpoints/check")
    return notes


def stats(v: list[float]) -> str:
    return f"{sum(v) / len(v):.1f} / {max(v):.1f}" if v else "-"


def plot(rows: list[tuple[int, str, dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    for phase, style in (("idle", "o-"), ("churn", "s--")):
        pts = [(n, r) for n, ph, r in rows if ph == phase]
        xs = [n for n, _ in pts]
        a1.plot(xs, [sum(r["cpu"]) / len(r["cpu"]) for _, r in pts], style, label=f"{phase} mean")
        a1.plot(xs, [max(r["cpu"]) for _, r in pts], style, alpha=0.4, label=f"{phase} max")
        a2.plot(xs, [sum(r["rss"]) / len(r["rss"]) for _, r in pts], style, label=f"{phase} mean")
        if phase == "churn":  # the churn rate falls when actions take longer than a second
            for n, r in pts:
                a1.annotate(f"{r['actions']} actions", (n, sum(r["cpu"]) / len(r["cpu"])), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
    a1.axhline(1, ls=":", c="r", label="1% target (idle)")
    a1.set_xlabel("hosts")
    a1.set_ylabel("agent CPU, % of one core")
    a1.legend(fontsize=7)
    a2.axhline(80, ls=":", c="r", label="80 MB target")
    a2.set_xlabel("hosts")
    a2.set_ylabel("agent RSS, MB")
    a2.set_ylim(bottom=0)
    a2.legend(fontsize=7)
    fig.suptitle("Agent footprint per host")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3,10,20")
    ap.add_argument("--window", type=float, default=20)
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--profile", type=Path, help="directory for py-spy raw profiles of h2's agent")
    ap.add_argument("--phases", default="idle,churn", help="which windows to run (idle, churn or both)")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    phases = [p for p in ("idle", "churn") if p in a.phases.split(",")]
    rows: list[tuple[int, str, dict]] = []
    notes: list[str] = []
    setup: dict[int, float] = {}
    for n in sizes:
        before = overflow_count()
        t = time.monotonic()
        with lab(n, "mnff") as lb:
            lb.form_cluster()
            lb.client(1).post("/v1/networks", {"name": "fp"})
            lb.client(1).post("/v1/services", {"name": "fp", "networks": ["fp"], "replicas": n,
                                               "command": SLEEPER})
            wait(f"{n} fp tasks on {n} hosts",
                 lambda lb=lb, n=n: len({t["node"] for t in running(lb, 1, "fp")}) == n, 180)
            setup[n] = time.monotonic() - t
            time.sleep(5)  # let the joins' anti-entropy and handshakes settle
            for phase in phases:
                prof = None
                if a.profile:
                    a.profile.mkdir(parents=True, exist_ok=True)
                    prof = a.profile / f"agent-h2-{phase}-{n}hosts.txt"
                rows.append((n, phase, window(lb, a.window, phase == "churn", n, prof)))
            wait("the service back to one task per host",
                 lambda lb=lb, n=n: len({t["node"] for t in running(lb, 1, "fp")}) == n, 120)
            if n == max(sizes):
                notes = check(lb, n)
        overflow = overflow_count() - before
        if n == max(sizes):
            notes.append(f"kernel neighbour-table overflow messages during the {n}-host run: {overflow}"
                         + (" (gc_thresh left at its default)" if not overflow else ""))
        print(f"{n} hosts done ({setup[n]:.0f} s to build)", flush=True)
    table_rows = ["| hosts | phase | agent CPU % of a core, mean / max | with its children | "
                  "agent RSS MB, mean / max | wireguard-go CPU %, mean / max | churn actions (errors) "
                  "| s per action, p50 / max |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, phase, r in rows:
        took = sorted(r["took"])
        table_rows.append(f"| {n} | {phase} | {stats(r['cpu'])} | {stats(r['kids'])} | {stats(r['rss'])} | "
                          f"{stats(r['wg'])} | "
                          + (f"{r['actions']} ({r['errors']}) | {took[len(took) // 2]:.2f} / {took[-1]:.2f}"
                             if phase == "churn" and took else "- | -") + " |")
    table = "\n".join(table_rows)
    table += f"\n\nWindow {a.window:g} s; lab build + cluster + service: " + ", ".join(
        f"{n} hosts {s:.0f} s" for n, s in setup.items())
    if a.profile:
        table += ("\n\npy-spy (--nonblocking, 50 Hz) sampled h2's agent during each window; "
                  "its own CPU is not counted in the agent's.")
    if notes:
        table += (f"\n\nChecks on the {max(sizes)}-host lab:\n\n"
                  + "\n".join(f"- {x}" for x in notes))
    if a.plot:
        img = RESULTS.parent / "img"
        img.mkdir(exist_ok=True)
        plot(rows, img / "footprint.png")
        table += "\n\n![footprint](img/footprint.png)"
    print(table)
    cmd = (f"python -m bench.footprint --sizes {a.sizes} --window {a.window:g}"
           + (" --plot" if a.plot else "") + (" --profile DIR" if a.profile else "")
           + (f" --phases {a.phases}" if phases != ["idle", "churn"] else ""))
    record("Agent footprint", cmd, table)
    big = max(sizes)
    if big >= 20:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        big_rows = [r for r in table_rows[:2]] + [ln for ln in table_rows[2:] if ln.startswith(f"| {big} |")]
        with SCALE_MD.open("a") as f:
            f.write(f"\n## {big}-host lab\n\nMeasured by `{cmd}` ({stamp}; {machine()}): "
                    f"{big} simulated hosts "
                    "on one machine, one network and one service with a task on every host.\n\n"
                    + "\n".join(big_rows) + "\n\n" + "\n".join(f"- {x}" for x in notes) + "\n")


if __name__ == "__main__":
    main()
