"""In a Jupyter server, a kernel that cannot start says why in the notebook, instead of a restart loop."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from dockerkernel import errors
from dockerkernel.labels import LABEL_KERNELSPEC

from conftest import BARE

pytestmark = pytest.mark.docker

RESTARTER_PERIOD = 0.2  # seconds between the restarter's looks at a kernel


async def execute_until_answered(ws: Any, code: str, timeout: float = 60) -> Any:
    """Run ``code``, retrying while the kernel (being restarted, say) does not answer yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await ws.execute(code, timeout=5)
        except (asyncio.TimeoutError, TimeoutError):
            assert time.monotonic() < deadline, "the kernel never answered"


async def open_session(server: Any, kernel_name: str) -> tuple[dict[str, Any], Any]:
    body = {"path": "project/broken.ipynb", "type": "notebook", "kernel": {"name": kernel_name}}
    session = await server.api("POST", "/api/sessions", body)
    return session, await server.kernel_websocket(session["kernel"]["id"], session["id"])


async def test_a_kernel_that_cannot_start_answers_with_the_reason(
    dockerkernel: Any, jupyter_server: Any, notebook_dir: Path, docker_client: docker.DockerClient
) -> None:
    image = "127.0.0.1:9/no/such-image:1"
    assert dockerkernel("install", "--image", image, "--name", "missing", "--no-pull").code == 0
    server = await jupyter_server(notebook_dir.parent)
    session, ws = await open_session(server, "missing")
    try:
        run = await execute_until_answered(ws, "print('hello')")
        expected = errors.IMAGE_UNAVAILABLE.format(image=image, reason="").split(" ()")[0]
        assert (run.status, run.ename) == ("error", "DockerKernelError")
        [shown] = [m for m in run.messages if m["msg_type"] == "error"]  # what the notebook shows
        assert shown["content"]["evalue"].startswith(expected), shown["content"]["evalue"]
        assert shown["content"]["evalue"].endswith("or build the image locally.")
        # Interrupt and restart work on it as on any kernel.
        await server.api("POST", f"/api/kernels/{session['kernel']['id']}/interrupt")
        await server.api("POST", f"/api/kernels/{session['kernel']['id']}/restart")
        assert (await execute_until_answered(ws, "1")).ename == "DockerKernelError"
    finally:
        ws.close()
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL_KERNELSPEC}=missing"}) == []
    assert "could not be pulled" in server.log()


async def test_a_kernel_that_exits_during_start_up_is_explained_not_restarted_in_a_loop(
    dockerkernel: Any,
    jupyter_server: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    jupyter_dirs: Path,
) -> None:
    # Installed without the check that would have caught it: the image has no ipykernel.
    assert dockerkernel("install", "--image", BARE["py3"], "--name", "no-ipykernel", "--no-pull").code == 0
    # The restarter looks at the kernel every 0.2 s instead of 3 s, so that a loop shows soon.
    config = jupyter_dirs / "config" / "jupyter_server_config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"KernelRestarter": {"time_to_dead": RESTARTER_PERIOD}}))
    server = await jupyter_server(notebook_dir.parent)
    session, ws = await open_session(server, "no-ipykernel")
    message = errors.EXITED_DURING_STARTUP.format(
        image=BARE["py3"], status=1, reason="/usr/bin/python3: No module named ipykernel_launcher"
    )
    try:
        run = await execute_until_answered(ws, "print('hello')")
        [shown] = [m for m in run.messages if m["msg_type"] == "error"]
        assert (run.ename, shown["content"]["evalue"]) == ("DockerKernelError", message)
        # The fallback kernel keeps answering, through 20 of the restarter's looks, with no restart.
        watched_until = time.monotonic() + 20 * RESTARTER_PERIOD
        while time.monotonic() < watched_until:
            assert (await ws.execute("1", timeout=10)).ename == "DockerKernelError"
    finally:
        ws.close()
    assert server.log().count("KernelRestarter: restarting kernel") == 1  # once, then the reason
    assert (
        docker_client.containers.list(all=True, filters={"label": f"{LABEL_KERNELSPEC}=no-ipykernel"}) == []
    )
