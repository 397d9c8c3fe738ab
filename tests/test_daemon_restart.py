"""The Docker daemon stops, hangs or restarts under a running kernel, or a server's session.

Without live-restore, dockerd's containers stop with it: a restart while it is
down fails at once with one sentence, and once it is back a restart gives a
working kernel. With live-restore the kernel runs on and is never taken for
dead. A daemon that hangs makes every call fail after the API timeout, with
one sentence.

These tests stop, freeze and start the machine's dockerd, so they need root
and a dockerd process they can see (tests/run.sh, as CI runs it, provides
both). Whatever happens, the daemon is left running as it was found.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest

from dockerkernel import errors
from dockerkernel.engine.connect import TIMEOUT_VARIABLE, get_client
from dockerkernel.engine.images import image_present
from dockerkernel.errors import DockerKernelError
from dockerkernel.labels import LABEL_KERNEL_ID

from conftest import IMAGES
from waiting import accepts, wait_until, wait_until_sync

pytestmark = pytest.mark.docker


def dockerd() -> psutil.Process | None:
    """The machine's own dockerd: root's, not a rootless one nor a test host's (those have a data root)."""
    for process in psutil.process_iter(["name", "uids", "cmdline"]):
        if process.info["name"] == "dockerd" and process.info["uids"].real == 0:
            if not any(arg.startswith("--data-root") for arg in process.info["cmdline"]):
                return process
    return None


@dataclass
class Daemon:
    """The machine's dockerd, which a test may stop, freeze and start again."""

    argv: list[str]
    cwd: str

    def stop(self) -> None:
        process = dockerd()
        assert process is not None
        process.terminate()
        process.wait(60)

    def start(self, *extra: str) -> None:
        """Start it as tests/run.sh does, outliving the test, and wait until it answers."""
        background = 'nohup "$@" >>/var/log/dockerd-tests.log 2>&1 </dev/null &'
        command = ["dockerd", *self.argv, *extra]
        subprocess.run(["bash", "-c", background, "bash", *command], cwd=self.cwd, check=True)
        wait_until_sync(_answers, "dockerd to answer")


def _answers() -> bool:
    """Whether the daemon answers; the socket first, as a failed SDK connection leaks its socket."""
    if not accepts("/var/run/docker.sock"):
        return False
    with docker.APIClient(version="1.41", timeout=5) as api:
        try:
            return bool(api.ping())
        except docker.errors.APIError:  # starting: not ready yet
            return False


@pytest.fixture
def daemon(docker_client: docker.DockerClient) -> Iterator[Daemon]:
    """The machine's dockerd, restored after the test. Request it after start_kernel, so that it is
    running again before the test's kernels are shut down and checked for leftovers."""
    if os.getuid() != 0:
        pytest.fail("restarting dockerd needs root: run the suite with tests/run.sh as root")
    process = dockerd()
    if process is None:
        pytest.fail("no dockerd process on this machine to restart; tests/run.sh starts one")
    found = Daemon(process.cmdline()[1:], process.cwd())
    yield found
    # Left as found: running, unfrozen, with its own arguments.
    current = dockerd()
    if current is not None and current.status() == psutil.STATUS_STOPPED:
        current.send_signal(signal.SIGCONT)
    if current is None or current.cmdline()[1:] != found.argv:
        if current is not None:
            found.stop()
        found.start()


async def test_a_restart_with_the_daemon_down_is_one_sentence_and_works_once_it_is_back(
    install_test_kernel: Any, start_kernel: Any, notebook_dir: Path, daemon: Daemon
) -> None:
    kernel = await start_kernel(install_test_kernel("py3"), cwd=str(notebook_dir))
    assert (await kernel.execute("x = 1; print(x)")).stdout == "1\n"
    daemon.stop()

    started = time.monotonic()
    with pytest.raises(DockerKernelError) as info:
        await asyncio.wait_for(kernel.km.restart_kernel(now=True), timeout=120)
    assert str(info.value).startswith(errors.DOCKER_UNREACHABLE.split("(")[0])
    print(f"restart with the daemon down failed after {time.monotonic() - started:.1f} s")

    daemon.start()
    await kernel.km.restart_kernel(now=True)
    await kernel.kc.wait_for_ready(timeout=60)
    reply = await kernel.execute("print('back'); x")
    assert (reply.stdout, reply.ename) == ("back\n", "NameError")
    # The container that could not be removed while the daemon was down is gone now:
    # start_kernel's no_leftovers checks it.


