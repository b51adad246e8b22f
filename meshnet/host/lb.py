"""VIP load balancing inside an endpoint namespace: nftables DNAT with numgen, as Docker
does with IPVS. Connections to a VIP spread round robin over the healthy tasks; a VIP
with no task is rejected at once instead of timing out."""

from __future__ import annotations

from meshnet.host.cmd import run

TABLE = "meshnet_lb"


def ruleset(backends: dict[str, tuple[str, ...]]) -> str:
    """The whole table, replaced atomically (pure)."""
    lines = [f"table ip {TABLE} {{}}", f"delete table ip {TABLE}", f"table ip {TABLE} {{",
             "  chain output {", "    type nat hook output priority -100; policy accept;"]
    for vip, ips in sorted(backends.items()):
        if ips:
            pairs = ", ".join(f"{i} : {ip}" for i, ip in enumerate(ips))
            lines.append(f"    ip daddr {vip} dnat to numgen inc mod {len(ips)} map {{ {pairs} }}")
    lines += ["  }", "  chain filter_out {", "    type filter hook output priority 0; policy accept;"]
    for vip, ips in sorted(backends.items()):
        if not ips:
            lines.append(f"    ip daddr {vip} reject")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def apply(netns_path: str, backends: dict[str, tuple[str, ...]]) -> None:
    run(["nsenter", f"--net={netns_path}", "--", "nft", "-f", "-"], input=ruleset(backends))


def remove(netns_path: str) -> None:
    run(["nsenter", f"--net={netns_path}", "--", "nft", "delete", "table", "ip", TABLE], check=False)
