"""`dockerkernel run`: execute notebooks on several kernels, and keep each result with its record.

Each notebook runs on each kernel (an installed kernelspec) through nbclient,
as papermill would: parameters go in after the cell tagged ``parameters``, by
papermill's own parameterize_notebook. Up to ``parallel`` runs go at once;
GPU kernels take their GPUs through the provisioner's allocator as any start
does. Every run writes its notebook, executed as far as it got, to
``<output>/<stem>.<kernel>.ipynb``, with the kernel's record (provenance.py)
as ``metadata.dockerkernel``, also when it fails or is interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import yaml
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from papermill.cli import _resolve_type
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from . import errors, kernelspec, provenance
from .engine.connect import get_client
from .engine.images import image_present, pull_image
from .errors import DockerKernelError, ImageUnavailable
from .settings import DockerSettings
from .validation import make_settings


@dataclass(frozen=True)
class Job:
    notebook: Path
    kernel: str
    output: Path


@dataclass(frozen=True)
class Options:
    """What every run of one command shares."""

    parameters: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None  # seconds a cell may take
    parallel: int = 1  # runs at once


@dataclass
class Outcome:
    """How one run went."""

    job: Job
    status: str = "waiting"  # waiting, running, ok, failed, timeout, interrupted
    cell: int = 0  # the cell it is on, or stopped at (1-based); 0 before the first
    cells: int = 0  # its cells
    error: str = ""  # the first error, one line
    seconds: float = 0.0
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> str:
        """The image it ran on, with its digest, or its id where it has none."""
        if not self.record:
            return ""
        image, digest = (
            str(self.record.get("image", "")),
            provenance.reference(self.record).rsplit("@", 1)[-1],
        )
        return f"{image} ({digest[:19]})" if digest else image


def parse_parameters(pairs: Sequence[Sequence[str]], files: Sequence[str]) -> dict[str, Any]:
    """``-f`` YAML files, then ``-p NAME VALUE`` pairs typed as papermill types them."""
    parameters: dict[str, Any] = {}
    for path in files:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except OSError as e:
            raise DockerKernelError(
                errors.PARAMETERS_UNREADABLE.format(path=path, reason=e.strerror)
            ) from None
        except yaml.YAMLError as e:
            reason = str(e).splitlines()[0]
            raise DockerKernelError(errors.PARAMETERS_UNREADABLE.format(path=path, reason=reason)) from None
        if loaded is None:
            continue
        if not isinstance(loaded, dict):
            reason = "it is not a mapping of names to values"
            raise DockerKernelError(errors.PARAMETERS_UNREADABLE.format(path=path, reason=reason))
        parameters.update(loaded)
    for name, value in pairs:
        if not name.isidentifier():
            raise DockerKernelError(errors.PARAMETER_NAME.format(name=name))
        parameters[name] = _resolve_type(value)
    return parameters


def read_notebook(path: Path) -> Any:
    """A notebook, checked; a DockerKernelError that names the file and the problem."""
    try:
        nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
        nbformat.validate(nb)
        return nb
    except FileNotFoundError:
        raise DockerKernelError(errors.NOTEBOOK_MISSING.format(path=path)) from None
    except (OSError, ValueError, nbformat.ValidationError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DockerKernelError(errors.NOTEBOOK_INVALID.format(path=path, reason=reason[:200])) from None


def plan_jobs(notebooks: Sequence[str], kernels: Sequence[str], output: Path) -> list[Job]:
    """A run of each notebook on each kernel; every input checked before any starts."""
    installed = {k.name for k in kernelspec.installed()}
    for kernel in kernels:
        if kernel not in installed:
            names = ", ".join(sorted(installed)) or "none"
            raise DockerKernelError(errors.RUN_UNKNOWN_KERNEL.format(kernel=kernel, installed=names))
    stems: dict[str, str] = {}
    for path in notebooks:
        read_notebook(Path(path))
        stem = Path(path).stem
        if stem in stems and stems[stem] != os.path.abspath(path):
            raise DockerKernelError(errors.RUN_SAME_STEM.format(first=stems[stem], second=path))
        stems[stem] = os.path.abspath(path)
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".dockerkernel-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise DockerKernelError(errors.OUTPUT_UNWRITABLE.format(path=output, reason=e.strerror)) from None
    return [
        Job(Path(nb).resolve(), kernel, output / f"{Path(nb).stem}.{kernel}.ipynb")
        for nb in notebooks
        for kernel in kernels
    ]


def reproduction(notebook: Path, output: Path, gpus: str | None, specs: Path) -> Job:
    """A run of ``notebook`` again on the exact image its record names, with the settings it kept.

    A kernelspec for it is installed under ``specs`` (see on_jupyter_path()),
    pinned to the record's digest, or to its id for an image built where it
    ran. ``gpus`` replaces the recorded GPUs.
    """
    found = provenance.of_notebook(read_notebook(notebook).metadata)
    if not found or not provenance.reference(found):
        raise DockerKernelError(errors.NO_PROVENANCE.format(path=notebook))
    config: dict[str, Any] = dict(found.get("settings") or {})
    config.update(image=found["image"], pinned_image=provenance.reference(found))
    if found.get("docker_host") not in (None, "", "local"):
        config["docker_host"] = found["docker_host"]
    if gpus:
        config["gpus"] = gpus
    settings = make_settings(DockerSettings, config, "the recorded kernel")
    _check_reproducible(notebook, settings)
    name = f"reproduce-{found.get('kernelspec') or 'kernel'}"
    kernelspec.install(
        name=name, display_name=f"{found['image']} (reproduced)", config=config, prefix=str(specs)
    )
    return Job(notebook.resolve(), name, output / f"{notebook.stem}.{name}.ipynb")


@contextmanager
def on_jupyter_path(prefix: Path) -> Iterator[None]:
    """While in it, Jupyter in this process also finds the kernelspecs installed under ``prefix``."""
    saved = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(prefix / "share" / "jupyter"), saved) if p)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = saved


def _check_reproducible(notebook: Path, settings: DockerSettings) -> None:
    """The recorded image is on the engine, or is pulled by its digest now; else a sentence."""
    client = get_client(settings.host())
    image = settings.pinned_image
    if image_present(client, image):
        return
    if image.startswith("sha256:"):
        reason = "it was built on the Docker host it ran on, and no registry has it"
        fix = "rebuild it from the same sources, and run the notebook on a kernel of it with -k."
        raise DockerKernelError(
            errors.REPRODUCE_IMAGE_GONE.format(path=notebook, image=image, reason=reason, fix=fix)
        )
    try:
        pull_image(client, image)
    except ImageUnavailable as e:
        fix = "log in to its registry with `docker login` if it needs it, or ask whoever pushed it."
        raise DockerKernelError(
            errors.REPRODUCE_IMAGE_GONE.format(path=notebook, image=image, reason=e.reason, fix=fix)
        ) from None


class _QuietOnceStopped(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The log of nbclient and of the kernel's manager, silent once a run is stopped: what they say then
    (that the kernel died, say) is the stop itself."""

    def __init__(self, logger: logging.Logger, stopped: asyncio.Event) -> None:
        super().__init__(logger, {})
        self.stopped = stopped

    def isEnabledFor(self, level: int) -> bool:
        return not self.stopped.is_set() and self.logger.isEnabledFor(level)


