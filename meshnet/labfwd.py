"""TCP forwarder for lab status pages: 127.0.0.1:PORT in the root namespace -> 127.0.0.1:7947
inside host hK's network namespace. One process per lab, started by `Lab.forward` and
ended by `Lab.down`.

    python -m meshnet.labfwd OUT.json TARGET_PORT K:PORT:NETNS_PATH...

Binds each PORT (0: one the kernel picks; a port already taken is skipped), writes
{"K": port | "error text"} to OUT.json, then forwards until killed. Each connection gets
a socket made inside the host's namespace (setns on this thread, then back), so nothing
else in the process leaves the root namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import socket
import sys

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in(netns: str, root_fd: int) -> socket.socket:
    fd = os.open(netns, os.O_RDONLY)
    try:
        _setns(fd)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            _setns(root_fd)
    finally:
        os.close(fd)
    sock.setblocking(False)
    return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(out: str, target_port: int, specs: list[str]) -> None:
    root_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    loop = asyncio.get_running_loop()
    result: dict[str, int | str] = {}
    servers = []
    for spec in specs:
        k, port, netns = spec.split(":", 2)

        async def handle(reader, writer, netns=netns) -> None:
            try:
                sock = socket_in(netns, root_fd)
                await loop.sock_connect(sock, ("127.0.0.1", target_port))
                r2, w2 = await asyncio.open_connection(sock=sock)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, w2), _pipe(r2, writer))

        try:
            server = await asyncio.start_server(handle, "127.0.0.1", int(port), reuse_address=True)
        except OSError as e:
            result[k] = f"127.0.0.1:{port} is taken ({e.strerror})"
            continue
        servers.append(server)
        result[k] = server.sockets[0].getsockname()[1]
    tmp = f"{out}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, out)
    await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
