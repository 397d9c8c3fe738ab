"""The start a user waits for: ipc against tcp, cold against pooled, in a Jupyter server and in the client.

    python benchmarks/server_start.py [--runs N] [--image IMAGE] [--quick]

In one run, with the Python 3 test image and a local ipykernel as the baseline,
for a local ipykernel, a Docker kernel over ipc (the default on this machine's
engine), the same over tcp (``--channels tcp``) and the same over ipc with a
warm pool of one, in turn each round, each start in the next of three notebook
folders of one project (a, b, c, rotating: a pooled kernel was made for another):

- the client library's view (AsyncKernelManager, run from the project's folder
  as papermill would be): start until wait_for_ready, and the median round
  trip of 20 executions of ``pass``;
- the user's view, in a real Jupyter server serving the project: POST
  /api/sessions for a notebook, open the kernel's websocket, execute ``1+1`` and
  wait for its execute_result, as JupyterLab does.

Prints medians and the medians of the pairwise ratios; these machines are
noisy, so only the ratios measured in the same run mean much. ``--quick``
(2 rounds) is a smoke test: its figures are never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

from dockerkernel import warm_pool
from dockerkernel.cli import main as dockerkernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import JupyterServer  # noqa: E402

KERNELS = {
    "local ipykernel": "python3",
    "docker, ipc": "bench-ipc",
    "docker, tcp": "bench-tcp",
    "docker, pooled": "bench-pool",
}
INSTALLS = {"bench-ipc": [], "bench-tcp": ["--channels", "tcp"], "bench-pool": ["--warm-pool", "1"]}
FOLDERS = ("a", "b", "c")


async def client_view(kernel_name: str, cwd: str) -> tuple[float, float]:
    """Start until wait_for_ready, and the median execute round trip."""
    km = AsyncKernelManager(kernel_name=kernel_name)
    t0 = time.perf_counter()
    await km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=120)
        ready = time.perf_counter() - t0
        trips = []
        for _ in range(20):
            t = time.perf_counter()
            await kc.execute_interactive("pass", timeout=30, output_hook=lambda msg: None)
            trips.append(time.perf_counter() - t)
        if kernel_name != "python3":
            assert km.transport == ("tcp" if kernel_name == "bench-tcp" else "ipc"), km.transport
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    return ready, statistics.median(trips)


async def server_view(server: JupyterServer, kernel_name: str, notebook: str) -> float:
    """From POST /api/sessions to the execute_result of 1+1 over the kernel's websocket."""
    t0 = time.perf_counter()
    body = {"path": notebook, "type": "notebook", "kernel": {"name": kernel_name}}
    session = await server.api("POST", "/api/sessions", body)
    ws = await server.kernel_websocket(session["kernel"]["id"], session["id"])
    try:
        msg_id = ws.send("execute_request", {"code": "1+1", "silent": False, "allow_stdin": False})
        result = await ws.wait_for(msg_id, "iopub", "execute_result", timeout=120)
        elapsed = time.perf_counter() - t0
        assert result["content"]["data"]["text/plain"] == "2"
    finally:
        ws.close()
        await server.api("DELETE", f"/api/sessions/{session['id']}")
    return elapsed


def ratios(results: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(results[a], results[b], strict=True))


async def run(runs: int, image: str) -> None:
    starts: dict[str, list[float]] = {k: [] for k in KERNELS}
    trips: dict[str, list[float]] = {k: [] for k in KERNELS}
    served: dict[str, list[float]] = {k: [] for k in KERNELS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for var, sub in (
            ("JUPYTER_DATA_DIR", "data"),
            ("JUPYTER_PATH", "data"),
            ("JUPYTER_RUNTIME_DIR", "rt"),
        ):
            os.environ[var] = str(root / sub)
        project = root / "project"
        for folder in FOLDERS:
            (project / folder).mkdir(parents=True)
        os.chdir(project)  # the client's folder: the mount that holds every notebook folder
        for name, options in INSTALLS.items():
            assert dockerkernel(["install", "--image", image, "--name", name, "--no-pull", *options]) == 0
        try:
            for name in KERNELS.values():  # the image's layers in the page cache, the user's network made
                await client_view(name, str(project / FOLDERS[-1]))
            for n in range(runs):
                for label, name in KERNELS.items():
                    ready, trip = await client_view(name, str(project / FOLDERS[n % len(FOLDERS)]))
                    starts[label].append(ready)
                    trips[label].append(trip)
                assert warm_pool.POOL.wait_filled(timeout=120)
            warm_pool.POOL.drain()
            server = JupyterServer(project, root / "rt", root / "server.log")
            await server.started()
            try:
                for n in range(runs + 1):
                    for label, name in KERNELS.items():
                        notebook = f"{FOLDERS[n % len(FOLDERS)]}/nb-{name}-{n}.ipynb"
                        elapsed = await server_view(server, name, notebook)
                        if n:  # the first round warms the server's imports, and fills its pool
                            served[label].append(elapsed)
            finally:
                server.stop()
        finally:
            os.chdir("/")
            for name in INSTALLS:
                dockerkernel(["uninstall", name, "--purge"])

    def median_ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:7.1f} ms"

    print(f"\n{runs} rounds, image {image}; medians, and medians of pairwise ratios to the local ipykernel")
    print(f"{'':18} {'start (client)':>16} {'execute trip':>14} {'server: start to 1+1':>22}")
    for label in KERNELS:
        line = f"{label:18} {median_ms(starts[label]):>16} {median_ms(trips[label]):>14} "
        line += f"{median_ms(served[label]):>22}"
        if label != "local ipykernel":
            each = (ratios(m, label, "local ipykernel") for m in (starts, trips, served))
            line += "   ({:.2f}x, {:.2f}x, {:.2f}x)".format(*each)
        print(line)
    print(
        f"pooled / ipc: start {ratios(starts, 'docker, pooled', 'docker, ipc'):.2f}x, "
        f"server start {ratios(served, 'docker, pooled', 'docker, ipc'):.2f}x"
    )
    print(
        f"ipc / tcp: start {ratios(starts, 'docker, ipc', 'docker, tcp'):.2f}x, "
        f"execute trip {ratios(trips, 'docker, ipc', 'docker, tcp'):.2f}x, "
        f"server start {ratios(served, 'docker, ipc', 'docker, tcp'):.2f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--image", default="dockerkernel-test/py3")
    parser.add_argument("--quick", action="store_true", help="2 rounds: a smoke test")
    args = parser.parse_args()
    asyncio.run(run(2 if args.quick else args.runs, args.image))
