"""One door for subprocesses: log argv, status and stderr; raise HostError on failure."""

from __future__ import annotations

import logging
import subprocess

from meshnet.errors import HostError

log = logging.getLogger(__name__)


def run(argv: list[str], check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise HostError(f"{argv[0]} is not installed (needed for: {' '.join(argv)})") from None
    except subprocess.TimeoutExpired:
        raise HostError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from None
    log.debug("%s -> %s %s", argv, proc.returncode, proc.stderr.strip())
    if check and proc.returncode != 0:
        raise HostError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc
