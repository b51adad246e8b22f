"""Fail-closed nftables guard: VXLAN may only leave or enter through the transit interface;
and the forwarding filter of routed networks (below).

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
from meshnet.plan.overlay import VXLAN_PORT, L3Filter

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


def _listing(table: str = TABLE) -> dict | None:
    proc = run(["nft", "-j", "list", "table", "inet", table], check=False)
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return None
        raise HostError(f"nft -j list table inet {table} failed ({proc.returncode}): "
                        f"{proc.stderr.strip()}")
    try:
        return json.loads(proc.stdout)
    except ValueError as e:
        raise HostError(f"nft -j list table inet {table}: unreadable JSON: {e}") from e


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


# --- routed (mode=l3) networks ----------------------------------------------------------
#
# A second table, `inet meshnet-l3`, present only while this host has endpoints on routed
# networks. The host forwards for them (IPv4 forwarding on their veths and the transit
# interface), so the filter is what keeps networks apart: an endpoint may send only from
# its own address into its own network's subnet, receive only from that subnet, and
# reach nothing on the host itself; the transit interface forwards into routed
# endpoints and nowhere else.

L3_TABLE = "meshnet-l3"
L3_PREFIX = "mnr-"


def l3_ruleset(f: L3Filter) -> str:
    """The nft script that (re)places the routed-network filter atomically."""
    for name in (f.transit, *(veth for veth, _, _ in f.rules)):
        if not _IFNAME.match(name):
            raise HostError(f"not a usable interface name for the routed filter: {name!r}")
    out_rules = "".join(f'    iifname "{veth}" ip saddr {ip} ip daddr {net} accept\n'
                        for veth, ip, net in f.rules)
    in_rules = "".join(f'    oifname "{veth}" ip saddr {net} ip daddr {ip} accept\n'
                       for veth, ip, net in f.rules)
    return (f"table inet {L3_TABLE} {{}}\n"
            f"delete table inet {L3_TABLE}\n"
            f"table inet {L3_TABLE} {{\n"
            f"  chain forward {{\n"
            f"    type filter hook forward priority 0; policy accept;\n"
            f'    iifname "{L3_PREFIX}*" jump from_endpoint\n'
            f'    oifname "{L3_PREFIX}*" jump to_endpoint\n'
            f'    iifname "{f.transit}" drop\n'
            f"  }}\n"
            f"  chain input {{\n"
            f"    type filter hook input priority 0; policy accept;\n"
            f'    iifname "{L3_PREFIX}*" drop\n'
            f"  }}\n"
            f"  chain from_endpoint {{\n{out_rules}    drop\n  }}\n"
            f"  chain to_endpoint {{\n{in_rules}    drop\n  }}\n"
            f"}}\n")


def _matches(expr: list) -> dict[str, object]:
    """{'iifname': 'mnr-x', 'saddr': '10.0.0.2', 'daddr': '10.0.0.0/24', ...} of a rule's
    `==` matches, plus 'verdict'; prefixes come back as 'addr/len'."""
    out: dict[str, object] = {}
    for e in expr:
        if "match" in e:
            m = e["match"]
            left, right = m.get("left", {}), m.get("right")
            key = left.get("meta", {}).get("key") or left.get("payload", {}).get("field")
            if isinstance(right, dict) and "prefix" in right:
                right = f"{right['prefix']['addr']}/{right['prefix']['len']}"
            out[str(key) if m.get("op") == "==" else f"{key}{m.get('op')}"] = right
        for verdict in ("accept", "drop"):
            if verdict in e:
                out["verdict"] = verdict
        if "jump" in e:
            out["verdict"] = "jump " + e["jump"]["target"]
    return out


def l3_filter_in_listing(listing: dict) -> L3Filter | None:
    """Read the routed filter back from `nft -j list table inet meshnet-l3`. Anything that
    is not exactly what `l3_ruleset` writes comes back with a ('!', '', '') rule, which
    no desired filter has, so the applier replaces the table."""
    items = listing.get("nftables", [])
    chains = {c["chain"]["name"]: c["chain"] for c in items if "chain" in c}
    rules: dict[str, list[dict]] = {}
    for r in (i["rule"] for i in items if "rule" in i):
        rules.setdefault(r["chain"], []).append(_matches(r["expr"]))
    broken = (("!", "", ""),)
    base = rules.get("forward", [])
    transit = base[2].get("iifname", "") if len(base) == 3 else ""
    fixed = [{"iifname": f"{L3_PREFIX}*", "verdict": "jump from_endpoint"},
             {"oifname": f"{L3_PREFIX}*", "verdict": "jump to_endpoint"},
             {"iifname": transit, "verdict": "drop"}]
    hooks_ok = all((chains.get(n, {}).get("hook"), chains.get(n, {}).get("prio"),
                    chains.get(n, {}).get("policy")) == (n, 0, "accept") for n in ("forward", "input"))
    if (set(chains) != {"forward", "input", "from_endpoint", "to_endpoint"} or not hooks_ok
            or base != fixed or rules.get("input") != [{"iifname": f"{L3_PREFIX}*", "verdict": "drop"}]):
        return L3Filter(str(transit), broken)
    out_rules, in_rules = rules.get("from_endpoint", []), rules.get("to_endpoint", [])
    if not out_rules or out_rules[-1] != {"verdict": "drop"} or in_rules[-1:] != [{"verdict": "drop"}]:
        return L3Filter(str(transit), broken)
    found = tuple((str(r.get("iifname")), str(r.get("saddr")), str(r.get("daddr")))
                  for r in out_rules[:-1])
    mirror = [{"oifname": veth, "saddr": net, "daddr": ip, "verdict": "accept"} for veth, ip, net in found]
    if any(set(r) != {"iifname", "saddr", "daddr", "verdict"} or r["verdict"] != "accept"
           for r in out_rules[:-1]) or in_rules[:-1] != mirror:
        return L3Filter(str(transit), broken)
    return L3Filter(str(transit), tuple(sorted(found)))


def read_l3_filter() -> L3Filter | None:
    listing = _listing(L3_TABLE)
    return l3_filter_in_listing(listing) if listing is not None else None


def set_l3_filter(f: L3Filter) -> None:
    run(["nft", "-f", "-"], input=l3_ruleset(f))


def remove_l3_filter() -> None:
    run(["nft", "-f", "-"], input=f"table inet {L3_TABLE} {{}}\ndelete table inet {L3_TABLE}\n")
