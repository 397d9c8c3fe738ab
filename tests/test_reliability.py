"""Faults survived: a port taken at the last moment, a kernel that dies, a daemon that cannot be reached."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any

import docker
import pytest
from jupyter_client.manager import AsyncKernelManager

from dockerkernel import errors
from dockerkernel.errors import DockerKernelError
from dockerkernel.labels import LABEL_KERNEL_ID
from dockerkernel.provisioner import DockerProvisioner

from conftest import BARE, IMAGES
from waiting import wait_until

pytestmark = pytest.mark.docker


async def test_a_port_taken_before_the_container_publishes_it_is_retried_with_new_ports(
    install_test_kernel: Any,
    start_kernel: Any,
    notebook_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    taken: list[socket.socket] = []
    pre_launch = DockerProvisioner.pre_launch

    async def pre_launch_then_lose_a_port(self: DockerProvisioner, **kwargs: Any) -> dict[str, Any]:
        result = await pre_launch(self, **kwargs)
        if not taken:  # another program grabs the shell port, once
            grabber = socket.socket()
            grabber.bind(("127.0.0.1", int(self.connection_info["shell_port"])))
            grabber.listen()
            taken.append(grabber)
        return result

    monkeypatch.setattr(DockerProvisioner, "pre_launch", pre_launch_then_lose_a_port)
    caplog.set_level(logging.INFO)
    try:
        kernel = await start_kernel(install_test_kernel("py3", "--channels", "tcp"), cwd=str(notebook_dir))
        assert kernel.km.shell_port != taken[0].getsockname()[1]
        assert (await kernel.execute("print('on new ports')")).stdout == "on new ports\n"
        assert any("trying other ports" in r.getMessage() for r in caplog.records)
    finally:
        for grabber in taken:
            grabber.close()


async def test_server_restarts_a_kernel_that_died_in_a_new_container(
    install_test_kernel: Any, jupyter_server: Any, notebook_dir: Path, docker_client: docker.DockerClient
) -> None:
    server = await jupyter_server(notebook_dir.parent)
    kernel = await server.api("POST", "/api/kernels", {"name": install_test_kernel("py3")})

    def containers() -> list[Any]:
        return docker_client.containers.list(
            all=True, sparse=True, filters={"label": f"{LABEL_KERNEL_ID}={kernel['id']}"}
        )

    [first] = containers()
    ws = await server.kernel_websocket(kernel["id"], "crash")
    try:
        assert (await ws.execute("x = 1")).status == "ok"
        ws.send("execute_request", {"code": "import os; os._exit(1)", "silent": False})

        # The server's restarter notices, and starts the kernel again in a new container.
        def restarted() -> bool:
            found = containers()
            return len(found) == 1 and found[0].id != first.id and found[0].status == "running"

        await wait_until(restarted, "the server to restart the kernel in a new container")
    finally:
        ws.close()
    ws = await server.kernel_websocket(kernel["id"], "after-crash")
    try:
        deadline = time.monotonic() + 30
        while True:  # the restarted kernel answers once it is up
            try:
                run = await ws.execute("print('back'); x", timeout=5)
                break
            except (asyncio.TimeoutError, TimeoutError):
                assert time.monotonic() < deadline
        assert (run.stdout, run.ename) == ("back\n", "NameError")
    finally:
        ws.close()
    assert "restarting" in server.log().lower()


async def test_unreachable_daemon_is_one_sentence_and_the_server_keeps_serving(
    install_test_kernel: Any,
    jupyter_server: Any,
    notebook_dir: Path,
    tmp_path: Path,
) -> None:
    name = install_test_kernel("py3")
    server = await jupyter_server(
        notebook_dir.parent, env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    )
    body = {"path": "project/nb.ipynb", "type": "notebook", "kernel": {"name": name}}
    session = await server.api("POST", "/api/sessions", body)
    ws = await server.kernel_websocket(session["kernel"]["id"], session["id"])
    try:
        run = await ws.execute("print('hello')")
    finally:
        ws.close()
    [shown] = [m for m in run.messages if m["msg_type"] == "error"]  # in the notebook
    assert shown["content"]["evalue"] == errors.DOCKER_UNREACHABLE.format(reason="no Docker socket was found")
    assert (await server.api("GET", "/api/status"))["kernels"] == 1
    assert await server.api("GET", "/api/contents/project")
    await server.api("DELETE", f"/api/sessions/{session['id']}")
    assert await server.api("GET", "/api/kernels") == []


async def test_a_start_up_failure_is_told_once_and_a_later_restart_tries_again(
    dockerkernel: Any, docker_client: docker.DockerClient, notebook_dir: Path, no_leftovers: None
) -> None:
    """Without the fallback kernel (nbclient, papermill), the restart after an early exit says why;
    once the cause is fixed (here: the image gets ipykernel), the next restart starts the kernel."""
    image = "dockerkernel-test/fixable:latest"
    docker_client.images.get(BARE["py3"]).tag(image)
    km = AsyncKernelManager(kernel_name="fixable")
    try:
        installed = dockerkernel(
            "install", "--image", image, "--name", "fixable", "--no-pull", "--pull-policy", "never"
        )
        assert installed.code == 0, installed.err
        await km.start_kernel(cwd=str(notebook_dir))
        await wait_until(km.provisioner.poll, "the kernel to die for want of ipykernel")
        with pytest.raises(DockerKernelError) as info:
            await km.restart_kernel(now=True)
        assert str(info.value) == errors.EXITED_DURING_STARTUP.format(
            image=image, status=1, reason="/usr/bin/python3: No module named ipykernel_launcher"
        )

        docker_client.images.get(IMAGES["py3"]).tag(image)  # fixed
        await km.restart_kernel(now=True)
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
        finally:
            kc.stop_channels()
    finally:
        if km.has_kernel:
            await km.shutdown_kernel(now=True)
        docker_client.images.remove(image)
