"""Control-plane convergence, p50/p95 over repeated trials, on one 5-host lab:

- join: from `POST /v1/join` (h5 joins through h1) to the first ping from a new endpoint
  on h5 to an endpoint on h1 over a meshnet network (h5 leaves between trials);
- scale: from `service scale` (PATCH) to every node's DNS (`tasks.<svc>` asked from a
  probe endpoint on each of h1..h4) giving the new number of addresses, up (1 -> 4, tasks
  must start) and down (4 -> 1) separately;
- kill: from SIGKILL of h4's agent to h1..h3 all reporting it `dead` (GET /v1/nodes),
  and to their DNS no longer answering h4's task address (the agent is restarted and
  the cluster settles between trials);
- heal: h1,h2 | h3,h4 are cut at the lab bridge (nftables, as tests/lab/test_membership.py
  does) for --hold seconds, each side creates a network, then the cut is healed; time
  until h1..h4 list the same networks.

    .venv/bin/python -m bench.convergence [--trials 6] [--hold 6] [--plot]

Prints the table, appends it to docs/benchmarks.md; --plot writes docs/img/convergence.png.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, lab, percentile, record
from meshnet.lab import Lab

SLEEPER = [sys.executable, "-c", "import time; time.sleep(100000)"]
PROBE = str(Path(__file__).resolve().parent / "dnsprobe.py")


def wait(what: str, ok, timeout: float = 60, every: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ok():
                return time.time()
        except Exception:
            pass
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


def netns_of(ep: dict) -> str:
    return ep["netns"].rsplit("/", 1)[-1]


class Probes:
    """dnsprobe.py in an endpoint namespace on each given host, started before the action."""

    def __init__(self, lb: Lab, eps: dict[int, dict], hosts: list[int], name: str, cond: str):
        self.procs = {k: subprocess.Popen([*lb.enter(k), "ip", "netns", "exec", netns_of(eps[k]),
                                           sys.executable, PROBE, name, cond],
                                          stdout=subprocess.PIPE, text=True)
                      for k in hosts}
        for k, p in self.procs.items():
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"DNS probe on h{k} did not start")

    def done(self) -> float:
        """Wall time at which the last probe saw its condition."""
        times = []
        for k, p in self.procs.items():
            line = p.stdout.readline().strip()
            p.wait()
            if not line.startswith("ok "):
                raise RuntimeError(f"DNS on h{k}: {line or 'no answer'}")
            times.append(float(line.split()[1]))
        return max(times)


def running(lb: Lab, k: int, svc: str) -> list[dict]:
    return [t for t in lb.client(k).get(f"/v1/services/{svc}/ps")["tasks"] if t["state"] == "running"]


def ping_ok(argv: list[str], ip: str) -> bool:
    return subprocess.run([*argv, "ping", "-c", "1", "-W", "1", ip], capture_output=True).returncode == 0


def trial_join(lb: Lab, token: str, ep1: dict, trials: int) -> list[float]:
    out = []
    for _ in range(trials):
        t0 = time.time()
        lb.client(5).post("/v1/join", {"token": token, "addrs": [lb.ip(1)], "advertise_addr": lb.ip(5)})
        ep5 = None
        while ep5 is None:
            try:
                ep5 = lb.client(5).post("/v1/endpoints", {"network": "conv", "name": "j5"})
            except Exception:
                if time.time() - t0 > 30:
                    raise
                time.sleep(0.02)
        inside = [*lb.enter(5), "ip", "netns", "exec", netns_of(ep5)]
        t1 = wait("first overlay ping", lambda inside=inside: ping_ok(inside, ep1["ip"]), 30, 0.0)
        out.append(t1 - t0)
        lb.client(5).delete("/v1/endpoints/j5")
        lb.client(5).post("/v1/leave")
        time.sleep(0.5)
    return out


def trial_scale(lb: Lab, eps: dict[int, dict], trials: int) -> tuple[list[float], list[float]]:
    """(up 1 -> 4, down 4 -> 1): up needs tasks started, down only rows retired."""
    up, down = [], []
    for i in range(2 * trials):
        n = 4 if i % 2 == 0 else 1
        probes = Probes(lb, eps, [1, 2, 3, 4], "tasks.web", f"count={n}")
        t0 = time.time()
        lb.client(1 + i % 4).patch("/v1/services/web", {"replicas": n})
        (up if n == 4 else down).append(probes.done() - t0)
        time.sleep(0.5)
    return up, down


def trial_kill(lb: Lab, eps: dict[int, dict], trials: int) -> tuple[list[float], list[float]]:
    dead, dns = [], []
    for _ in range(trials):
        victim_ip = next(t["ip"] for t in running(lb, 1, "kv") if t["node"] == "h4")
        probes = Probes(lb, eps, [1, 2, 3], "tasks.kv", f"absent={victim_ip}")
        t0 = time.time()
        lb.stop_agent(4, signal.SIGKILL)
        seen = [wait(f"h{k} to call h4 dead", lambda k=k: any(
            n["name"] == "h4" and n["health"] == "dead" for n in lb.client(k).get("/v1/nodes")["nodes"]),
            60, 0.05)
            for k in (1, 2, 3)]
        dead.append(max(seen) - t0)
        dns.append(probes.done() - t0)
        lb.start_agent(4)
        wait("h4 alive everywhere and its kv task back", lambda: all(
            n["health"] == "alive" for k in (1, 2, 3, 4) for n in lb.client(k).get("/v1/nodes")["nodes"]
            if n["state"] == "active") and any(t["node"] == "h4" for t in running(lb, 1, "kv"))
            and len(running(lb, 1, "kv")) == 4, 90, 0.2)
        time.sleep(1)
    return dead, dns


def partition(lb: Lab, a: list[int], b: list[int], heal: bool = False) -> None:
    if heal:
        subprocess.run(["ip", "netns", "exec", lb.lan_ns, "nft", "delete", "table", "bridge", "mnbpart"],
                       check=True)
        return
    sa, sb = ", ".join(f'"h{k}"' for k in a), ", ".join(f'"h{k}"' for k in b)
    rules = ("table bridge mnbpart {\n chain cut {\n  type filter hook forward priority 0; policy accept;\n"
             f"  iifname {{ {sa} }} oifname {{ {sb} }} drop\n"
             f"  iifname {{ {sb} }} oifname {{ {sa} }} drop\n }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", lb.lan_ns, "nft", "-f", "-"], input=rules, text=True, check=True)


def trial_heal(lb: Lab, trials: int, hold: float) -> list[float]:
    out = []
    for i in range(trials):
        partition(lb, [1, 2], [3, 4])
        try:
            time.sleep(hold)
            lb.client(1).post("/v1/networks", {"name": f"pa{i}"})
            lb.client(3).post("/v1/networks", {"name": f"pb{i}"})
            time.sleep(0.5)
        finally:
            partition(lb, [1, 2], [3, 4], heal=True)
        t0 = time.time()

        def same(i: int = i) -> bool:
            views = [sorted(n["name"] for n in lb.client(k).get("/v1/networks")["networks"])
                     for k in (1, 2, 3, 4)]
            return all(v == views[0] for v in views) and {f"pa{i}", f"pb{i}"} <= set(views[0])
        out.append(wait("networks to converge after heal", same, 60, 0.02) - t0)
        time.sleep(1)
    return out


def plot(results: dict[str, list[float]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(results)
    ax.boxplot([results[n] for n in names], orientation="horizontal", whis=(5, 95))
    for i, n in enumerate(names, 1):
        ax.plot(results[n], [i] * len(results[n]), "k.", ms=4, alpha=0.6)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.axvline(1, ls=":", c="g")
    ax.axvline(5, ls=":", c="r")
    ax.set_xlabel("seconds (dots = trials; dotted: 1 s scale target, 5 s dead target)")
    ax.set_title("Control-plane convergence")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--hold", type=float, default=6, help="seconds a partition lasts")
    ap.add_argument("--plot", action="store_true")
    args = ap.parse_args()
    with lab(5, "mnfc") as lb:
        token = lb.form_cluster([1, 2, 3, 4])
        lb.client(1).post("/v1/networks", {"name": "conv"})
        eps = {k: lb.client(k).post("/v1/endpoints", {"network": "conv", "name": f"probe{k}"})
               for k in (1, 2, 3, 4)}
        results: dict[str, list[float]] = {}
        results["join -> first overlay ping"] = trial_join(lb, token, eps[1], args.trials)
        for name, n in (("web", 1), ("kv", 4)):
            lb.client(1).post("/v1/services", {"name": name, "networks": ["conv"], "replicas": n,
                                               "command": SLEEPER})
        wait("services running", lambda: len(running(lb, 1, "web")) == 1 and len(running(lb, 1, "kv")) == 4
             and len({t["node"] for t in running(lb, 1, "kv")}) == 4, 60, 0.2)
        up, down = trial_scale(lb, eps, args.trials)
        results["service scale 1->4 -> DNS on every node"] = up
        results["service scale 4->1 -> DNS on every node"] = down
        dead, dns = trial_kill(lb, eps, args.trials)
        results["agent SIGKILL -> declared dead"] = dead
        results["agent SIGKILL -> DNS updated"] = dns
        results["partition heal -> same networks"] = trial_heal(lb, args.trials, args.hold)
    rows = ["| event | trials | p50 s | p95 s | max s |", "| --- | ---: | ---: | ---: | ---: |"]
    rows += [f"| {n} | {len(v)} | {percentile(v, 0.5):.2f} | {percentile(v, 0.95):.2f} | {max(v):.2f} |"
             for n, v in results.items()]
    table = "\n".join(rows)
    if args.plot:
        img = RESULTS.parent / "img"
        img.mkdir(exist_ok=True)
        plot(results, img / "convergence.png")
        table += "\n\n![convergence](img/convergence.png)"
    print(table)
    record("Control-plane convergence", f"python -m bench.convergence --trials {args.trials} "
           f"--hold {args.hold:g}" + (" --plot" if args.plot else ""), table)


if __name__ == "__main__":
    main()
