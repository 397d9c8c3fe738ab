"""A simulated NVIDIA GPU host for tests: a second dockerd in a network namespace of its own.

The stand-in hook (tests/simgpu) first on that daemon's PATH makes it serve
`--gpus` through its NVIDIA device driver, with the GPUs listed in gpus.csv,
while the main daemon stays a machine without GPUs. The daemon publishes
kernel ports on its namespace's loopback, so clients of its kernels run in
that namespace (``GpuHost.enter``). Everything made here, the namespace, the
daemon and its data, is removed at the end. Never start such a daemon in the
host's own network namespace: it would take over docker0 and break the main one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import requests

from waiting import wait_until_sync

HOOK = Path(__file__).with_name("simgpu") / "nvidia-container-runtime-hook"

# index, uuid, name, memory (MiB), as nvidia-smi --query-gpu prints them.
GPUS = [
    (str(i), f"GPU-5ad0c0de-0000-4000-8000-00000000000{i}", "NVIDIA Simulated H200", "143771")
    for i in range(4)
]


@dataclass
class GpuHost:
    netns: str  # the path of its network namespace
    docker_host: str  # the DOCKER_HOST that reaches its daemon
    client: docker.DockerClient

    def enter(self, command: Sequence[str]) -> list[str]:
        """``command`` run in the host's network namespace, where its kernels' ports are."""
        return ["nsenter", f"--net={self.netns}", *command]


@contextmanager
def simulated_gpu_host(main: docker.DockerClient, images: Sequence[str]) -> Iterator[GpuHost]:
    """Start the simulated host, with ``images`` copied from the main daemon; remove it all afterwards."""
    name = f"dkgpu{os.getpid()}"
    netns = f"/var/run/netns/{name}"
    work = Path(tempfile.mkdtemp(prefix="dockerkernel-gpuhost-", dir="/var/tmp"))
    exec_root = Path(f"/run/{name}")
    socket_path = Path(f"/run/{name}.sock")
    hooks = work / "hooks"
    hooks.mkdir()
    shutil.copy(HOOK, hooks / HOOK.name)
    (hooks / "gpus.csv").write_text("".join(", ".join(gpu) + "\n" for gpu in GPUS))
    daemon: subprocess.Popen[bytes] | None = None
    client: docker.DockerClient | None = None
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        with open(work / "dockerd.log", "wb") as log:
            daemon = subprocess.Popen(
                [
                    "nsenter", f"--net={netns}",
                    "env", f"PATH={hooks}:{os.environ['PATH']}",
                    "dockerd",
                    "--data-root", str(work / "data"),
                    "--exec-root", str(exec_root),
                    "--pidfile", str(work / "dockerd.pid"),
                    "-H", f"unix://{socket_path}",
                    "--bip", "10.213.0.1/24",
                    "--group", "docker",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        _wait_for_daemon(socket_path, daemon, work / "dockerd.log")
        client = docker.DockerClient(
            base_url=f"unix://{socket_path}", version=main.api.api_version, timeout=120
        )
        for image in images:
            client.images.load(main.images.get(image).save(named=True))
        yield GpuHost(netns, f"unix://{socket_path}", client)
    finally:
        _remove(name, daemon, client, work, exec_root, socket_path)


def _remove(
    name: str,
    daemon: subprocess.Popen[bytes] | None,
    client: docker.DockerClient | None,
    work: Path,
    exec_root: Path,
    socket_path: Path,
) -> None:
    """Remove the host: its containers, daemon, namespace, mounts and files, whatever stage it reached."""
    if client is not None:
        try:
            for container in client.containers.list(all=True):
                container.remove(force=True)
        except (docker.errors.DockerException, requests.RequestException):
            pass  # the daemon is not up: it has no containers to remove
        client.close()
    if daemon is not None and daemon.poll() is None:
        daemon.terminate()  # dockerd stops its containerd and unmounts its data root
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
    subprocess.run(["ip", "netns", "delete", name], check=False)
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f]
    for mount in sorted((m for m in mounts if m.startswith((f"{work}/", f"{exec_root}/"))), reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(exec_root, ignore_errors=True)
    socket_path.unlink(missing_ok=True)


def _wait_for_daemon(socket_path: Path, daemon: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the daemon accepts connections on its socket."""

    def listening() -> bool:
        assert daemon.poll() is None, f"the GPU host's dockerd exited:\n{log.read_text()[-3000:]}"
        if not socket_path.exists():
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            return probe.connect_ex(str(socket_path)) == 0

    wait_until_sync(listening, "the GPU host's dockerd to listen on its socket")
