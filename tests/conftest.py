"""Shared test helpers: waiting for a condition with a deadline (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_for(what: str, check: Callable[[], object], timeout: float = 20, every: float = 0.1):
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # the condition may raise until it holds
            last_error = e
        time.sleep(every)
    pytest.fail(f"timed out after {timeout} s waiting for {what}" +
                (f" (last error: {last_error})" if last_error else ""))
