"""The Docker daemon restarts under a running kernel: the kernel is reported dead, nothing hangs,
and once the daemon is back a restart gives a working kernel.

This test stops and starts the machine's dockerd, so it needs root and a dockerd
process it can see (tests/run.sh, as CI runs it, provides both).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest

from dockerkernel import docker_ops, errors
from dockerkernel.errors import DockerKernelError

from conftest import IMAGES
from waiting import wait_until

pytestmark = pytest.mark.docker


def dockerd() -> psutil.Process:
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "dockerd":
            return process
    pytest.fail("no dockerd process on this machine to restart; tests/run.sh starts one")


async def test_kernel_is_reported_dead_and_restarts_once_the_daemon_is_back(
    install_test_kernel: Any, start_kernel: Any, notebook_dir: Path, docker_client: docker.DockerClient
) -> None:
    if os.getuid() != 0:
        pytest.fail("restarting dockerd needs root: run the suite with tests/run.sh as root")
    kernel = await start_kernel(install_test_kernel("py3"), cwd=str(notebook_dir))
    assert (await kernel.execute("x = 1; print(x)")).stdout == "1\n"

    daemon = dockerd()
    argv, cwd = daemon.cmdline(), daemon.cwd()
    daemon.terminate()
    daemon.wait(60)

    async def dead() -> bool:
        return not await kernel.km.is_alive()

    await wait_until(dead, "the kernel to be reported dead")
    # With the daemon down a restart fails at once, with one sentence.
    started = time.monotonic()
    with pytest.raises(DockerKernelError) as info:
        await asyncio.wait_for(kernel.km.restart_kernel(now=True), timeout=120)
    assert str(info.value).startswith(errors.DOCKER_UNREACHABLE.split("(")[0])
    print(f"restart with the daemon down failed after {time.monotonic() - started:.1f} s")

    # Started as tests/run.sh starts it, outliving this test.
    subprocess.run(
        ["bash", "-c", 'nohup "$@" >>/var/log/dockerd-tests.log 2>&1 </dev/null &', "dockerd", *argv],
        cwd=cwd,
        check=True,
    )

    async def daemon_up() -> bool:
        try:
            return await asyncio.to_thread(docker_ops.image_present, docker_ops.get_client(), IMAGES["py3"])
        except DockerKernelError:
            return False

    await wait_until(daemon_up, "dockerd to come back")
    await kernel.km.restart_kernel(now=True)
    await kernel.kc.wait_for_ready(timeout=60)
    reply = await kernel.execute("print('back'); x")
    assert (reply.stdout, reply.ename) == ("back\n", "NameError")
