"""The presets: versioned images only, and a first kernel from a slim image with ipykernel added at install.

The python3 preset's image name is served by the tests' own registry on
loopback, set as the engine's mirror of Docker Hub for the test: `dockerkernel
install python3` then pulls, probes, builds its ipykernel layer and starts, as
it would from Docker Hub. What the registry serves under that name is the bare
py3 test image (Debian's Python 3.11, no pip, no ipykernel), not the official one.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest
from docker.utils import parse_repository_tag

from dockerkernel import kernelspec

from conftest import BARE, Registry, remove_images
from waiting import wait_until_sync

DAEMON_JSON = Path("/etc/docker/daemon.json")


def test_presets_name_versioned_or_dated_tags_never_latest() -> None:
    for name, preset in kernelspec.presets().items():
        _, tag = parse_repository_tag(preset.config["image"])
        assert tag and "latest" not in tag, f"preset {name}: {preset.config['image']}"
    assert kernelspec.presets()["python3"].add_ipykernel
    assert "scipy-notebook" in kernelspec.presets()["scipy"].config["image"]


def _mirrors(client: docker.DockerClient) -> list[str]:
    return [m.rstrip("/") for m in client.info().get("RegistryConfig", {}).get("Mirrors") or []]


def _reload(client: docker.DockerClient, wanted: list[str]) -> None:
    """Make the engine read daemon.json again (SIGHUP), and wait until it has the mirrors wanted."""
    [dockerd] = [
        p for p in psutil.process_iter(["name", "exe"]) if p.info["name"] == "dockerd" and _serves_default(p)
    ]
    dockerd.send_signal(signal.SIGHUP)
    wait_until_sync(lambda: _mirrors(client) == wanted, f"the engine's mirrors to be {wanted}", 30)


def _serves_default(process: psutil.Process) -> bool:
    """The engine of /var/run/docker.sock: not one in a test's network namespace."""
    try:
        return os.readlink(f"/proc/{process.pid}/ns/net") == os.readlink("/proc/self/ns/net")
    except OSError:
        return False


@pytest.fixture
def hub_mirror(registry: Registry, docker_client: docker.DockerClient) -> Iterator[str]:
    """The registry as the engine's mirror of Docker Hub, for this test only: daemon.json is put back."""
    if os.geteuid() != 0:
        pytest.fail("the preset test sets the engine's registry mirror: run it as root (CI does)")
    before = DAEMON_JSON.read_text() if DAEMON_JSON.exists() else None
    config = json.loads(before) if before else {}
    DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
    DAEMON_JSON.write_text(json.dumps({**config, "registry-mirrors": [f"http://{registry.address}"]}))
    try:
        _reload(docker_client, [f"http://{registry.address}"])
        yield registry.address
    finally:
        # The engine reloads only the keys that the file sets: the mirrors are set back first.
        original = config.get("registry-mirrors", [])
        DAEMON_JSON.write_text(json.dumps({**config, "registry-mirrors": original}))
        _reload(docker_client, [m.rstrip("/") for m in original])
        if before is None:
            DAEMON_JSON.unlink()
        else:
            DAEMON_JSON.write_text(before)


async def test_the_python3_preset_is_a_slim_image_with_ipykernel_added(
    hub_mirror: str,
    docker_client: docker.DockerClient,
    dockerkernel: Any,
    jupyter_dirs: Path,
    start_kernel: Any,
    notebook_dir: Path,
) -> None:
    image = kernelspec.presets()["python3"].config["image"]  # docker.io/library/python:<version>-slim-...
    repository, tag = parse_repository_tag(image)
    served = f"{hub_mirror}/{repository.removeprefix('docker.io/')}:{tag}"
    docker_client.images.get(BARE["py3"]).tag(served)
    for event in docker_client.api.push(served, stream=True, decode=True):
        assert "error" not in event, event
    made = [served, image]
    try:
        remove_images(docker_client, *made)
        result = dockerkernel("install", "python3")
        assert result.code == 0, result.err
        assert f"Pulled {image}" in result.err
        spec = json.loads((jupyter_dirs / "data" / "kernels" / "python3" / "kernel.json").read_text())
        config = spec["metadata"]["kernel_provisioner"]["config"]
        made.append(config["image"])
        assert config["image"].startswith("dockerkernel/library/python:") and "-ipykernel-" in config["image"]
        assert spec["metadata"]["dockerkernel"]["base_image"] == image
        kernel = await start_kernel("python3", cwd=str(notebook_dir))
        assert (await kernel.execute("print(1 + 1)")).stdout == "2\n"
        await kernel.shutdown()
    finally:
        remove_images(docker_client, *made)
