"""Poll a DNS name until a condition holds; print the wall time it first did.

Run inside an endpoint's namespace (no meshnet imports, so it starts fast anywhere):

    python bench/dnsprobe.py NAME count=N        # the answer has exactly N A records
    python bench/dnsprobe.py NAME absent=IP      # the answer no longer holds IP (and is not empty)
    [--server 127.0.0.11] [--timeout 30]

Prints "ready" once it has sent its first query, then "ok WALLTIME" or "timeout".
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time


def query(name: str) -> bytes:
    qid = int.from_bytes(os.urandom(2), "big")
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", 1, 1)


def _skip_name(msg: bytes, i: int) -> int:
    while True:
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += n + 1


def a_records(msg: bytes) -> list[str]:
    _, _, qd, an, _, _ = struct.unpack(">HHHHHH", msg[:12])
    i = 12
    for _ in range(qd):
        i = _skip_name(msg, i) + 4
    out = []
    for _ in range(an):
        i = _skip_name(msg, i)
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(msg[i:i + 4]))
        i += rdlen
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("cond")
    ap.add_argument("--server", default="127.0.0.11")
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--interval", type=float, default=0.01)
    a = ap.parse_args()
    kind, _, arg = a.cond.partition("=")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    deadline = time.monotonic() + a.timeout
    first = True
    while time.monotonic() < deadline:
        try:
            s.sendto(query(a.name), (a.server, 53))
            if first:
                print("ready", flush=True)
                first = False
            ips = a_records(s.recv(4096))
        except OSError:
            ips = None
        if ips is not None and ((kind == "count" and len(ips) == int(arg))
                                or (kind == "absent" and ips and arg not in ips)):
            print(f"ok {time.time():.6f}", flush=True)
            return
        time.sleep(a.interval)
    print("timeout", flush=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
