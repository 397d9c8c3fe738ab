"""A simulated NVIDIA GPU host for tests: a namespaced dockerd (namespaced_host.py) with GPUs.

The stand-in hook (tests/simgpu) first on that daemon's PATH makes it serve
`--gpus` through its NVIDIA device driver, with the GPUs listed in gpus.csv,
while the main daemon stays a machine without GPUs. The daemon publishes
kernel ports on its namespace's loopback, so clients of its kernels run in
that namespace (``GpuHost.enter``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import docker

from namespaced_host import NamespacedHost, namespaced_host

HOOK = Path(__file__).with_name("simgpu") / "nvidia-container-runtime-hook"
RUNTIME = HOOK.with_name("nvidia-container-runtime")  # for a swarm node's generic resources

# index, uuid, name, memory (MiB), as nvidia-smi --query-gpu prints them.
GPUS = [
    (str(i), f"GPU-5ad0c0de-0000-4000-8000-00000000000{i}", "NVIDIA Simulated H200", "143771")
    for i in range(4)
]

GpuHost = NamespacedHost


def install_hook(folder: Path) -> Path:
    """The stand-in hook and runtime and the GPU list in ``folder``, which goes first on a dockerd's PATH."""
    folder.mkdir(exist_ok=True)
    shutil.copy(HOOK, folder / HOOK.name)
    shutil.copy(RUNTIME, folder / RUNTIME.name)
    (folder / "gpus.csv").write_text("".join(", ".join(gpu) + "\n" for gpu in GPUS))
    return folder


@contextmanager
def simulated_gpu_host(main: docker.DockerClient, images: Sequence[str]) -> Iterator[GpuHost]:
    """Start the simulated host, with ``images`` copied from the main daemon; remove it all afterwards."""
    hooks = Path(tempfile.mkdtemp(prefix="dockerkernel-gpuhooks-", dir="/var/tmp"))
    try:
        install_hook(hooks)
        env = {"PATH": f"{hooks}:{os.environ['PATH']}"}
        with namespaced_host(main, images, prefix="dkgpu", bip="10.213.0.1/24", env=env) as host:
            yield host
    finally:
        shutil.rmtree(hooks, ignore_errors=True)
