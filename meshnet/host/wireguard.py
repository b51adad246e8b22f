"""Two appliers for one WireGuard model (meshnet.plan.wireguard): kernel and userspace.

- `KernelWireGuard` drives the in-kernel module through pyroute2's generic netlink.
- `UserspaceWireGuard` starts `wireguard-go` and speaks its UAPI text protocol on
  /var/run/wireguard/<if>.sock (keys in hex there, base64 everywhere else).

Both read the device back into a `Device` (for `diff`) plus `PeerStats` (for `node ls`
and the status page) and apply a list of ops; applying the same ops twice is harmless.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Protocol

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink.exceptions import NetlinkError

from meshnet.errors import HostError
from meshnet.host.links import delete_link, link_index, link_kind
from meshnet.plan.wireguard import Device, Op, Peer, PeerStats, RemovePeer, SetDevice, SetPeer

log = logging.getLogger(__name__)

UAPI_DIR = Path("/var/run/wireguard")


def _hex(b64: str) -> str:
    return base64.b64decode(b64).hex()


def _b64(hexkey: str) -> str:
    return base64.b64encode(bytes.fromhex(hexkey)).decode()


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


class Backend(Protocol):
    name: str

    def exists(self, ifname: str) -> bool: ...
    def create(self, ifname: str) -> None: ...
    def read(self, ifname: str) -> tuple[Device, list[PeerStats]]: ...
    def apply(self, ifname: str, ops: list[Op]) -> None: ...
    def delete(self, ifname: str) -> None: ...


class KernelWireGuard:
    name = "kernel"

    def exists(self, ifname: str) -> bool:
        return link_kind(ifname) == "wireguard"

    def create(self, ifname: str) -> None:
        with IPRoute() as ipr:
            if link_index(ipr, ifname) is not None:
                return
            try:
                ipr.link("add", ifname=ifname, kind="wireguard")
            except NetlinkError as e:
                raise HostError(f"could not create kernel WireGuard link {ifname}: {e}") from e

    def read(self, ifname: str) -> tuple[Device, list[PeerStats]]:
        try:
            with WireGuard() as wg:
                msgs = wg.info(ifname)
        except NetlinkError as e:
            raise HostError(f"could not read kernel WireGuard link {ifname}: {e}") from e
        private_key, port = "", 0
        # A dump longer than one netlink message goes on in the next one (device
        # attributes only in the first), and a peer with many allowed IPs can be split
        # across two: the continuation repeats its public key and carries the rest.
        found: dict[str, dict] = {}
        for msg in msgs:
            key = msg.get_attr("WGDEVICE_A_PRIVATE_KEY")
            if key is not None:
                private_key = _nla_key(key)
            port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or port
            for p in msg.get_attr("WGDEVICE_A_PEERS") or []:
                pub = _nla_key(p.get_attr("WGPEER_A_PUBLIC_KEY"))
                cur = found.setdefault(pub, {"endpoint": None, "allowed": [], "keepalive": 0,
                                             "hs": 0.0, "rx": 0, "tx": 0})
                ep = p.get_attr("WGPEER_A_ENDPOINT")
                if ep is not None and ep.get("port"):
                    cur["endpoint"] = _join_endpoint(ep["addr"], ep["port"])
                cur["allowed"] += [a["addr"] for a in p.get_attr("WGPEER_A_ALLOWEDIPS") or []
                                   if "addr" in a]
                keepalive = p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL")
                if keepalive is not None:
                    cur["keepalive"] = keepalive
                hs = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
                if hs is not None:  # {"tv_sec", "tv_nsec"}, zero for never
                    cur["hs"] = float(hs["tv_sec"])
                cur["rx"] = p.get_attr("WGPEER_A_RX_BYTES") or cur["rx"]
                cur["tx"] = p.get_attr("WGPEER_A_TX_BYTES") or cur["tx"]
        peers = {pub: Peer(pub, c["endpoint"], tuple(sorted(set(c["allowed"]))), c["keepalive"])
                 for pub, c in found.items()}
        stats = [PeerStats(pub, c["endpoint"], c["hs"], c["rx"], c["tx"])
                 for pub, c in found.items()]
        return Device(private_key, port, peers), stats

    def apply(self, ifname: str, ops: list[Op]) -> None:
        with WireGuard() as wg:
            for op in ops:
                try:
                    if isinstance(op, SetDevice):
                        wg.set(ifname, private_key=op.private_key, listen_port=op.listen_port)
                    elif isinstance(op, RemovePeer):
                        wg.set(ifname, peer={"public_key": op.public_key, "remove": True})
                    elif isinstance(op, SetPeer):
                        wg.set(ifname, peer=_kernel_peer(op.peer))
                except NetlinkError as e:
                    raise HostError(f"WireGuard {ifname}: {op} failed: {e}") from e

    def delete(self, ifname: str) -> None:
        delete_link(ifname)


def _nla_key(attr) -> str:
    """A key attribute as pyroute2 decodes it: base64 bytes (what `get_attr` returns), or
    the nla itself with the base64 under "value"."""
    if not isinstance(attr, bytes | str):
        attr = attr["value"]
    return attr.decode() if isinstance(attr, bytes) else attr


def _join_endpoint(addr: str, port: int) -> str:
    """ "ip:port" as `wg` and the node rows write it: IPv6 in brackets."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _kernel_peer(p: Peer) -> dict:
    peer: dict = {"public_key": p.public_key, "persistent_keepalive": p.keepalive,
                  "replace_allowed_ips": True, "allowed_ips": list(p.allowed_ips)}
    if p.endpoint:
        peer["endpoint_addr"], peer["endpoint_port"] = _split_endpoint(p.endpoint)
    return peer


