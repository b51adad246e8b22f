"""A single TCP stream, for the guest: `recv` counts and hashes what arrives, `send` sends.

    python3 tcpstream.py recv ADDR PORT [nohash]              # one connection; JSON at EOF
    python3 tcpstream.py send ADDR PORT SECONDS [RATE [nohash]]   # RATE bytes/s, 0: flat out

Both print one JSON line: {"bytes": N, "sha256": "...", "seconds": S}. The sender's data
is pseudo-random (seeded), so a hash mismatch means bytes were lost or altered.
`nohash` (for throughput figures) leaves the hashing out: under TCG it costs more CPU
than the kernel's path. The receiver's seconds run from the first byte to EOF. Stdlib
only: a new Python process under TCG costs seconds, and this one imports little.
Used by tests/kernel/test_ipsec_rotation_guest.py and bench_throughput.py (bench/kernel_throughput.py).
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import sys
import time

CHUNK = 64 * 1024


class _NoHash:
    def update(self, _data: bytes) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


def recv(addr: str, port: int, hashing: bool = True) -> None:
    srv = socket.create_server((addr, port))
    print("listening", flush=True)
    conn, _ = srv.accept()
    h, n, start = hashlib.sha256() if hashing else _NoHash(), 0, time.monotonic()
    first = None
    while data := conn.recv(1 << 20):
        if first is None:
            first = time.monotonic()
        h.update(data)
        n += len(data)
    end = time.monotonic()
    print(json.dumps({"bytes": n, "sha256": h.hexdigest(), "seconds": end - (first or start)}))


def send(addr: str, port: int, seconds: float, rate: float, hashing: bool = True) -> None:
    rnd = random.Random(4)
    block = rnd.randbytes(CHUNK * 16)
    conn = socket.create_connection((addr, port), timeout=30)
    h, n, start = hashlib.sha256() if hashing else _NoHash(), 0, time.monotonic()
    i = 0
    while (now := time.monotonic()) - start < seconds:
        if rate and n > rate * (now - start):
            time.sleep(0.01)
            continue
        off = (i % 16) * CHUNK
        chunk = block[off:off + CHUNK]
        conn.sendall(chunk)
        h.update(chunk)
        n += len(chunk)
        i += 1
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)  # wait for the receiver to close: everything was read
    print(json.dumps({"bytes": n, "sha256": h.hexdigest(), "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "nohash"]
    hashing = "nohash" not in sys.argv
    mode, host, p = args[:3]
    if mode == "recv":
        recv(host, int(p), hashing)
    else:
        send(host, int(p), float(args[3]), float(args[4]) if len(args) > 4 else 0.0, hashing)
