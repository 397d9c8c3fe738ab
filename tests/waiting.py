"""Waiting on conditions, with a deadline: the tests' only way to wait."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Callable
from typing import Any


async def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``condition`` (a function, or a coroutine function) until it returns a true value.

    Returns that value; fails the test, naming ``what``, after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        await asyncio.sleep(0.05)


def accepts(address: str | tuple[str, int], timeout: float = 1) -> bool:
    """Whether something accepts connections at ``address``: a unix socket's path, or (host, port)."""
    with socket.socket(socket.AF_UNIX if isinstance(address, str) else socket.AF_INET) as probe:
        probe.settimeout(timeout)
        return probe.connect_ex(address) == 0


def wait_until_sync(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """wait_until() for code outside an event loop, such as a synchronous fixture."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.05)
    return value
