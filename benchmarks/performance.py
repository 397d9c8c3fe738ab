"""The performance goals, measured in one run against a local ipykernel, with a breakdown of each start.

    python benchmarks/performance.py [--runs N] [--image IMAGE] [--concurrent K] [--server-nice N] [--quick]

For a local ipykernel, a Docker kernel started cold (its image present), and a
Docker kernel of a kernelspec with a warm pool, in turn, each run:

- start: ``AsyncKernelManager.start_kernel`` until ``wait_for_ready``;
- execute: the median round trip of 20 executions of ``pass``;
- interrupt: from ``interrupt_kernel()`` to the KeyboardInterrupt reply of a cell that sleeps;
- shutdown: ``shutdown_kernel()``, as the client sees it.

The Docker kernels' starts and shutdowns are broken down into their steps, by
timing dockerkernel's own functions in this process. Then K kernels (default
20) are started at once through a real Jupyter server, which runs a probe of
its event loop's lag (``loop_lag.py``, a server extension).

Prints medians, and the medians of the pairwise ratios against the local
ipykernel of the same round; these machines are noisy, so only the ratios mean
much. The image's ipykernel is the same version as this Python's (the test
image pins it), with compiled bytecode.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from tornado.httpclient import AsyncHTTPClient

from dockerkernel import launch, provisioner, warm_pool
from dockerkernel.cli import main as dockerkernel
from dockerkernel.labels import LABEL_KERNEL_ID, POOL_NAME_PREFIX

HERE = Path(__file__).resolve().parent

# The steps of a start and a shutdown, as the functions that do them; a step's
# time is the sum of its calls during one start.
_timings: dict[str, float] = defaultdict(float)


def _timed(step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if asyncio.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                _timings[step] += time.perf_counter() - t0

        return timed_async

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        # The warm pool's refills run beside the start that took a kernel: not part of it.
        background = threading.current_thread().name.startswith("dockerkernel-pool")
        try:
            return fn(*args, **kwargs)
        finally:
            _timings[f"(pool refill, in the background) {step}" if background else step] += (
                time.perf_counter() - t0
            )

    return timed


START_STEPS = {
    "plan (ports, connection file, plan)": (provisioner.DockerProvisioner, "pre_launch"),
    "engine checks (image, left-behind)": (launch, "ensure_image"),
    "gather (engine, image, accounts, home)": (launch, "gather"),
    "finish the plan": (launch, "finish"),
    "create (and network)": (launch, "create"),
    "copy files in": (docker.models.containers.Container, "put_archive"),
    "start (and port publishing)": (docker.models.containers.Container, "start"),
    "take from the warm pool": (warm_pool.WarmPool, "take"),
    "adopt the pooled kernel (name, session name)": (provisioner.DockerProvisioner, "_adopt_pooled"),
}
SHUTDOWN_STEPS = {
    "interrupt first (KernelManager's)": (provisioner.DockerProvisioner, "send_signal"),
    "shutdown request until the kernel's exit": (provisioner.DockerProvisioner, "shutdown_requested"),
    "cleanup (the container's removal goes on after)": (provisioner.DockerProvisioner, "cleanup"),
}


_answered: list[float] = []  # when the client got the kernel_info reply that ends wait_for_ready's loop


def instrument() -> None:
    for step, (owner, name) in {**START_STEPS, **SHUTDOWN_STEPS}.items():
        setattr(owner, name, _timed(step, getattr(owner, name)))
    # wait_for_ready() then reads IOPub until it has been quiet for 0.2 s, whatever the kernel.
    handle = AsyncKernelClient._handle_kernel_info_reply

    def answered(self: Any, msg: dict[str, Any]) -> None:
        _answered.append(time.perf_counter())
        handle(self, msg)

    AsyncKernelClient._handle_kernel_info_reply = answered


@contextmanager
def steps() -> Iterator[dict[str, float]]:
    _timings.clear()
    found: dict[str, float] = {}
    yield found
    found.update(_timings)


async def heartbeat_answered(km: AsyncKernelManager) -> float:
    """When the kernel's heartbeat first answered: the end of its own start-up."""
    prov: Any = km.provisioner
    task = getattr(prov, "_heartbeat", None)
    if task is not None:
        await task
    return time.perf_counter()