def _first_error(cell: Mapping[str, Any]) -> str:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return f"{output.get('ename', '')}: {output.get('evalue', '')}".strip()[:160]
    return "the cell failed"


async def run_one(
    job: Job, options: Options, outcome: Outcome, changed: Callable[[Outcome], None], stopped: asyncio.Event
) -> None:
    """Run ``job``, keeping ``outcome`` up to date and calling ``changed`` at each step; its notebook is
    written whatever happens. Once ``stopped`` is set (Ctrl-C), whatever ends it is an interruption."""
    read_notebook(job.notebook)  # checked again: it may have changed since the runs were planned
    nb = load_notebook_node(str(job.notebook))  # as papermill reads it, its conventions' metadata added
    provenance.forget(nb.metadata)  # this run's kernel gives its own
    if options.parameters:
        nb = parameterize_notebook(nb, dict(options.parameters), kernel_name=job.kernel, language="python")
    outcome.cells, outcome.status = len(nb.cells), "running"
    changed(outcome)

    def cell_started(cell: Any, cell_index: int) -> None:
        outcome.cell = cell_index + 1
        changed(outcome)

    log = _QuietOnceStopped(logging.getLogger(__name__), stopped)
    km = AsyncKernelManager(kernel_name=job.kernel, log=log)
    client = NotebookClient(
        nb,
        log=log,
        km=km,
        timeout=options.timeout,
        kernel_name=job.kernel,
        resources={"metadata": {"path": str(job.notebook.parent)}},
        on_cell_start=cell_started,
    )
    started = time.monotonic()
    try:
        await client.async_execute(cwd=str(job.notebook.parent))
        outcome.status = "ok"
    except CellTimeoutError:
        outcome.status, outcome.error = "timeout", f"no result within {options.timeout:g} s"
    except CellExecutionError:
        outcome.status = "failed"
        outcome.error = _first_error(nb.cells[outcome.cell - 1]) if outcome.cell else "the run failed"
    except DeadKernelError:
        outcome.status, outcome.error = "failed", "the kernel died"
    except DockerKernelError as e:
        outcome.status, outcome.error = "failed", str(e)
    except asyncio.CancelledError:
        pass  # stopped: said below
    except Exception as e:  # noqa: BLE001 - one run's surprise must not lose the others' results
        outcome.status, outcome.error = "failed", f"{type(e).__name__}: {e}"
    finally:
        if stopped.is_set():  # nbclient reports a cancelled wait as a dead kernel
            outcome.status, outcome.error = "interrupted", "stopped by Ctrl-C"
        outcome.seconds = time.monotonic() - started
        if client.kc is not None:  # nbclient stops only the channels of a kernel manager it made
            client.kc.stop_channels()
        if km.has_kernel:
            await asyncio.shield(km.shutdown_kernel(now=True))
        outcome.record = provenance.of_kernel(nb.metadata) or {}
        if outcome.record:
            nb.metadata[provenance.METADATA_KEY] = outcome.record
        nbformat.write(nb, job.output)  # type: ignore[no-untyped-call]
        changed(outcome)


