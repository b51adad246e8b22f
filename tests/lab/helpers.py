"""Small helpers for lab tests: run things on hosts, read the cluster as a host sees it."""

from __future__ import annotations

import subprocess
import sys

from meshnet.lab import Lab

MESHNET = [sys.executable, "-m", "meshnet"]


def sh(lab: Lab, k: int, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return lab.exec(k, list(argv), capture_output=True, text=True, timeout=timeout)


def meshnet(lab: Lab, k: int, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return sh(lab, k, *MESHNET, *argv, timeout=timeout)


def nodes(lab: Lab, k: int) -> list[dict]:
    return lab.client(k).get("/v1/nodes")["nodes"]


def transit_ips(lab: Lab, k: int) -> dict[str, str]:
    return {n["name"]: n["transit_ip"] for n in nodes(lab, k) if n["state"] == "active"}


def ping(lab: Lab, k: int, ip: str, count: int = 1, size: int = 56, timeout: int = 2,
         pattern: str | None = None) -> bool:
    extra = ["-p", pattern] if pattern else []
    argv = ["ping", "-c", str(count), "-s", str(size), "-W", str(timeout), *extra, ip]
    return sh(lab, k, *argv).returncode == 0


def wg_peers(lab: Lab, k: int) -> set[str]:
    out = sh(lab, k, "wg", "show", "mnet0", "peers")
    return set(out.stdout.split()) if out.returncode == 0 else set()