async def one_kernel(kernel_name: str, cwd: str, interrupt: bool = True) -> dict[str, float]:
    """Start a kernel, run the measures, shut it down; the times of each measure and step."""
    km = AsyncKernelManager(kernel_name=kernel_name)
    sample: dict[str, float] = {}
    with steps() as start_steps:
        t0 = time.perf_counter()
        await km.start_kernel(cwd=cwd)
        launched = time.perf_counter()
        kc = km.client()
        kc.start_channels()
        beat = asyncio.ensure_future(heartbeat_answered(km))
        _answered.clear()
        await kc.wait_for_ready(timeout=120)
        ready = time.perf_counter()
        sample["kernel_info answered"] = _answered[-1] - t0
        beat_at = (
            await beat if km.provisioner is not None and hasattr(km.provisioner, "_heartbeat") else ready
        )
    sample["start"] = ready - t0
    sample["start_kernel() returns"] = launched - t0
    sample.update({f"start: {k}": v for k, v in start_steps.items()})
    if beat_at < ready:
        sample["start: the kernel's own start-up, to its first heartbeat"] = max(0.0, beat_at - launched)
        sample["start: first kernel_info reply"] = _answered[-1] - beat_at
    sample["start: the client's IOPub flush (0.2 s of quiet)"] = ready - _answered[-1]

    trips = []
    for _ in range(20):
        t = time.perf_counter()
        await kc.execute_interactive("pass", timeout=30, output_hook=lambda msg: None)
        trips.append(time.perf_counter() - t)
    sample["execute"] = statistics.median(trips)

    if interrupt:
        # Interrupted once the cell runs: ipykernel loses an interrupt that comes before.
        msg_id = kc.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(30)")
        while True:
            msg = await kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                break
        t = time.perf_counter()
        await km.interrupt_kernel()
        while True:
            reply = await kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        sample["interrupt"] = time.perf_counter() - t
        assert reply["content"].get("ename") == "KeyboardInterrupt", reply["content"]
        while True:  # idle again, before the next request
            msg = await kc.get_iopub_msg(timeout=30)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                if msg["parent_header"].get("msg_id") == msg_id:
                    break

    kc.stop_channels()
    with steps() as stop_steps:
        t = time.perf_counter()
        await km.shutdown_kernel()
        sample["shutdown"] = time.perf_counter() - t
    sample.update({f"shutdown: {k}": v for k, v in stop_steps.items()})
    return sample


def wait_removed(client: docker.DockerClient, timeout: float = 60) -> None:
    """Until no kernel's container is left: a shutdown may return before its container is removed.

    Not timed: it keeps one kernel's removal from slowing the next one's start.
    Warm-pool containers stay.
    """
    deadline = time.monotonic() + timeout
    while [
        c
        for c in client.api.containers(all=True, filters={"label": LABEL_KERNEL_ID})
        if not c["Names"][0].startswith("/" + POOL_NAME_PREFIX)
    ]:
        assert time.monotonic() < deadline, "a kernel's container was not removed"
        time.sleep(0.05)


def ratio(samples: dict[str, list[dict[str, float]]], label: str, measure: str) -> float | None:
    """The median of the pairwise ratios of ``label``'s measure to the local ipykernel's, run by run."""
    pairs = [
        (x[measure], y[measure])
        for x, y in zip(samples[label], samples[LOCAL], strict=True)
        if measure in x and measure in y and y[measure] > 0
    ]
    return statistics.median(a / b for a, b in pairs) if pairs else None


def median(values: list[dict[str, float]], measure: str) -> float | None:
    found = [v[measure] for v in values if measure in v]
    return statistics.median(found) if found else None


LOCAL = "local ipykernel"
COLD = "docker, cold"
WARM = "docker, warm pool"


