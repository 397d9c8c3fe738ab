"""Load: 200 kernels one after another, and 10 at once, leave nothing behind.

Kernels are managed as the Jupyter server manages them, by one
AsyncMultiKernelManager. Before and after, the test counts kernel containers,
listening sockets on loopback (the published kernel ports), this process's
file descriptors and threads, and connection files: the same before and after,
but for the connections and threads that the Docker SDK's and the provisioner's
pools keep, a bounded few.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest
from docker.constants import DEFAULT_MAX_POOL_SIZE
from jupyter_client.multikernelmanager import AsyncMultiKernelManager

from dockerkernel import threads
from dockerkernel.labels import LABEL_KERNEL_ID

from waiting import wait_until

pytestmark = pytest.mark.docker

SEQUENTIAL = 200
CONCURRENT = 10
POOLED_CONNECTIONS = DEFAULT_MAX_POOL_SIZE  # per engine client, kept open once used


@dataclass(frozen=True)
class Resources:
    containers: int
    loopback_listeners: int
    fds: int
    threads: int
    connection_files: int


def resources(client: docker.DockerClient, runtime_dir: Path) -> Resources:
    listeners = [
        c
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.ip == "127.0.0.1"
    ]
    return Resources(
        containers=len(client.containers.list(all=True, sparse=True, filters={"label": LABEL_KERNEL_ID})),
        loopback_listeners=len(listeners),
        fds=psutil.Process().num_fds(),
        threads=threading.active_count(),
        connection_files=len(list(runtime_dir.glob("kernel-*.json"))),
    )


async def removed(client: docker.DockerClient) -> None:
    """Until no kernel container is left: a shutdown ends at the kernel's exit, and its removal follows."""

    def none_left() -> bool:
        return not client.containers.list(all=True, sparse=True, filters={"label": LABEL_KERNEL_ID})

    await wait_until(none_left, "the removal of the kernels' containers")


async def cycle(mkm: AsyncMultiKernelManager, name: str, cwd: str, ports: set[int]) -> None:
    """Start a kernel, run a cell, shut it down."""
    kernel_id = await mkm.start_kernel(kernel_name=name, cwd=cwd)
    km = mkm.get_kernel(kernel_id)
    ports.update(km.get_connection_info()[p] for p in ("shell_port", "iopub_port", "hb_port"))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        reply = await kc.execute_interactive("print(6 * 7)", timeout=30, output_hook=lambda msg: None)
        assert reply["content"]["status"] == "ok"
    except Exception:
        # What the kernel said, before its container goes with the shutdown below.
        container = docker.from_env().containers.get(km.provisioner.container_id)
        print(f"--- kernel {kernel_id}, container {container.short_id}, {container.attrs['State']}")
        print(container.logs(tail=50).decode(errors="replace"))
        raise
    finally:
        kc.stop_channels()
        await mkm.shutdown_kernel(kernel_id)


@pytest.mark.timeout(1800)
async def test_many_kernels_leak_nothing(
    install_test_kernel: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    jupyter_dirs: Path,
    no_leftovers: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = install_test_kernel("py3")
    runtime_dir = jupyter_dirs / "runtime"
    runtime_dir.mkdir(parents=True, exist_ok=True)
    mkm = AsyncMultiKernelManager(connection_dir=str(runtime_dir))  # as the server sets it
    ports: set[int] = set()
    # Warm up: the Docker client's connections and the provisioner's thread pool are made on first use.
    await asyncio.gather(*(cycle(mkm, name, str(notebook_dir), ports) for _ in range(CONCURRENT)))
    await removed(docker_client)
    before = resources(docker_client, runtime_dir)

    loop = asyncio.get_running_loop()
    started = loop.time()
    for done in range(1, SEQUENTIAL + 1):
        await cycle(mkm, name, str(notebook_dir), ports)
        if done % 50 == 0:
            with capsys.disabled():
                print(f"\n[load] {done} cycles in {loop.time() - started:.0f} s", flush=True)
    sequential_s = loop.time() - started
    started = loop.time()
    await asyncio.gather(*(cycle(mkm, name, str(notebook_dir), ports) for _ in range(CONCURRENT)))
    concurrent_s = loop.time() - started

    await removed(docker_client)
    # The threads that watched the last kernels' exits end just after their containers go.
    try:
        await wait_until(lambda: resources(docker_client, runtime_dir) == before, "no leaks", timeout=30)
    except AssertionError:
        pass  # the assertions below say what differs
    after = resources(docker_client, runtime_dir)
    with capsys.disabled():
        print(f"\n[load] before {before}\n[load] after  {after}")
        print(f"[load] {SEQUENTIAL} sequential cycles: {sequential_s:.0f} s")
        print(f"[load] {CONCURRENT} at once: {concurrent_s:.1f} s")
    kept = ("containers", "loopback_listeners", "connection_files")
    assert [getattr(after, k) for k in kept] == [getattr(before, k) for k in kept]
    # The Docker SDK keeps up to its pool's size of connections to the engine open, as many as were
    # last in use at once, and the provisioner's thread pool grows to its size on demand: a few either
    # way. What one kernel left behind would show once per kernel, 210 times.
    assert abs(after.fds - before.fds) <= POOLED_CONNECTIONS
    assert after.threads - before.threads <= threads.executor._max_workers
    assert mkm.list_kernel_ids() == []
    still_listening = {
        c.laddr.port for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
    } & ports
    assert not still_listening, f"kernel ports still published: {sorted(still_listening)}"
