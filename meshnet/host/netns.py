"""Enter a network namespace on the calling thread only (Python 3.11 has no os.setns).

Used to open sockets inside an endpoint's namespace from the agent's own process: a socket
keeps the namespace it was created in, so once it is bound the thread can go back home.
Only the calling thread moves; other threads (and the rest of the process) stay where they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

from meshnet.errors import HostError

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns({what}): {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the block with this thread in the network namespace at `path`
    (`/run/netns/NAME` or `/proc/PID/ns/net`), then return to the thread's own namespace.

    Never put an `await` inside the block: another task would run in the wrong namespace.
    """
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise HostError(f"network namespace {path} cannot be opened: {e.strerror}") from None
        try:
            _setns(target, path)
        except OSError as e:
            raise HostError(f"cannot enter network namespace {path}: {e.strerror}") from None
        finally:
            os.close(target)
        try:
            yield
        finally:
            try:
                _setns(saved, "back home")
            except OSError as e:  # this thread would serve the wrong namespace from now on
                raise SystemExit(f"cannot return from network namespace {path}: {e}") from e
    finally:
        os.close(saved)