async def concurrent_starts(
    kernel_name: str, count: int, root: Path, env: dict[str, str], nice: int = 0
) -> dict[str, Any]:
    """Start ``count`` kernels at once through a real Jupyter server; its loop's worst lag, and the time.

    ``nice``: the server's threads get this niceness once it answers (below 0 needs root).
    """
    sys.path.insert(0, str(HERE.parent / "tests"))
    from servers import JupyterServer

    runtime = root / "runtime"
    server_env = {
        **env,
        "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).strip(os.pathsep),
        "JUPYTER_RUNTIME_DIR": str(runtime),
    }
    server = JupyterServer(root, runtime, root / "server.log", env=server_env)
    await server.started()
    if nice:  # each thread has its own; the loop's, and those of the threads made so far
        for thread in os.listdir(f"/proc/{server.process.pid}/task"):
            os.setpriority(os.PRIO_PROCESS, int(thread), nice)
    http = AsyncHTTPClient()

    async def lag() -> dict[str, Any]:
        response = await http.fetch(f"{server.url}/loop-lag?token={server.token}")
        return dict(json.loads(response.body))

    try:
        await lag()  # the probe runs
        await http.fetch(f"{server.url}/loop-lag?token={server.token}&reset=1")
        t = time.perf_counter()
        kernels = await asyncio.gather(
            *(server.api("POST", "/api/kernels", {"name": kernel_name}) for _ in range(count))
        )
        started = time.perf_counter() - t

        async def ready(kernel_id: str) -> None:
            ws = await server.kernel_websocket(kernel_id, f"s-{kernel_id}")
            try:
                deadline = time.monotonic() + 300
                while True:
                    try:
                        assert (await ws.execute("1", timeout=10)).status == "ok"
                        return
                    except (asyncio.TimeoutError, TimeoutError):
                        assert time.monotonic() < deadline, f"kernel {kernel_id} never answered"
            finally:
                ws.close()

        await asyncio.gather(*(ready(k["id"]) for k in kernels))
        all_ready = time.perf_counter() - t
        await asyncio.gather(*(server.api("DELETE", f"/api/kernels/{k['id']}") for k in kernels))
        worst = await lag()
    finally:
        server.stop()
    return {"started": started, "all ready": all_ready, **worst}


def fmt(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if unit == "ms" else f"{value:.3f} s" if unit == "s" else f"{value:.2f}x"


def report(samples: dict[str, list[dict[str, float]]], concurrent: dict[str, dict[str, Any]]) -> None:
    kinds = [k for k in (COLD, WARM) if samples.get(k)]
    print(
        f"\nMedians of {len(samples[LOCAL])} rounds; ratios are medians of the pairwise ratios to {LOCAL}.\n"
    )
    print(f"| measure | {LOCAL} | " + " | ".join(kinds) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in kinds) + " |")
    for measure in ("start", "kernel_info answered", "execute", "interrupt", "shutdown"):
        cells = [
            f"{fmt(median(samples[k], measure))} ({fmt(ratio(samples, k, measure), 'x')})" for k in kinds
        ]
        print(f"| {measure} | {fmt(median(samples[LOCAL], measure))} | " + " | ".join(cells) + " |")

    print("\nGoals:")
    goals = [
        ("cold start <= 1.3x local", COLD, "start", lambda r, m: r is not None and r <= 1.3, "x"),
        ("warm-pool start <= 0.3x local", WARM, "start", lambda r, m: r is not None and r <= 0.3, "x"),
        (
            "warm-pool start <= 0.3x local, to the kernel_info reply (before the client's 0.2 s IOPub flush)",
            WARM,
            "kernel_info answered",
            lambda r, m: r is not None and r <= 0.3,
            "x",
        ),
        ("execute round trip <= 1.05x local", COLD, "execute", lambda r, m: r is not None and r <= 1.05, "x"),
        ("interrupt <= 100 ms", COLD, "interrupt", lambda r, m: m is not None and m <= 0.1, "ms"),
        ("shutdown <= 1.5x local", COLD, "shutdown", lambda r, m: r is not None and r <= 1.5, "x"),
    ]
    for text, kind, measure, met, unit in goals:
        if not samples.get(kind):
            continue
        r, m = ratio(samples, kind, measure), median(samples[kind], measure)
        shown = fmt(m, "ms") if unit == "ms" else fmt(r, "x")
        print(f"  {'met    ' if met(r, m) else 'NOT met'}  {text}: {shown}")
    for label, found in concurrent.items():
        stalls = found["stalls over 100 ms"]
        print(
            f"  {'met    ' if stalls == 0 else 'NOT met'}  {int(found['count'])} kernels ({label}) at once "
            f"through a Jupyter server, all ready, no loop stall over 100 ms: all ready in "
            f"{found['all ready']:.1f} s, worst loop lag {found['worst lag'] * 1000:.0f} ms, "
            f"{stalls} stalls over 100 ms"
        )
        for where in found["late at"]:
            print(
                "    the server's loop was late here:\n"
                + "".join(f"      {line}\n" for line in where.splitlines())
            )

    for kind in kinds:
        print(f"\nBreakdown, {kind} (medians; steps overlap where they run at once):")
        keys = list(dict.fromkeys(k for s in samples[kind] for k in s if ":" in k or k.startswith("start_")))
        for key in keys:
            print(f"  {key:62} {fmt(median(samples[kind], key), 'ms'):>8}")


