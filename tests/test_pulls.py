"""Pulls with visible progress, from a real registry on loopback: the CLI's bars, the server log, errors."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import socket
import threading
from pathlib import Path
from typing import Any

import docker
import pytest
from jupyter_client.manager import AsyncKernelManager
from rich.console import Console

from dockerkernel import errors
from dockerkernel.labels import LABEL_KERNEL_ID
from dockerkernel.pulls import PullBars, PullLog, PullProgress

from conftest import Registry
from waiting import wait_until

LAYER = "bbbbbbbbbbbb"
# What the engine streams for a two-layer pull, one of them already present.
EVENTS: list[dict[str, Any]] = [
    {"status": "Pulling from team/img", "id": "1"},
    {"status": "Already exists", "progressDetail": {}, "id": "aaaaaaaaaaaa"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "bbbbbbbbbbbb"},
    {"status": "Downloading", "progressDetail": {"current": 5_000_000, "total": 20_000_000}, "id": LAYER},
    {"status": "Downloading", "progressDetail": {"current": 15_000_000, "total": 20_000_000}, "id": LAYER},
    {"status": "Verifying Checksum", "progressDetail": {}, "id": "bbbbbbbbbbbb"},
    {"status": "Download complete", "progressDetail": {}, "id": "bbbbbbbbbbbb"},
    {"status": "Extracting", "progressDetail": {"current": 1, "total": 20_000_000}, "id": "bbbbbbbbbbbb"},
    {"status": "Pull complete", "progressDetail": {}, "id": "bbbbbbbbbbbb"},
    {"status": "Digest: sha256:0123"},
    {"status": "Status: Downloaded newer image for team/img:1"},
]


def test_progress_sums_up_the_layers() -> None:
    progress = PullProgress("team/img:1")
    seen = [progress.update(e) for e in EVENTS[:5]]
    assert seen == [None, "aaaaaaaaaaaa", "bbbbbbbbbbbb", "bbbbbbbbbbbb", "bbbbbbbbbbbb"]
    assert progress.summary() == "1 of 2 layers done, 15.0 MB of 20.0 MB downloaded"
    for event in EVENTS[5:]:
        progress.update(event)
    assert progress.summary() == "2 of 2 layers done, 20.0 MB of 20.0 MB downloaded"
    assert progress.result() == "Pulled team/img:1 (sha256:0123)."


def test_up_to_date() -> None:
    progress = PullProgress("team/img:1")
    progress.update({"status": "Status: Image is up to date for team/img:1"})
    assert progress.result() == "Image team/img:1 is up to date."


def test_bars_show_each_layer() -> None:
    out = io.StringIO()
    with PullBars("team/img:1", Console(file=out, force_terminal=True, width=100)) as bars:
        for event in EVENTS:
            bars(event)
    final = out.getvalue().rpartition("\x1b[2K")[2]  # the last frame drawn
    assert "aaaaaaaaaaaa Already exists" in out.getvalue()
    assert "bbbbbbbbbbbb Pull complete" in final and "20.0/20.0 MB" in final


def test_pull_command_shows_progress_and_a_final_line(
    dockerkernel: Any, pulled_image: str, docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # draw the bars as on a terminal
    monkeypatch.setenv("COLUMNS", "120")
    result = dockerkernel("pull", pulled_image)
    assert result.code == 0, result.err
    assert result.out.startswith(f"Pulled {pulled_image} (sha256:")
    final = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", result.err).rpartition("\r")[2]  # the last frame
    layers = final.splitlines()
    assert len(layers) == 4, final  # the py3 image's three layers, and the pulled one
    assert all(" Already exists " in line for line in layers[:3])
    assert " Pull complete " in layers[3] and "20.0/20.0 MB" in layers[3]
    docker_client.images.get(pulled_image)
    # Pulled again: up to date.
    assert dockerkernel("pull", pulled_image).out == f"Image {pulled_image} is up to date.\n"


def test_pull_by_kernelspec_name_and_install_pulls(
    dockerkernel: Any, pulled_image: str, docker_client: docker.DockerClient
) -> None:
    result = dockerkernel("install", "--image", pulled_image, "--name", "from-registry")
    assert result.code == 0, result.err
    assert f"Pulled {pulled_image} (sha256:" in result.err
    assert dockerkernel("pull", "from-registry").out == f"Image {pulled_image} is up to date.\n"


def test_pull_errors_name_the_image_and_the_reason(dockerkernel: Any, registry: Registry) -> None:
    image = f"{registry.address}/no/such-image:1"
    result = dockerkernel("pull", image)
    assert result.code == 1
    assert result.err.startswith(f"dockerkernel: Docker image '{image}' could not be pulled (")
    assert "manifest unknown" in result.err or "not found" in result.err
    assert result.err.count("\n") == 1


async def test_provisioner_logs_pull_progress_and_starts_the_kernel(
    dockerkernel: Any,
    pulled_image: str,
    start_kernel: Any,
    notebook_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert dockerkernel("install", "--image", pulled_image, "--name", "pulled", "--no-pull").code == 0
    caplog.set_level(logging.INFO)
    kernel = await start_kernel("pulled", cwd=str(notebook_dir))
    reply = await kernel.execute("print(len(open('/opt/pull-test-blob', 'rb').read()))")
    assert reply.stdout == "20000000\n"
    messages = [r.getMessage() for r in caplog.records]
    assert f"Pulling Docker image {pulled_image}" in messages
    assert any(m.startswith(f"Pulled {pulled_image} (sha256:") for m in messages), messages


async def test_failed_pull_at_kernel_start_is_one_sentence(
    dockerkernel: Any, registry: Registry, start_kernel: Any, notebook_dir: Path
) -> None:
    image = f"{registry.address}/no/such-image:1"
    assert dockerkernel("install", "--image", image, "--name", "nope", "--no-pull").code == 0
    with pytest.raises(errors.DockerKernelError) as info:
        await start_kernel("nope", cwd=str(notebook_dir))
    assert str(info.value).startswith(f"Docker image '{image}' could not be pulled (")


def test_server_log_gets_a_summary_at_most_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    log = logging.getLogger("test-pull-log")
    pull = PullLog("team/img:1", log, interval=0)  # every event
    for event in EVENTS:
        pull(event)
    pull.finished()
    quiet = PullLog("team/img:1", log, interval=3600)  # only the first and the last line
    for event in EVENTS:
        quiet(event)
    quiet.finished()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "Pulling Docker image team/img:1"
    assert "Pulling team/img:1: 1 of 2 layers done, 15.0 MB of 20.0 MB downloaded" in messages
    assert messages[len(EVENTS) + 1].startswith("Pulled team/img:1 (sha256:0123). It took ")
    assert len(messages) == len(EVENTS) + 2 + 2


class Gate:
    """A TCP gate in front of the registry: it holds each connection until opened, then passes it on.

    A pull through it hangs, like one from a slow registry, and completes once the gate opens.
    """

    def __init__(self, registry: str) -> None:
        self.target = registry.rsplit(":", 1)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.opened = threading.Event()
        self.connected = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _keep(self, s: socket.socket) -> bool:
        """Keep ``s`` to be closed with the gate; a socket made after the gate closed is closed at once
        (its threads would otherwise drop it open, at any later moment of the run)."""
        with self._lock:
            if not self._closed:
                self.sockets.append(s)
                return True
        s.close()
        return False

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self._keep(client):
                return
            self.connected.set()
            threading.Thread(target=self._pass_on, args=(client,), daemon=True).start()

    def _pass_on(self, client: socket.socket) -> None:
        self.opened.wait()
        try:
            upstream = socket.create_connection((self.target[0], int(self.target[1])))
        except OSError:
            return
        if not self._keep(upstream):
            return
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._copy, args=(source, sink), daemon=True).start()

    @staticmethod
    def _copy(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.opened.set()
        with self._lock:
            self._closed = True
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            s.close()


async def test_a_start_cancelled_during_its_pull_ends_at_once_and_leaves_nothing_behind(
    dockerkernel: Any, registry: Registry, docker_client: docker.DockerClient, notebook_dir: Path
) -> None:
    gate = Gate(registry.address)
    image = registry.image.replace(registry.address, f"127.0.0.1:{gate.port}")
    assert dockerkernel("install", "--image", image, "--name", "gated", "--no-pull").code == 0
    km = AsyncKernelManager(kernel_name="gated")
    try:
        start = asyncio.ensure_future(km.start_kernel(cwd=str(notebook_dir)))
        await wait_until(gate.connected.is_set, "Docker to contact the registry")
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(start, timeout=10)  # at once, not when the pull ends

        gate.opened.set()  # the pull now completes, after the start was cancelled
        await wait_until(lambda: not starting(km.kernel_id), "the cancelled start to end")
        docker_client.images.get(image)  # pulled
        kernel = {"label": f"{LABEL_KERNEL_ID}={km.kernel_id}"}
        assert docker_client.containers.list(all=True, filters=kernel) == []
    finally:
        gate.close()
        await km.cleanup_resources()
        try:
            docker_client.images.remove(image)
        except docker.errors.ImageNotFound:
            pass


def starting(kernel_id: str) -> bool:
    """Whether a thread is still starting the kernel."""
    return any(t.name == f"dockerkernel-start-{kernel_id}" for t in threading.enumerate())
