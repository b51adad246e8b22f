"""`meshnet doctor`: checks of the whole host setup, each with a one-line verdict.

The checks only read (a throwaway link for the kernel WireGuard probe aside); the agent
gathers what only it knows (backend, MTUs, clock skew from peers) and passes it in.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from meshnet.host import firewall, links
from meshnet.host.wireguard import kernel_supported
from meshnet.plan.overlay import VXLAN_OVERHEAD, VXLAN_PORT

SKEW_WARN, SKEW_FAIL = 1.0, 60.0  # seconds; joins are refused beyond ±120 s


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str

    def to_json(self) -> dict:
        return asdict(self)


def kernel() -> list[Check]:
    out = []
    wg = kernel_supported()
    out.append(Check("kernel wireguard", "ok" if wg else "warn",
                     "available" if wg else "missing: the userspace backend (wireguard-go) is used"))
    tun = Path("/dev/net/tun").exists()
    out.append(Check("tun device", "ok" if tun or wg else "fail",
                     "/dev/net/tun present" if tun else "/dev/net/tun missing (wireguard-go needs it)"))
    for tool in ("ip", "nft", "nsenter"):
        found = shutil.which(tool)
        out.append(Check(f"tool {tool}", "ok" if found else "fail", found or f"{tool} not on PATH"))
    return out


def backend(name: str | None, interface: str, wireguard_go: str) -> Check:
    if name is None:
        return Check("backend", "warn", "no tunnel yet (not a member?)")
    if name == "userspace" and shutil.which(wireguard_go) is None and not os.path.exists(wireguard_go):
        return Check("backend", "fail", f"userspace, but {wireguard_go} is not installed")
    present = links.link_kind(interface) is not None
    return Check("backend", "ok" if present else "fail",
                 f"{name} on {interface}" if present else f"{name}, but {interface} does not exist")


def rules(interface: str) -> Check:
    if firewall.vxlan_guard_present(interface, VXLAN_PORT):
        return Check("vxlan guard", "ok", f"nftables drops UDP {VXLAN_PORT} except on {interface}")
    return Check("vxlan guard", "fail", f"nftables table inet {firewall.TABLE} missing or altered: "
                                        "overlay traffic could leave in the clear")


def mtu(interface: str, transit_mtu: int | None, underlay_ip: str | None) -> list[Check]:
    if transit_mtu is None or underlay_ip is None:
        return [Check("mtu", "warn", "no tunnel yet")]
    dev, under = links.underlay_for(underlay_ip)
    want = under - 80
    have = Path(f"/sys/class/net/{interface}/mtu")
    actual = int(have.read_text()) if have.exists() else None
    status = "ok" if actual == want == transit_mtu else "fail"
    return [Check("mtu", status, f"underlay {dev} {under}, transit {interface} {actual} (want {want}), "
                                 f"overlay endpoints {want - VXLAN_OVERHEAD}")]


def skew(offsets: dict[str, float]) -> Check:
    if not offsets:
        return Check("clock skew", "warn", "no peer answered")
    name, worst = max(offsets.items(), key=lambda kv: abs(kv[1]))
    status = "ok" if abs(worst) < SKEW_WARN else "warn" if abs(worst) < SKEW_FAIL else "fail"
    return Check("clock skew", status, f"largest offset {worst:+.3f} s ({name}) over {len(offsets)} peer(s)")


def permissions(state_dir: Path, socket_path: Path) -> list[Check]:
    out = []
    bad = []
    if state_dir.exists() and stat.S_IMODE(state_dir.stat().st_mode) & 0o077:
        bad.append(f"{state_dir} is {oct(stat.S_IMODE(state_dir.stat().st_mode))}")
    for f in ("identity.key", "wireguard.key", "cluster.secret", "meshnet.db"):
        p = state_dir / f
        if p.exists() and stat.S_IMODE(p.stat().st_mode) & 0o077:
            bad.append(f"{p} is {oct(stat.S_IMODE(p.stat().st_mode))}")
    out.append(Check("state permissions", "fail" if bad else "ok",
                     "; ".join(bad) or f"{state_dir} 0700, keys 0600"))
    if socket_path.exists():
        mode = stat.S_IMODE(socket_path.stat().st_mode)
        ok = mode & 0o007 == 0
        out.append(Check("api socket", "ok" if ok else "fail", f"{socket_path} mode {oct(mode)}"))
    return out