async def run(args: argparse.Namespace) -> None:
    instrument()
    client = docker.from_env()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {
            "JUPYTER_DATA_DIR": str(root / "data"),
            "JUPYTER_PATH": str(root / "data"),
            "JUPYTER_CONFIG_DIR": str(root / "config"),
        }
        os.environ.update(env)
        extensions = root / "config" / "jupyter_server_config.d"
        extensions.mkdir(parents=True)
        (extensions / "loop_lag.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"loop_lag": True, "dockerkernel": True}}})
        )
        notebooks = root / "notebooks"
        notebooks.mkdir()
        kernels = {LOCAL: "python3", COLD: "perf-cold"}
        assert dockerkernel(["install", "--image", args.image, "--name", "perf-cold"]) == 0
        if not args.no_pool:
            kernels[WARM] = "perf-warm"
            assert (
                dockerkernel(["install", "--image", args.image, "--name", "perf-warm", "--warm-pool", "2"])
                == 0
            )
        samples: dict[str, list[dict[str, float]]] = {k: [] for k in kernels}
        try:
            for name in kernels.values():  # the image's layers into the page cache, the network made
                await one_kernel(name, str(notebooks), interrupt=False)
                wait_removed(client)
            for n in range(args.runs):
                for label, name in kernels.items():
                    if label == WARM:  # a user's pause between two notebooks lets the pool fill
                        assert warm_pool.POOL.wait_filled(timeout=120), "the warm pool did not fill"
                    samples[label].append(await one_kernel(name, str(notebooks)))
                    wait_removed(client)
                print(f"round {n + 1}: " + ", ".join(f"{k} {samples[k][-1]['start']:.2f} s" for k in kernels))
            concurrent: dict[str, dict[str, Any]] = {}
            if args.concurrent:  # the same through the same kind of server, local kernels first
                for label in (LOCAL, COLD):
                    concurrent[label] = await concurrent_starts(
                        kernels[label], args.concurrent, notebooks, env, args.server_nice
                    )
                    concurrent[label]["count"] = args.concurrent
                    wait_removed(client)
        finally:
            warm_pool.POOL.drain()
            for name in kernels.values():
                if name != "python3":
                    dockerkernel(["uninstall", name, "--purge"])
    report(samples, concurrent)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--image", default="dockerkernel-test/py3")
    parser.add_argument("--concurrent", type=int, default=20, help="kernels started at once (0: none)")
    parser.add_argument("--no-pool", action="store_true", help="no warm-pool kernel")
    parser.add_argument(
        "--server-nice", type=int, default=0, help="the niceness of the server that starts kernels at once"
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds and 4 kernels at once: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.concurrent = 2, 4
    asyncio.run(run(args))
