"""Per-endpoint /etc files: `ip netns exec NAME` bind-mounts /etc/netns/NAME/* over /etc."""

from __future__ import annotations

import shutil
from pathlib import Path

ETC_NETNS = Path("/etc/netns")


def write(ns_name: str, hostname: str, ip: str, nameservers: list[str]) -> None:
    d = ETC_NETNS / ns_name
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{ip}\t{hostname}\n")
    (d / "resolv.conf").write_text("".join(f"nameserver {s}\n" for s in nameservers) +
                                   "options ndots:0\n")
    (d / "hostname").write_text(hostname + "\n")


def remove(ns_name: str) -> None:
    shutil.rmtree(ETC_NETNS / ns_name, ignore_errors=True)


def host_nameservers() -> list[str]:
    """The host's resolvers (what endpoints use until the embedded DNS answers)."""
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        return []
    return [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1]