async def run_all(outcomes: Sequence[Outcome], options: Options, changed: Callable[[Outcome], None]) -> bool:
    """Run each outcome's job, ``options.parallel`` at once, filling in the outcomes; whether a signal
    stopped them.

    On Ctrl-C (SIGINT) or SIGTERM, every run is cancelled: each shuts its kernel
    down and writes its notebook as far as it got, and the runs not started are
    marked interrupted. Run it in a RunLoop, which keeps these handlers in place.
    """
    slots = asyncio.Semaphore(max(options.parallel, 1))
    stopped = asyncio.Event()

    async def one(outcome: Outcome) -> None:
        async with slots:
            if not stopped.is_set():
                await run_one(outcome.job, options, outcome, changed, stopped)

    tasks = [asyncio.ensure_future(one(o)) for o in outcomes]

    def stop() -> None:
        if not stopped.is_set():
            stopped.set()
            for task in tasks:
                task.cancel()

    loop = asyncio.get_running_loop()
    with _signals_stop(loop, stop):
        await asyncio.gather(*tasks, return_exceptions=True)
    for o in outcomes:
        if o.status == "waiting" and stopped.is_set():
            o.status = "interrupted"
    return stopped.is_set()


STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunLoop(asyncio.SelectorEventLoop):
    """An event loop whose SIGINT and SIGTERM handlers, once a run has set them, stay.

    nbclient sets its own around each notebook it executes, and removes them at
    its end, for one notebook at a time: with several, a Ctrl-C would stop one
    run's kernel behind the others' backs, and the first run to end would leave
    the rest with none.
    """

    held = False

    def add_signal_handler(  # type: ignore[override]
        self, sig: int, callback: Callable[..., object], *args: Any
    ) -> None:
        if not (self.held and sig in STOPPING_SIGNALS):
            super().add_signal_handler(sig, callback, *args)

    def remove_signal_handler(self, sig: int) -> bool:
        if self.held and sig in STOPPING_SIGNALS:
            return False
        return super().remove_signal_handler(sig)


class _signals_stop:
    """While in it, SIGINT and SIGTERM call ``stop``, whatever else asks the loop for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
        self.loop, self.stop = loop, stop

    def __enter__(self) -> None:
        for sig in STOPPING_SIGNALS:
            self.loop.add_signal_handler(sig, self.stop)
        if isinstance(self.loop, RunLoop):
            self.loop.held = True

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.loop, RunLoop):
            self.loop.held = False
        for sig in STOPPING_SIGNALS:
            self.loop.remove_signal_handler(sig)


def run_jobs(outcomes: Sequence[Outcome], options: Options, changed: Callable[[Outcome], None]) -> bool:
    """run_all() in a RunLoop of its own, as asyncio.run() would run it; whether a signal stopped it."""
    loop = RunLoop()
    asyncio.set_event_loop(loop)  # nbclient asks for the current one
    try:
        return loop.run_until_complete(run_all(outcomes, options, changed))
    finally:
        left = asyncio.all_tasks(loop)  # nbclient's watchers of a run that was stopped
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        asyncio.set_event_loop(None)
        loop.close()