class UserspaceWireGuard:
    name = "userspace"

    def __init__(self, binary: str = "wireguard-go", uapi_dir: Path = UAPI_DIR,
                 log_path: Path | None = None) -> None:
        self.binary = binary
        self.uapi_dir = uapi_dir
        self.log_path = log_path

    def _sock(self, ifname: str) -> Path:
        return self.uapi_dir / f"{ifname}.sock"

    def exists(self, ifname: str) -> bool:
        if link_kind(ifname) != "tun" or not self._sock(ifname).exists():
            return False
        try:
            self._uapi("get=1\n\n", ifname)
        except HostError:
            return False
        return True

    def create(self, ifname: str) -> None:
        """Start wireguard-go for `ifname` (it daemonizes) and wait for its UAPI socket."""
        if self.exists(ifname):
            return
        delete_link(ifname)  # a stale tun left by a dead wireguard-go
        self._sock(ifname).unlink(missing_ok=True)
        # The daemon child inherits stdout/stderr when LOG_LEVEL is set: give it a file,
        # never a pipe, or we would wait for an EOF that comes only when it exits.
        env = dict(os.environ, LOG_LEVEL="error", WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        log_path = self.log_path or Path(os.devnull)
        try:
            with open(log_path, "ab") as logf:
                proc = subprocess.run([self.binary, ifname], env=env, stdout=logf, stderr=logf,
                                      stdin=subprocess.DEVNULL, timeout=15)
        except FileNotFoundError:
            raise HostError(f"wireguard-go not found at {self.binary!r}: install it "
                            "(apt install wireguard-go) or pass --wireguard-go PATH") from None
        if proc.returncode != 0:
            raise HostError(f"wireguard-go {ifname} exited with {proc.returncode} (see {log_path})")
        deadline = time.monotonic() + 10
        while not self.exists(ifname):
            if time.monotonic() > deadline:
                raise HostError(f"wireguard-go started but {self._sock(ifname)} never answered")
            time.sleep(0.05)

    def _uapi(self, request: str, ifname: str) -> list[tuple[str, str]]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(self._sock(ifname)))
                s.sendall(request.encode())
                buf = b""
                while not buf.endswith(b"\n\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
        except OSError as e:
            raise HostError(f"wireguard-go UAPI {self._sock(ifname)}: {e}") from e
        pairs = [tuple(line.split("=", 1)) for line in buf.decode().splitlines() if "=" in line]
        err = dict(pairs).get("errno", "0")
        if err != "0":
            raise HostError(f"wireguard-go UAPI {ifname}: errno {err} ({os.strerror(int(err))})")
        return [(k, v) for k, v in pairs if k != "errno"]

    def read(self, ifname: str) -> tuple[Device, list[PeerStats]]:
        private_key, port = "", 0
        peers: dict[str, Peer] = {}
        stats: list[PeerStats] = []
        cur: dict | None = None

        def close() -> None:
            if cur is not None:
                pub = cur["pub"]
                peers[pub] = Peer(pub, cur["endpoint"], tuple(sorted(cur["allowed"])),
                                  cur["keepalive"])
                stats.append(PeerStats(pub, cur["endpoint"], cur["hs"], cur["rx"], cur["tx"]))

        for k, v in self._uapi("get=1\n\n", ifname):
            if k == "private_key":
                private_key = _b64(v)
            elif k == "listen_port":
                port = int(v)
            elif k == "public_key":
                close()
                cur = {"pub": _b64(v), "endpoint": None, "allowed": [], "keepalive": 0, "hs": 0.0,
                       "rx": 0, "tx": 0}
            elif cur is None:
                continue
            elif k == "endpoint":
                cur["endpoint"] = v
            elif k == "allowed_ip":
                cur["allowed"].append(v)
            elif k == "persistent_keepalive_interval":
                cur["keepalive"] = int(v)
            elif k == "last_handshake_time_sec":
                cur["hs"] = float(v)
            elif k == "rx_bytes":
                cur["rx"] = int(v)
            elif k == "tx_bytes":
                cur["tx"] = int(v)
        close()
        return Device(private_key, port, peers), stats

    def apply(self, ifname: str, ops: list[Op]) -> None:
        if not ops:
            return
        lines = ["set=1"]
        for op in ops:
            if isinstance(op, SetDevice):
                lines += [f"private_key={_hex(op.private_key)}", f"listen_port={op.listen_port}"]
            elif isinstance(op, RemovePeer):
                lines += [f"public_key={_hex(op.public_key)}", "remove=true"]
            elif isinstance(op, SetPeer):
                p = op.peer
                lines += [f"public_key={_hex(p.public_key)}"]
                if p.endpoint:
                    lines.append(f"endpoint={p.endpoint}")
                lines += [f"persistent_keepalive_interval={p.keepalive}", "replace_allowed_ips=true"]
                lines += [f"allowed_ip={a}" for a in p.allowed_ips]
        self._uapi("\n".join(lines) + "\n\n", ifname)

    def delete(self, ifname: str) -> None:
        """Removing the tun link makes wireguard-go exit; its socket goes with it."""
        delete_link(ifname)
        self._sock(ifname).unlink(missing_ok=True)


def kernel_supported() -> bool:
    """Whether this kernel can make a WireGuard link (tried with a throwaway one)."""
    probe = f"mnwgprobe{os.getpid() % 100000}"
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=probe, kind="wireguard")
        except NetlinkError as e:
            if e.code in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV):
                return False
            raise
        idx = link_index(ipr, probe)
        if idx is not None:
            ipr.link("del", index=idx)
    return True


def choose(mode: str, wireguard_go: str, ifname: str, log_path: Path | None = None) -> Backend:
    """auto: keep what the interface already is, else kernel when the kernel has it."""
    if mode == "kernel":
        return KernelWireGuard()
    if mode == "userspace":
        return UserspaceWireGuard(wireguard_go, log_path=log_path)
    if mode != "auto":
        raise HostError(f"unknown WireGuard backend {mode!r} (auto, kernel or userspace)")
    kind = link_kind(ifname)
    if kind == "wireguard" or (kind is None and kernel_supported()):
        return KernelWireGuard()
    return UserspaceWireGuard(wireguard_go, log_path=log_path)
