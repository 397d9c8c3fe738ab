"""Kernel start-up time: a Docker kernel against a local ipykernel, measured in the same run.

    python benchmarks/startup.py [--runs N] [--image IMAGE]

Installs temporary kernelspecs for IMAGE (default: the Python 3 test image),
then times start_kernel() until the kernel answers kernel_info, and a first
execute, for each kernel in turn: a local ipykernel, a Docker kernel as
installed by default (a network of the user's own, a home volume), and one on
Docker's default bridge with its home in the container, as before those
existed. Prints medians and ratios; these machines are noisy, so only the
ratios mean much.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

from jupyter_client.manager import AsyncKernelManager

from dockerkernel.cli import main as dockerkernel


async def start_once(kernel_name: str, cwd: str) -> tuple[float, float]:
    km = AsyncKernelManager(kernel_name=kernel_name)
    t0 = time.perf_counter()
    await km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=120)
    ready = time.perf_counter() - t0
    await kc.execute_interactive("1 + 1", timeout=60, output_hook=lambda msg: None)
    executed = time.perf_counter() - t0
    kc.stop_channels()
    await km.shutdown_kernel()
    return ready, executed


async def run(runs: int, image: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["JUPYTER_DATA_DIR"] = os.path.join(tmp, "data")
        os.environ["JUPYTER_PATH"] = os.path.join(tmp, "data")
        assert dockerkernel(["install", "--image", image, "--name", "bench-docker", "--user"]) == 0
        plain = ["--network", "bridge", "--home", "container"]
        assert dockerkernel(["install", "--image", image, "--name", "bench-plain", *plain]) == 0
        kernels = {
            "local ipykernel": "python3",
            "docker kernel": "bench-docker",
            "bridge, no home": "bench-plain",
        }
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in kernels}
        await start_once("bench-docker", tmp)  # warm the image's layers in the page cache, make the network
        for _ in range(runs):
            for label, name in kernels.items():
                results[label].append(await start_once(name, tmp))
        assert dockerkernel(["uninstall", "bench-docker", "--purge"]) == 0  # and its home volume
    medians = {
        k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
        for k, v in results.items()
    }
    for label, (ready, executed) in medians.items():
        print(f"{label:16} ready {ready:6.3f} s   first execute {executed:6.3f} s   (median of {runs})")
    local, docker, plain = medians["local ipykernel"], medians["docker kernel"], medians["bridge, no home"]
    print(f"ratio docker/local: ready {docker[0] / local[0]:.2f}x, first execute {docker[1] / local[1]:.2f}x")
    print(
        f"ratio docker/(bridge, no home): ready {docker[0] / plain[0]:.2f}x, "
        f"first execute {docker[1] / plain[1]:.2f}x  (the cost of the isolated network and the home)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default="dockerkernel-test/py3")
    args = parser.parse_args()
    asyncio.run(run(args.runs, args.image))
