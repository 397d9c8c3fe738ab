"""Kernel start-up time: a Docker kernel against a local ipykernel, measured in the same run.

    python benchmarks/startup.py [--runs N] [--image IMAGE]

Installs temporary kernelspecs for IMAGE (default: the Python 3 test image),
then times start_kernel() until the kernel answers kernel_info, and a first
execute, for each kernel in turn: a local ipykernel, a Docker kernel as
installed by default (a network of the user's own, a home volume), and the
same without the network, the home, or both. Prints medians and the medians
of pairwise ratios; these machines are noisy, so only the ratios mean much.
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


# Docker kernels, by label: the default, and the same without the user's
# isolated network, without the home volume, or without both (as before they existed).
VARIANTS = {
    "docker kernel": [],
    "bridge network": ["--network", "bridge"],
    "home in container": ["--home", "container"],
    "bridge, no home": ["--network", "bridge", "--home", "container"],
}


async def run(runs: int, image: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["JUPYTER_DATA_DIR"] = os.path.join(tmp, "data")
        os.environ["JUPYTER_PATH"] = os.path.join(tmp, "data")
        kernels = {"local ipykernel": "python3"}
        for n, (label, options) in enumerate(VARIANTS.items()):
            kernels[label] = f"bench-{n}"
            assert dockerkernel(["install", "--image", image, "--name", f"bench-{n}", *options]) == 0
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in kernels}
        for name in kernels.values():  # warm the image's layers in the page cache, make the network
            await start_once(name, tmp)
        for _ in range(runs):
            for label, name in kernels.items():
                results[label].append(await start_once(name, tmp))
        for name in kernels.values():
            if name != "python3":
                assert dockerkernel(["uninstall", name, "--purge"]) == 0  # and its home volume
    medians = {
        k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
        for k, v in results.items()
    }
    for label, (ready, executed) in medians.items():
        print(f"{label:18} ready {ready:6.3f} s   first execute {executed:6.3f} s   (median of {runs})")

    def ratio(a: str, b: str) -> str:
        """The median of the pairwise ratios of a to b, run by run."""
        ready = statistics.median(x[0] / y[0] for x, y in zip(results[a], results[b], strict=True))
        executed = statistics.median(x[1] / y[1] for x, y in zip(results[a], results[b], strict=True))
        return f"ready {ready:.2f}x, first execute {executed:.2f}x"

    print(f"docker kernel / local ipykernel: {ratio('docker kernel', 'local ipykernel')}")
    print(f"the isolated network: docker kernel / bridge network: {ratio('docker kernel', 'bridge network')}")
    print(
        f"the home volume: docker kernel / home in container: {ratio('docker kernel', 'home in container')}"
    )
    print(f"both: docker kernel / bridge, no home: {ratio('docker kernel', 'bridge, no home')}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default="dockerkernel-test/py3")
    args = parser.parse_args()
    asyncio.run(run(args.runs, args.image))
