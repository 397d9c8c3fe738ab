"""GPU allocation's cost at start-up, on the simulated GPU host of the tests, measured in one run.

    python benchmarks/gpu_start.py [--runs N]     # as root: it starts a dockerd in a namespace

Times start_kernel() until the kernel answers (startup.py's start_once), for a kernelspec with gpus
'none' and one with gpus '1', alternately, in the host's network namespace.
The first GPU start of a process also asks the daemon for its GPUs (a probe
container running nvidia-smi); later ones take the allocation lock, list the
GPUs held and choose. Prints the first GPU start, the medians, and the
median of the pairwise ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gpu_host import simulated_gpu_host  # noqa: E402

IMAGE = "dockerkernel-test/py3"

# Run in the host's namespace, where the kernels' ports are; start_once() is startup.py's.
TIMER = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[3])
from startup import start_once

async def main():
    ready = lambda name: start_once(name, sys.argv[2])
    times = {"first": [(await ready("gpu-one"))[0]], "none": [], "one": []}
    for _ in range(int(sys.argv[1])):
        times["none"].append((await ready("gpu-none"))[0])
        times["one"].append((await ready("gpu-one"))[0])
    print(json.dumps(times))

asyncio.run(main())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, simulated_gpu_host(docker.from_env(), [IMAGE]) as host:
        env = {**os.environ, "DOCKER_HOST": host.docker_host, "JUPYTER_DATA_DIR": work}
        for name, gpus in (("gpu-none", "none"), ("gpu-one", "1")):
            install = ["install", "--image", IMAGE, "--name", name, "--gpus", gpus, "--no-pull"]
            subprocess.run(
                [sys.executable, "-m", "dockerkernel", *install], env=env, check=True, capture_output=True
            )
        done = subprocess.run(
            host.enter([sys.executable, "-c", TIMER, str(args.runs), work, str(Path(__file__).parent)]),
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
    times = json.loads(done.stdout.splitlines()[-1])
    ratios = [one / none for one, none in zip(times["one"], times["none"], strict=True)]
    print(f"first start with gpus 1 (probes the daemon): {times['first'][0]:.2f} s")
    print(f"median start, gpus none: {statistics.median(times['none']):.2f} s")
    print(f"median start, gpus 1:    {statistics.median(times['one']):.2f} s")
    print(f"median ratio gpus 1 / gpus none: {statistics.median(ratios):.2f} ({args.runs} pairs)")


if __name__ == "__main__":
    main()
