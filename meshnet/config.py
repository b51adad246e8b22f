"""Default paths, ports and ranges, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

STATE_DIR = Path("/var/lib/meshnet")
SOCKET_PATH = Path("/run/meshnet/agent.sock")
CONTROL_PORT = 7946  # join handshake on the underlay, replication on the transit network
WIREGUARD_PORT = 51820
STATUS_PORT = 7947
INTERFACE = "mnet0"
# Away from Docker's pools (172.17.0.0/16 and up, 10.0.0.0/8 for swarm /24s at 10.0.x)
# and Tailscale's 100.64.0.0/10. init checks the host's routes and refuses a clash.
TRANSIT_CIDR = "10.249.0.0/16"
NETWORK_POOL = "10.10.0.0/16"
# WireGuard adds 60 bytes over IPv4 and 80 over IPv6; take the larger one.
WIREGUARD_OVERHEAD = 80
KEEPALIVE = 25
# A newer wireguard-go that scripts/fetch-wireguard-go installs (Debian 13's, several
# times faster than Debian 12's); the agent runs it when present, else PATH's.
NEWER_WIREGUARD_GO = Path("/usr/local/lib/meshnet/wireguard-go")


def default_wireguard_go() -> str:
    return str(NEWER_WIREGUARD_GO) if os.access(NEWER_WIREGUARD_GO, os.X_OK) else "wireguard-go"


@dataclass
class AgentConfig:
    """Everything `meshnet agent` is told on its command line."""

    state_dir: Path = STATE_DIR
    socket_path: Path = SOCKET_PATH
    listen_host: str = "0.0.0.0"
    listen_port: int = CONTROL_PORT
    wireguard: str = "auto"  # auto | kernel | userspace
    wireguard_go: str = field(default_factory=default_wireguard_go)
    interface: str = INTERFACE
    wireguard_port: int = WIREGUARD_PORT
    name: str | None = None  # node name; defaults to the hostname
    anti_entropy_interval: float = 2.0
    reconcile_interval: float = 5.0
    mdns: bool = True
    probe_interval: float = 1.0
    socket_group: str | None = None  # the API socket is root-only unless a group is named
    dns_forward: list[str] = field(default_factory=list)  # default: the host's resolvers
    status_addr: str = f"127.0.0.1:{STATUS_PORT}"  # the status page; "off" for none
    status_token: str | None = None  # required when status_addr is not loopback
    extra: dict = field(default_factory=dict)
