"""Start time of a kernel on a remote Docker host and on a swarm, next to a local one, in one run.

    python benchmarks/remote_start.py [--runs N]     # as root: it starts a namespaced host with sshd

The remote host is the tests' (tests/remote_host.py): a dockerd in a network
namespace at its veth address, with sshd beside it, reached over ssh:// and
over tcp:// with TLS; it also joins this machine's dockerd in a two-node swarm
(tests/swarm_cluster.py), left again at the end. Times start_kernel() until the
kernel answers, then one execution (startup.py's start_once), for the same
image on this machine's engine, over ssh://, over tcp://, and as a swarm
service placed on the worker, in turn. Prints the medians and the medians of
the pairwise ratios against the local kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import docker

from dockerkernel.labels import home_volume_name

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import start_once  # noqa: E402

from remote_host import remote_host  # noqa: E402
from swarm_cluster import two_node_swarm  # noqa: E402

IMAGE = "dockerkernel-test/py3"
LABELS = {
    "local": "this machine's engine",
    "ssh": "ssh:// host",
    "tls": "tcp:// host, TLS",
    "swarm": "swarm, on the worker",
}


def install(name: str, *options: str) -> None:
    command = [sys.executable, "-m", "dockerkernel", "install", "--image", IMAGE, "--name", name, *options]
    subprocess.run(command, check=True, capture_output=True)


async def measure(runs: int, kernels: list[str], cwd: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for name in kernels:  # a first start each, not counted: connections, probes, caches
        await start_once(name, cwd)
    for _ in range(runs):
        for name in kernels:
            times[name].append((await start_once(name, cwd))[0])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ssh-user", default=os.environ.get("DOCKERKERNEL_TEST_USER", "dktester"))
    args = parser.parse_args()
    pwd.getpwnam(args.ssh_user)
    main = docker.from_env()
    with (
        tempfile.TemporaryDirectory() as work,
        remote_host(main, [IMAGE], args.ssh_user) as remote,
        two_node_swarm(main, remote),
    ):
        os.environ.update(JUPYTER_DATA_DIR=work, JUPYTER_PATH=work, HOME=str(remote.home))
        install("local", "--no-pull")
        install("ssh", "--host", remote.ssh_url)
        install("tls", "--host", remote.tcp_url, *remote.tls_args())
        install("swarm", "--swarm", "--constraint", "node.role==worker")
        times = asyncio.run(measure(args.runs, list(LABELS), work))
        main.volumes.get(home_volume_name(os.getuid(), "local")).remove()  # the remote host's go with it
    print(f"start → ready, median of {args.runs}, against the same image on this machine's engine:")
    for name, label in LABELS.items():
        ratios = [t / local for t, local in zip(times[name], times["local"], strict=True)]
        print(f"  {label:24} {statistics.median(times[name]):.2f} s   ratio {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
