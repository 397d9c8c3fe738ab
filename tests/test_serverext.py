"""The server extension: a new server removes the containers of a server that was killed, and only those."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import docker
import pytest

from dockerkernel import channels
from dockerkernel.labels import LABEL_OWNER_PID

from waiting import wait_until

pytestmark = pytest.mark.docker


async def test_next_server_reaps_the_kernels_of_a_killed_server(
    install_test_kernel: Any, jupyter_server: Any, notebook_dir: Path, docker_client: docker.DockerClient
) -> None:
    name = install_test_kernel("py3")
    killed = await jupyter_server(notebook_dir.parent)
    for _ in range(3):
        await killed.api("POST", "/api/kernels", {"name": name})
    live = await jupyter_server(notebook_dir.parent)  # the same user's other server
    live_kernel = await live.api("POST", "/api/kernels", {"name": name})

    def containers_of(server: Any) -> list[Any]:
        return docker_client.containers.list(
            all=True, filters={"label": f"{LABEL_OWNER_PID}={server.process.pid}"}
        )

    def sockets_of(server: Any) -> list[str]:
        """The kernels' sockets' folders that ``server`` made, by the owner file in each."""
        base = channels.base_folder()
        return [
            name
            for name in os.listdir(base)
            if json.loads((Path(base) / name / channels.OWNER_FILE).read_text())[LABEL_OWNER_PID]
            == str(server.process.pid)
        ]

    assert len(containers_of(killed)) == 3
    assert len(sockets_of(killed)) == 3
    killed.process.kill()  # SIGKILL: no chance to clean up
    killed.process.wait()
    assert len(containers_of(killed)) == 3

    reaper = await jupyter_server(notebook_dir.parent)
    await wait_until(lambda: not containers_of(killed), "the new server to remove the orphaned containers")
    assert "removed 3 kernel container(s) whose server is gone" in reaper.log()
    assert not sockets_of(killed)  # their sockets' folders are gone too
    assert len(sockets_of(live)) == 1

    # The live server's kernel was not touched, and still works.
    [container] = containers_of(live)
    assert container.status == "running"
    ws = await live.kernel_websocket(live_kernel["id"], "test-session")
    try:
        assert (await ws.execute("print('still here')")).stdout == "still here\n"
    finally:
        ws.close()
