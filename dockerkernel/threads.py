"""Running the Docker SDK's blocking calls off the server's event loop.

Every call to an engine blocks, so the provisioner makes it in a thread: in_thread()
for the short ones, in_own_thread() for a start, which may pull for minutes and
can be cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# A pool of its own keeps long calls from starving the loop's default executor,
# which the server uses for other work.
executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dockerkernel")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in one of the executor's threads."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


async def in_own_thread(
    name: str,
    fn: Callable[[], T],
    if_cancelled: Callable[[T], None],
    cancelled: threading.Event | None = None,
) -> T:
    """``fn()`` in a daemon thread of its own, for a call that may take long and can be cancelled.

    A cancelled await returns at once: ``cancelled`` is set, and the thread's
    result, once there is one, goes to ``if_cancelled``, which undoes it.
    """
    done: Future[T] = Future()
    done.set_running_or_notify_cancel()  # so that a cancelled await cannot cancel it

    def run() -> None:
        try:
            done.set_result(fn())
        except BaseException as e:
            done.set_exception(e)

    def undo(finished: Future[T]) -> None:
        if finished.exception() is None:
            if_cancelled(finished.result())

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        return await asyncio.wrap_future(done)
    except asyncio.CancelledError:
        if cancelled is not None:
            cancelled.set()
        done.add_done_callback(undo)
        raise
