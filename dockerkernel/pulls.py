"""Image pulls: Docker's progress events summed up, for progress bars and for the server log.

A pull of a deep-learning image is several GB and can take minutes. The
Docker engine streams one JSON event per layer step; ``PullProgress`` keeps
the state of every layer, ``PullBars`` draws it with rich for the CLI, and
``PullLog`` writes a summary to a logger at a sensible rate for the server.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, Task, TaskID, TextColumn, TransferSpeedColumn
from rich.text import Text

LAYER_ID = re.compile(r"^[0-9a-f]{12,64}$")
DONE = ("Pull complete", "Already exists")


@dataclass
class Layer:
    status: str = ""
    current: int = 0
    total: int = 0
    done: bool = False


class PullProgress:
    """The state of a pull, from the engine's events (``docker pull``'s JSON stream)."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.layers: dict[str, Layer] = {}
        self.digest = ""
        self.up_to_date = False

    def update(self, event: dict[str, Any]) -> str | None:
        """Take in one event; returns the id of the layer it was about, if any."""
        status = str(event.get("status", ""))
        if status.startswith("Digest:"):
            self.digest = status.partition(":")[2].strip()
        if status.startswith("Status: Image is up to date"):
            self.up_to_date = True
        layer_id = str(event.get("id", ""))
        if not LAYER_ID.match(layer_id):
            return None
        layer = self.layers.setdefault(layer_id, Layer())
        layer.status = status
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            layer.current, layer.total = int(detail.get("current", 0)), int(detail["total"])
        elif status in ("Download complete", "Verifying Checksum", "Extracting") or status in DONE:
            layer.current = layer.total
        layer.done = layer.done or status in DONE
        return layer_id

    @property
    def downloaded(self) -> int:
        return sum(layer.current for layer in self.layers.values())

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers.values())

    def summary(self) -> str:
        done = sum(layer.done for layer in self.layers.values())
        text = f"{done} of {len(self.layers)} layers done"
        if self.total:
            text += f", {_size(self.downloaded)} of {_size(self.total)} downloaded"
        return text

    def result(self) -> str:
        """The final line of a pull that succeeded."""
        if self.up_to_date:
            return f"Image {self.image} is up to date."
        return f"Pulled {self.image}" + (f" ({self.digest})." if self.digest else ".")


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"


class _SizeColumn(DownloadColumn):
    """Bytes done of total, for layers whose size the engine told; blank for the others."""

    def render(self, task: Task) -> Text:
        return super().render(task) if task.fields.get("sized") else Text("")


class _SpeedColumn(TransferSpeedColumn):
    def render(self, task: Task) -> Text:
        return super().render(task) if task.fields.get("sized") else Text("")


class PullBars:
    """Per-layer progress bars on a rich console (stderr by default), for the CLI."""

    def __init__(self, image: str, console: Console | None = None) -> None:
        self.progress = PullProgress(image)
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            _SizeColumn(),
            _SpeedColumn(),
            console=console or Console(stderr=True),
        )
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        layer_id = self.progress.update(event)
        if layer_id is None:
            return
        layer = self.progress.layers[layer_id]
        description = f"{layer_id[:12]} {layer.status}"
        if not self.tasks:  # drawn from the first layer on: a failed pull leaves no empty frame
            self.bars.start()
        if layer_id not in self.tasks:
            self.tasks[layer_id] = self.bars.add_task(description, total=None)
        self.bars.update(
            self.tasks[layer_id],
            description=description,
            completed=layer.current if layer.total else int(layer.done),
            total=layer.total or (1 if layer.done else None),
            sized=bool(layer.total),
        )

    def __enter__(self) -> PullBars:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.tasks:
            self.bars.stop()


class PullLog:
    """Logs a pull's progress to ``log``: once at the start, then at most every ``interval`` seconds."""

    def __init__(self, image: str, log: logging.Logger | logging.LoggerAdapter[Any], interval: float = 10):
        self.progress = PullProgress(image)
        self.log = log
        self.interval = interval
        self.started = time.monotonic()
        self.last = self.started
        log.info("Pulling Docker image %s", image)

    def __call__(self, event: dict[str, Any]) -> None:
        self.progress.update(event)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.log.info("Pulling %s: %s", self.progress.image, self.progress.summary())

    def finished(self) -> None:
        self.log.info("%s It took %.0f s.", self.progress.result(), time.monotonic() - self.started)
