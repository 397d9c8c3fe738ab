"""A Jupyter server extension that measures how late its event loop runs a 10 ms timer.

Enabled by benchmarks/performance.py for its concurrent starts. GET
/loop-lag answers the worst lag seen and how many ticks were over 100 ms since
the last ``?reset=1``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import traceback
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.ioloop import IOLoop

INTERVAL = 0.01
STALL = 0.1


class Lag:
    worst = 0.0
    ticks = 0
    stalls = 0
    last_tick = 0.0
    where: list[str] = []  # where the loop's thread was, each time a tick came late


async def _probe() -> None:
    loop = asyncio.get_running_loop()
    threading.Thread(target=_watch, args=(threading.get_ident(),), daemon=True).start()
    while True:
        before = loop.time()
        Lag.last_tick = time.monotonic()
        await asyncio.sleep(INTERVAL)
        late = loop.time() - before - INTERVAL
        Lag.ticks += 1
        Lag.worst = max(Lag.worst, late)
        Lag.stalls += late > STALL


def _watch(loop_thread: int) -> None:
    """Note the loop thread's innermost frames when a tick is late by half a stall: what held it."""
    noted = 0.0
    while True:
        time.sleep(INTERVAL)
        if time.monotonic() - Lag.last_tick > STALL / 2 and noted != Lag.last_tick:
            noted = Lag.last_tick
            frame = sys._current_frames().get(loop_thread)
            stack = traceback.format_stack(frame, limit=6) if frame is not None else []
            Lag.where.append("".join(stack))


class LagHandler(APIHandler):
    @web.authenticated
    def get(self) -> None:
        answer = {
            "worst lag": Lag.worst,
            "ticks": Lag.ticks,
            "stalls over 100 ms": Lag.stalls,
            "late at": Lag.where[-10:],
        }
        if self.get_argument("reset", ""):
            Lag.worst, Lag.ticks, Lag.stalls, Lag.where = 0.0, 0, 0, []
        self.finish(json.dumps(answer))


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "loop_lag"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    route = url_path_join(serverapp.web_app.settings["base_url"], "loop-lag")
    serverapp.web_app.add_handlers(".*$", [(route, LagHandler)])
    IOLoop.current().add_callback(lambda: asyncio.ensure_future(_probe()))