async def test_with_live_restore_a_daemon_restart_never_kills_the_kernel(
    install_test_kernel: Any,
    start_kernel: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    daemon: Daemon,
) -> None:
    daemon.stop()
    daemon.start("--live-restore")
    kernel = await start_kernel(install_test_kernel("py3"), cwd=str(notebook_dir))
    assert (await kernel.execute("x = 1; print(x)")).stdout == "1\n"
    container = kernel.container_id

    daemon.stop()  # the kernel's container runs on; the watch of its exit loses its connection
    assert await kernel.km.is_alive()
    daemon.start("--live-restore")
    await wait_until(
        lambda: asyncio.to_thread(image_present, get_client(), IMAGES["py3"]),
        "the daemon to answer the kernel's provisioner",
    )
    assert await kernel.km.is_alive()
    # The channels come back through the restored port forwards (output published before
    # the client's subscription is back would be lost, as with any interrupted connection).
    await kernel.kc.wait_for_ready(timeout=60)
    reply = await kernel.execute("print(x)")  # the same kernel, its state intact
    assert reply.stdout == "1\n"
    assert kernel.container_id == container
    assert docker_client.api.inspect_container(container)["State"]["Running"]


def test_a_hung_daemon_fails_each_call_after_the_timeout_with_one_sentence(
    install_test_kernel: Any, notebook_dir: Path, daemon: Daemon
) -> None:
    name = install_test_kernel("py3")
    env = {**os.environ, TIMEOUT_VARIABLE: "2"}
    start = (
        "import sys\nfrom jupyter_client.manager import KernelManager\n"
        "from dockerkernel.errors import DockerKernelError\n"
        f"try:\n    KernelManager(kernel_name={name!r}).start_kernel(cwd={str(notebook_dir)!r})\n"
        "except DockerKernelError as e:\n    print(e)\n    sys.exit(1)\n"
    )
    process = dockerd()
    assert process is not None
    process.suspend()  # accepts connections, answers none
    try:
        started = time.monotonic()
        ps = subprocess.run(
            [sys.executable, "-m", "dockerkernel", "ps"], env=env, capture_output=True, text=True, timeout=60
        )
        kernel = subprocess.run(
            [sys.executable, "-c", start], env=env, capture_output=True, text=True, timeout=60
        )
        print(f"two calls to a hung daemon failed in {time.monotonic() - started:.1f} s")
    finally:
        process.resume()
    sentence = errors.DOCKER_UNREACHABLE.format(reason="it did not answer within 2 s")
    assert (ps.returncode, ps.stderr) == (1, f"dockerkernel: {sentence}\n")
    assert (kernel.returncode, kernel.stdout) == (1, sentence + "\n"), kernel.stderr


async def test_a_session_deleted_with_the_daemon_down_ends_and_its_container_goes_later(
    install_test_kernel: Any,
    jupyter_server: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    daemon: Daemon,
) -> None:
    """DELETE answers, the kernel and its ports are let go; the container that could not be
    removed is removed by the server at its next kernel start on that daemon.

    With live-restore, so that the kernel runs on while the daemon is down: without it, the
    daemon's stop kills the kernel, and the server's restarter may be restarting it when the
    DELETE comes, which jupyter_client's MultiKernelManager answers with a 500 for any kernel.
    """
    daemon.stop()
    daemon.start("--live-restore")
    name = install_test_kernel("py3")
    server = await jupyter_server(notebook_dir.parent)
    body = {"path": "project/nb.ipynb", "type": "notebook", "kernel": {"name": name}}
    session = await server.api("POST", "/api/sessions", body)
    [first] = docker_client.containers.list(filters={"label": f"{LABEL_KERNEL_ID}={session['kernel']['id']}"})
    daemon.stop()

    started = time.monotonic()
    await server.api("DELETE", f"/api/sessions/{session['id']}", timeout=60)
    print(f"DELETE with the daemon down answered after {time.monotonic() - started:.1f} s")
    assert await server.api("GET", "/api/kernels") == []
    assert f"its container {first.id[:12]} is left behind" in server.log()

    daemon.start("--live-restore")
    later = await server.api("POST", "/api/sessions", {**body, "path": "project/later.ipynb"})
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(first.id)
    await server.api("DELETE", f"/api/sessions/{later['id']}")
    # Its container is removed after the DELETE has answered: before the daemon is restored.
    this_kernel = {"label": f"{LABEL_KERNEL_ID}={later['kernel']['id']}"}
    await wait_until(lambda: not docker_client.containers.list(all=True, filters=this_kernel), "the removal")
