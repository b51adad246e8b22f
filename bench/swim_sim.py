"""SWIM at scale in the simulator: detection time, dissemination rounds, false positives
and load at 100 / 300 / 1,000 nodes with 1% and 5% message loss.

Runs the real `meshnet.gossip.swim.Swim` (messages through encode/decode) on a virtual
clock; a full run takes about a minute. Writes its section of docs/scale.md:

    .venv/bin/python -m bench.swim_sim [--sizes 100 300 1000] [--loss 0.01 0.05] [--seed 1]
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from meshnet.gossip.sim import Sim
from meshnet.gossip.swim import Event, Status, SwimConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "scale.md"
BEGIN, END = "<!-- swim_sim:begin -->", "<!-- swim_sim:end -->"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Result:
    n: int
    loss: float
    trials: int = 0
    first: list[float] = field(default_factory=list)  # kill -> first 'dead' anywhere
    everywhere: list[float] = field(default_factory=list)  # kill -> 'dead' on every live node
    observer: list[float] = field(default_factory=list)  # kill -> 'dead' per (trial, observer)
    rounds: list[float] = field(default_factory=list)  # first 'dead' -> everywhere, in probe periods
    leave_rounds: float = 0.0  # one 'left' from its source to everyone, in probe periods
    undetected: int = 0
    false_dead: int = 0
    idle_msgs: float = 0.0  # messages sent per node per second, nothing happening
    busy_msgs: float = 0.0  # over the whole run, detections included
    idle_bytes: float = 0.0
    max_bytes: int = 0
    seconds: float = 0.0  # wall clock


def run(n: int, loss: float, trials: int, seed: int, cfg: SwimConfig) -> Result:
    wall = time.perf_counter()
    res = Result(n, loss)
    sim = Sim(n, cfg, seed=seed, loss=loss, wire=True)
    rng = random.Random(seed)
    killed: set[str] = set()
    watch: dict[str, float] = {}  # observer -> time it saw the watched node dead/left
    target = {"node": "", "status": Status.DEAD}

    def listen(observer: str, ev: Event) -> None:
        if ev.status == Status.DEAD and ev.node not in killed:
            res.false_dead += 1
        if ev.node == target["node"] and ev.status == target["status"] and observer not in watch:
            watch[observer] = ev.time

    sim.listeners.append(listen)
    sim.run(5.0)
    s0, b0, t0 = sim.sent, sim.bytes, sim.now
    sim.run(10.0)
    res.idle_msgs = (sim.sent - s0) / n / (sim.now - t0)
    res.idle_bytes = (sim.bytes - b0) / n / (sim.now - t0)
    start_sent, start_t = sim.sent, sim.now
    for _ in range(trials):
        victim = rng.choice([i for i in sim.live()])
        killed.add(victim)
        watch.clear()
        target.update(node=victim, status=Status.DEAD)
        sim.kill(victim)
        t_kill = sim.now
        need = len(sim.live())
        sim.run(90.0, until=lambda need=need: len(watch) >= need)
        res.trials += 1
        if len(watch) < need:
            res.undetected += 1
            continue
        times = sorted(t - t_kill for t in watch.values())
        res.first.append(times[0])
        res.everywhere.append(times[-1])
        res.observer += times
        res.rounds.append((times[-1] - times[0]) / cfg.probe_interval)
        sim.run(2.0)
    res.busy_msgs = (sim.sent - start_sent) / n / (sim.now - start_t)
    # pure dissemination from one source: a graceful leave
    quitter = rng.choice(sim.live())
    watch.clear()
    target.update(node=quitter, status=Status.LEFT)
    sim.leave(quitter)
    t_leave = sim.now
    need = len(sim.live()) - 1
    sim.run(60.0, until=lambda: len(watch) >= need)
    res.leave_rounds = (max(watch.values()) - t_leave) / cfg.probe_interval if len(watch) >= need \
        else float("inf")
    res.max_bytes = sim.max_bytes
    res.seconds = time.perf_counter() - wall
    return res


def slow_nodes(n: int, slow: int, loss: float, seed: int, lifeguard: bool, seconds: float) -> tuple[int, int]:
    """`slow` nodes lose half their messages and delay the rest up to 1 s: how many times are
    healthy nodes suspected / declared dead?"""
    sim = Sim(n, SwimConfig(lifeguard=lifeguard, final_ping=lifeguard), seed=seed, loss=loss)
    bad = set(sim.ids[:slow])

    def link(s: str, d: str, now: float, rng: random.Random) -> float | None:
        if s in bad or d in bad:
            return None if rng.random() < 0.5 else rng.uniform(0.05, 1.0)
        return sim.standard()

    sim.link = link
    sim.run(seconds)
    healthy = [e for _, e in sim.log if e.node not in bad]
    # one suspicion (or death) is one (node, incarnation), however many nodes heard of it
    return (len({(e.node, e.incarnation) for e in healthy if e.status == Status.SUSPECT}),
            len({(e.node, e.incarnation) for e in healthy if e.status == Status.DEAD}))


def bars(rows: list[Result]) -> list[str]:
    """A text plot: detection time everywhere (p50 '#', up to p95 '-') per size and loss."""
    width = 56
    top = max(pct(r.everywhere, 95) for r in rows)
    scale = width / top if top > 0 else 1.0
    lines = ["detection, kill -> dead on every node (s):  # = p50, - = up to p95", ""]
    for r in rows:
        p50, p95 = pct(r.everywhere, 50), pct(r.everywhere, 95)
        a = round(p50 * scale)
        b = max(round(p95 * scale) - a, 0)
        lines.append(f"{r.n:>5} nodes {r.loss:>4.0%} loss |{'#' * a}{'-' * b} {p50:.1f} / {p95:.1f}")
    lines.append(f"{'':>22}+{'-' * width}")
    lines.append(f"{'':>22}0{'':>{width - 6}}{top:.1f} s")
    return lines


def table(rows: list[Result], cfg: SwimConfig) -> list[str]:
    out = [
        "| nodes | loss | kills | first dead p50 / p95 | dead everywhere p50 / p95 | per observer p50 / p95 "
        "| estimate typical / slow | rounds first→all p50 / max | leave rounds | false dead "
        "| msgs/node/s idle / busy | bytes/node/s idle | largest msg | wall |",
        "|---:|---:|---:|---|---|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        typ, slow = cfg.detection_estimate(r.n)
        out.append(
            f"| {r.n} | {r.loss:.0%} | {r.trials - r.undetected}/{r.trials} "
            f"| {pct(r.first, 50):.2f} / {pct(r.first, 95):.2f} s "
            f"| {pct(r.everywhere, 50):.2f} / {pct(r.everywhere, 95):.2f} s "
            f"| {pct(r.observer, 50):.2f} / {pct(r.observer, 95):.2f} s "
            f"| {typ:.1f} / {slow:.1f} s "
            f"| {pct(r.rounds, 50):.1f} / {max(r.rounds, default=float('nan')):.1f} "
            f"| {r.leave_rounds:.1f} | {r.false_dead} "
            f"| {r.idle_msgs:.1f} / {r.busy_msgs:.1f} | {r.idle_bytes:.0f} | {r.max_bytes} B "
            f"| {r.seconds:.0f} s |")
    return out


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Scale\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--loss", type=float, nargs="+", default=[0.01, 0.05])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/scale.md alone")
    args = ap.parse_args()
    cfg = SwimConfig()
    wall = time.perf_counter()
    rows = []
    for n in args.sizes:
        for loss in args.loss:
            trials = {100: 30, 300: 20}.get(n, 10)
            r = run(n, loss, trials, args.seed + n, cfg)
            rows.append(r)
            print(f"n={n} loss={loss:.0%}: everywhere p50 {pct(r.everywhere, 50):.2f}s "
                  f"p95 {pct(r.everywhere, 95):.2f}s, {r.false_dead} false dead, {r.seconds:.0f}s wall",
                  file=sys.stderr)
    lg = {on: slow_nodes(100, 3, 0.01, args.seed, on, 60.0) for on in (True, False)}
    cmd = "python -m bench.swim_sim " + " ".join(sys.argv[1:])
    section = "\n".join([
        BEGIN,
        "## SWIM failure detection in simulation (bench/swim_sim.py)",
        "",
        "The real `meshnet.gossip.swim.Swim` state machines, every message through the wire",
        "encoder and decoder, on an in-memory network with uniform 0.5-2 ms delay and",
        "independent loss per message, on a virtual clock (`meshnet.gossip.sim`). Default",
        f"`SwimConfig` (probe every {cfg.probe_interval} s, probe timeout {cfg.probe_timeout} s, "
        f"k={cfg.indirect_checks}, suspicion mult {cfg.suspicion_mult:g}, max {cfg.suspicion_max_mult:g}x, "
        f"retransmit mult {cfg.retransmit_mult}, gossip {cfg.gossip_nodes} nodes / "
        f"{cfg.gossip_interval} s while there is news).",
        "Each kill crashes one random node; the run continues with the earlier victims dead.",
        "",
        f"Command: `{cmd.strip()}` ({time.perf_counter() - wall:.0f} s on {platform.machine()}, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}).",
        "",
        *table(rows, cfg),
        "",
        "- *first dead*: from the kill to the first node declaring it dead; *dead everywhere*: to",
        "  the last live node; *per observer*: every (kill, node) pair.",
        "- *rounds first→all*: from the first 'dead' to the last, in probe periods (0.4 s):",
        "  dissemination, which grows with log N. *leave rounds*: a graceful leave (one source)",
        "  reaching everyone.",
        "- *false dead*: 'dead' declared about a node that was running (should be 0).",
        "- *msgs/node/s*: datagrams sent per node per second; *idle* (no kills) is pings, acks,",
        "  the ping-reqs that loss causes, and gossip about the false suspicions loss causes;",
        "  *busy* includes the detections. Per node it is bounded whatever N: 2.5 probes/s with",
        "  their acks and ping-reqs, plus at most `gossip_nodes / gossip_interval` = 15 gossip",
        "  messages/s while there is news, so the cluster sends O(N) per period. At 5% loss in",
        "  1,000 nodes some suspicion (or its refutation) is nearly always circulating, so gossip",
        "  runs near that ceiling; none of those suspicions became a 'dead'.",
        "",
        "```",
        *bars(rows),
        "```",
        "",
        "Lifeguard, 100 nodes at 1% loss with 3 slow nodes (half their messages lost, the rest",
        "delayed 50 ms-1 s), 60 s: suspicions and deaths of the 97 healthy nodes (each counted",
        "once per (node, incarnation), however many nodes heard it):",
        "",
        "| Lifeguard | suspicions of healthy nodes | healthy nodes declared dead |",
        "|---|---:|---:|",
        f"| on (default) | {lg[True][0]} | {lg[True][1]} |",
        f"| off (plain SWIM: fixed timeouts, no nacks, no buddy, no final ping) "
        f"| {lg[False][0]} | {lg[False][1]} |",
        END,
    ])
    print(section)
    if not args.no_write:
        write_doc(section)


if __name__ == "__main__":
    main()
