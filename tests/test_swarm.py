"""Kernels as services of a two-node Docker Swarm (tests/swarm_cluster.py).

This machine's dockerd is the manager; the remote test host is the worker. A
kernel constrained to the worker is placed there, and the server reaches its
host-mode ports at the worker's address, with CurveZMQ on.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import docker
import pytest
from jupyter_client.manager import AsyncKernelManager

from dockerkernel import errors, kernelspec
from dockerkernel.labels import LABEL_KERNEL_ID

from conftest import IMAGES, CliResult, Kernel, interrupt_a_sleep, spawn_session
from gpu_host import GPUS, RUNTIME, install_hook
from remote_host import ADDRESS, remote_host
from swarm_cluster import MANAGER_ADDRESS, Swarm, two_node_swarm
from waiting import wait_until, wait_until_sync

pytestmark = pytest.mark.docker

ON_THE_WORKER = ["--swarm", "--constraint", "node.role==worker"]
GPU_KIND = "NVIDIA-GPU"


@pytest.fixture(scope="module")
def cluster(docker_client: docker.DockerClient, ordinary_user: Any) -> Iterator[Swarm]:
    """The manager has no GPUs; the worker advertises the four simulated ones (gpu_host.py)."""
    if os.geteuid() != 0:
        pytest.fail("the swarm tests need root (a network namespace, a second dockerd): run as root")
    hooks = Path(tempfile.mkdtemp(prefix="dockerkernel-swarmgpus-", dir="/var/tmp"))
    try:
        install_hook(hooks)
        runtime = ["--add-runtime", f"nvidia={hooks / RUNTIME.name}", "--default-runtime", "nvidia"]
        advertised = [
            arg for _, uuid, *_ in GPUS for arg in ("--node-generic-resource", f"{GPU_KIND}={uuid}")
        ]
        env = {"PATH": f"{hooks}:{os.environ['PATH']}"}
        images = [IMAGES["py3"], IMAGES["py2"]]
        with remote_host(
            docker_client, images, ordinary_user.pw_name, env=env, daemon_args=[*runtime, *advertised]
        ) as worker:
            with two_node_swarm(docker_client, worker) as swarm:
                yield swarm
    finally:
        shutil.rmtree(hooks, ignore_errors=True)


@pytest.fixture
def swarm(cluster: Swarm) -> Iterator[Swarm]:
    """The swarm; after the test it must have no kernel service and no secret left."""
    yield cluster
    # A shutdown ends at the kernel's exit; its service is removed just after.
    with suppress(AssertionError):
        wait_until_sync(
            lambda: not cluster.manager.services.list(filters={"label": LABEL_KERNEL_ID}), "removals"
        )
    services = cluster.manager.services.list(filters={"label": LABEL_KERNEL_ID})
    secrets = cluster.manager.secrets.list(filters={"label": LABEL_KERNEL_ID})
    for item in [*services, *secrets]:
        item.remove()
    assert not services and not secrets, f"left behind: {[s.name for s in services + secrets]}"


def services_of(swarm: Swarm, kernel: Kernel) -> list[Any]:
    return swarm.manager.services.list(filters={"label": f"{LABEL_KERNEL_ID}={kernel.km.kernel_id}"})


async def test_a_kernel_placed_on_the_worker_runs_its_lifecycle(
    swarm: Swarm,
    dockerkernel: Callable[..., CliResult],
    start_kernel: Callable[..., Any],
    notebook_dir: Path,
) -> None:
    result = dockerkernel("install", "--image", IMAGES["py3"], "--name", "swarm", *ON_THE_WORKER)
    assert result.code == 0, result.err
    kernel = await start_kernel("swarm", cwd=str(notebook_dir))
    info = kernel.km.get_connection_info()
    assert info["ip"] == ADDRESS  # the worker's address: host-mode ports, not the routing mesh
    assert info["curve_publickey"] and info["curve_secretkey"]
    (service,) = services_of(swarm, kernel)
    spec = service.attrs["Spec"]
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
    assert {p["PublishMode"] for p in spec["EndpointSpec"]["Ports"]} == {"host"}
    (task,) = service.tasks()
    assert task["NodeID"] == swarm.worker_node
    # Its connection file came as a secret of its own, copied where the kernel can rewrite it.
    (secret,) = swarm.manager.secrets.list(filters={"label": f"{LABEL_KERNEL_ID}={kernel.km.kernel_id}"})
    assert secret.id == spec["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["SecretID"]

    reply = await kernel.execute("import os; print(os.getcwd()); print(open('data.txt').read(), end='')")
    assert reply.stdout == f"{notebook_dir}\ndata from the host\n"
    await interrupt_a_sleep(kernel)  # by a message: the worker's engine is not one the server can reach

    first = service.id
    assert (await kernel.execute("x = 1")).status == "ok"
    await kernel.km.restart_kernel()
    await kernel.kc.wait_for_ready(timeout=120)
    assert (await kernel.execute("print('x' in dir())")).stdout == "False\n"
    (again,) = services_of(swarm, kernel)
    assert again.id != first
    await kernel.shutdown()
    await wait_until(lambda: not services_of(swarm, kernel), "the service's removal")


async def test_a_kernel_that_no_node_can_take_fails_within_the_start_timeout(
    swarm: Swarm, notebook_dir: Path
) -> None:
    config = {
        "image": IMAGES["py3"],
        "backend": "swarm",
        "constraints": ["node.labels.gpu==h200"],
        "start_timeout": 3,
    }
    kernelspec.install(name="nowhere", display_name="nowhere", config=config, curve=True, user=True)
    km = AsyncKernelManager(kernel_name="nowhere")
    with pytest.raises(Exception) as failed:
        await km.start_kernel(cwd=str(notebook_dir))
    message = str(failed.value)
    assert message.startswith(errors.SWARM_NOT_PLACED.split("{reason}")[0].format(timeout="3"))
    assert "no suitable node (scheduling constraints not satisfied on 2 nodes)" in message
    assert not swarm.manager.services.list(filters={"label": LABEL_KERNEL_ID})


def test_python2_is_refused_on_a_swarm(swarm: Swarm, dockerkernel: Callable[..., CliResult]) -> None:
    result = dockerkernel("install", "--image", IMAGES["py2"], "--python", "python", *ON_THE_WORKER)
    assert result.code == 1
    assert result.err.splitlines()[-1] == "dockerkernel: " + errors.TLS_NEEDS_CURVE.format(
        host="the swarm's nodes", image=IMAGES["py2"], version="4.10.1"
    )


def test_prune_removes_the_service_and_secret_of_a_server_that_is_gone(
    swarm: Swarm,
    dockerkernel: Callable[..., CliResult],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    public_scripts: Path,
) -> None:
    workdir = tmp_path / "session"
    workdir.mkdir()
    args = {"install": ["--image", IMAGES["py3"], "--no-pull", *ON_THE_WORKER], "cells": ["pass"],
            "cwd": str(workdir), "keep": True}  # fmt: skip
    session = spawn_session(public_scripts, None, workdir, args)
    try:
        assert not session.result().error
    finally:
        os.kill(session.process.pid, signal.SIGKILL)
        session.close()
    assert swarm.manager.services.list(filters={"label": LABEL_KERNEL_ID})
    for var in ("JUPYTER_DATA_DIR", "JUPYTER_PATH"):  # the session's kernelspec, on the manager
        monkeypatch.setenv(var, str(workdir / "jupyter"))
    result = dockerkernel("prune")
    assert result.code == 0, result.err
    assert "Removed 1 kernel container whose owner is gone." in result.out

    def gone() -> bool:
        return not swarm.manager.secrets.list(filters={"label": LABEL_KERNEL_ID})

    wait_until_sync(gone, "the secret to go with its service")
    assert not swarm.manager.services.list(filters={"label": LABEL_KERNEL_ID})


async def test_a_gpu_kernel_gets_gpus_of_the_node_that_advertises_them(
    swarm: Swarm,
    dockerkernel: Callable[..., CliResult],
    start_kernel: Callable[..., Any],
    notebook_dir: Path,
) -> None:
    assert (
        dockerkernel("install", "--image", IMAGES["py3"], "--name", "two", "--swarm", "--gpus", "2").code == 0
    )
    kernel = await start_kernel("two", cwd=str(notebook_dir))
    (service,) = services_of(swarm, kernel)
    (task,) = service.tasks()
    assert task["NodeID"] == swarm.worker_node  # the manager advertises no GPUs
    # The swarm's DOCKER_RESOURCE_NVIDIA-GPU, as the kernel's NVIDIA_VISIBLE_DEVICES.
    given = (await kernel.execute("import os; print(os.environ['NVIDIA_VISIBLE_DEVICES'])")).stdout
    uuids = given.strip().split(",")
    assert len(uuids) == 2 and set(uuids) <= {uuid for _, uuid, *_ in GPUS}
    code = "import subprocess; print(subprocess.check_output(['nvidia-smi', '-L']).decode(), end='')"
    listed = (await kernel.execute(code)).stdout.splitlines()
    assert sorted(line.rsplit("UUID: ", 1)[1].rstrip(")") for line in listed) == sorted(uuids)

    # Two are left: a kernel asking for three is not placed, and says why within its timeout.
    config = {"image": IMAGES["py3"], "backend": "swarm", "gpus": "3", "start_timeout": 3}
    kernelspec.install(name="three", display_name="three", config=config, curve=True, user=True)
    with pytest.raises(Exception) as failed:
        await AsyncKernelManager(kernel_name="three").start_kernel(cwd=str(notebook_dir))
    assert "insufficient resources on 2 nodes" in str(failed.value)
    assert [s.id for s in swarm.manager.services.list(filters={"label": LABEL_KERNEL_ID})] == [service.id]


async def test_a_kernel_on_the_manager_is_interrupted_through_its_engine(
    swarm: Swarm,
    dockerkernel: Callable[..., CliResult],
    start_kernel: Callable[..., Any],
    notebook_dir: Path,
) -> None:
    args = ["--image", IMAGES["py3"], "--name", "manager", "--swarm", "--constraint", "node.role==manager"]
    assert dockerkernel("install", *args).code == 0
    kernel = await start_kernel("manager", cwd=str(notebook_dir))
    assert kernel.km.get_connection_info()["ip"] == MANAGER_ADDRESS

    def no_message() -> None:
        raise AssertionError("the interrupt went as a message, not through the manager's engine")

    kernel.km.provisioner._send_interrupt_request = no_message
    await interrupt_a_sleep(kernel)
    await kernel.shutdown()
    await wait_until(lambda: not services_of(swarm, kernel), "the service's removal")


async def test_a_restart_stays_on_the_kernels_node(
    swarm: Swarm,
    dockerkernel: Callable[..., CliResult],
    start_kernel: Callable[..., Any],
    notebook_dir: Path,
) -> None:
    """Either node could take the kernel; a restart keeps the first one, whose address open channels use."""
    assert dockerkernel("install", "--image", IMAGES["py3"], "--name", "anywhere", "--swarm").code == 0
    kernel = await start_kernel("anywhere", cwd=str(notebook_dir))
    address = kernel.km.get_connection_info()["ip"]
    (first,) = services_of(swarm, kernel)
    node = first.tasks()[0]["NodeID"]
    for _ in range(3):
        await kernel.km.restart_kernel()
        await kernel.kc.wait_for_ready(timeout=120)
        (service,) = services_of(swarm, kernel)
        assert service.tasks()[0]["NodeID"] == node
        assert kernel.km.get_connection_info()["ip"] == address
    assert (await kernel.execute("print('here')")).stdout == "here\n"
