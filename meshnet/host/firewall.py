"""Fail-closed nftables guard: VXLAN may only leave or enter through the transit interface.

One table, `inet meshnet`, with an input and an output chain (filter hooks, priority 0,
policy accept) that drop UDP to the VXLAN port on every interface but the WireGuard
transit one. The kernel's VXLAN sockets send through the output hook, so an overlay
packet that would take the underlay in plaintext (a route gone wrong, the tunnel down)
is dropped instead. The table is replaced in one `nft -f -` transaction, so there is
no moment without it once it exists.
"""

from __future__ import annotations

import json
import re

from meshnet.errors import HostError
from meshnet.host.cmd import run
from meshnet.plan.overlay import VXLAN_PORT

TABLE = "meshnet"
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@+-]{1,15}$")


def guard_ruleset(ifname: str, port: int = VXLAN_PORT) -> str:
    """The nft script that (re)places the table atomically: declaring it first makes the
    delete succeed when it does not exist yet."""
    if not _IFNAME.match(ifname):
        raise HostError(f"not a usable interface name for the VXLAN guard: {ifname!r}")
    if not 0 < port < 65536:
        raise HostError(f"not a UDP port for the VXLAN guard: {port!r}")
    return (f"table inet {TABLE} {{}}\n"
            f"delete table inet {TABLE}\n"
            f"table inet {TABLE} {{\n"
            f"  chain input {{\n"
            f"    type filter hook input priority 0; policy accept;\n"
            f'    iifname != "{ifname}" udp dport {port} counter drop\n'
            f"  }}\n"
            f"  chain output {{\n"
            f"    type filter hook output priority 0; policy accept;\n"
            f'    oifname != "{ifname}" udp dport {port} counter drop\n'
            f"  }}\n"
            f"}}\n")


def _rule_is_guard(expr: list, direction: str, ifname: str, port: int) -> bool:
    matches = [e["match"] for e in expr if "match" in e]
    verdicts = [k for e in expr for k in e if k in ("drop", "accept", "reject", "jump", "goto")]
    want = [{"op": "!=", "left": {"meta": {"key": direction}}, "right": ifname},
            {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": port}]
    return matches == want and verdicts == ["drop"]


def guard_in_listing(listing: dict, ifname: str, port: int = VXLAN_PORT) -> bool:
    """Whether `nft -j list table inet meshnet` output is exactly the guard for
    (ifname, port): two accept-policy filter chains at priority 0 with one drop rule each."""
    items = listing.get("nftables", [])
    chains = {c["chain"]["name"]: c["chain"] for c in items if "chain" in c}
    rules: dict[str, list] = {}
    for r in (i["rule"] for i in items if "rule" in i):
        rules.setdefault(r["chain"], []).append(r["expr"])
    if set(chains) != {"input", "output"} or set(rules) - set(chains):
        return False
    for name, direction in (("input", "iifname"), ("output", "oifname")):
        c = chains[name]
        if (c.get("type"), c.get("hook"), c.get("prio"), c.get("policy")) != ("filter", name, 0, "accept"):
            return False
        found = rules.get(name, [])
        if len(found) != 1 or not _rule_is_guard(found[0], direction, ifname, port):
            return False
    return True


def guard_counters(listing: dict) -> dict[str, int]:
    """Packets dropped so far per chain, from `nft -j list table inet meshnet`."""
    out: dict[str, int] = {}
    for r in (i["rule"] for i in listing.get("nftables", []) if "rule" in i):
        for e in r["expr"]:
            if "counter" in e:
                out[r["chain"]] = out.get(r["chain"], 0) + e["counter"]["packets"]
    return out


def _listing() -> dict | None:
    proc = run(["nft", "-j", "list", "table", "inet", TABLE], check=False)
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return None
        raise HostError(f"nft -j list table inet {TABLE} failed ({proc.returncode}): "
                        f"{proc.stderr.strip()}")
    try:
        return json.loads(proc.stdout)
    except ValueError as e:
        raise HostError(f"nft -j list table inet {TABLE}: unreadable JSON: {e}") from e


def vxlan_guard_present(ifname: str, port: int = VXLAN_PORT) -> bool:
    listing = _listing()
    return listing is not None and guard_in_listing(listing, ifname, port)


def vxlan_guard_counters() -> dict[str, int]:
    """{'input': n, 'output': m} packets dropped; {} when the guard is not installed."""
    listing = _listing()
    return guard_counters(listing) if listing is not None else {}


def ensure_vxlan_guard(ifname: str, port: int = VXLAN_PORT) -> bool:
    """Install (or atomically replace) the guard; False when it was already exact."""
    script = guard_ruleset(ifname, port)
    if vxlan_guard_present(ifname, port):
        return False
    run(["nft", "-f", "-"], input=script)
    return True


def remove_vxlan_guard() -> None:
    run(["nft", "-f", "-"], input=f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
