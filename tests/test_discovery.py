"""Images found by themselves: `dockerkernel scan`, its kernelspecs, and a server that keeps them in step.

The images are built here from the py3 test image with a label (no network), and
removed after each test.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from dockerkernel import discovery, images, kernelspec
from dockerkernel.discovery import LABEL_IMAGE_KERNEL, Found, Skipped, from_label, kernelspec_name

from conftest import CliResult, remove_images
from waiting import wait_until

REPOSITORY = "dktest-scan"


def test_a_kernelspec_is_named_after_the_repository_and_tag() -> None:
    assert kernelspec_name("team/torch:2.3") == "team-torch-2.3"
    assert kernelspec_name("127.0.0.1:5000/team/torch:2.3") == "team-torch-2.3"
    assert kernelspec_name("quay.io/Team/Img") == "team-img"  # latest is left out
    assert kernelspec_name("img:v1.0_rc") == "img-v1.0_rc"


def test_a_label_is_a_json_object_of_a_display_name_a_name_and_settings() -> None:
    found = from_label("team/torch:2.3", "sha256:1", '{"display_name": "Torch", "gpus": "all"}')
    assert found == Found(
        "team/torch:2.3", "sha256:1", "team-torch-2.3", "Torch", {"gpus": "all", "image": "team/torch:2.3"}
    )
    assert from_label("a/b:1", "sha256:1", "") == Found(
        "a/b:1", "sha256:1", "a-b-1", "a/b:1 (Docker)", {"image": "a/b:1"}
    )
    assert isinstance(from_label("a/b:1", "sha256:1", '{"name": "mine"}'), Found)
    for value, reason in [
        ("{not json", "is not JSON"),
        ('["a list"]', "is not a JSON object"),
        ('{"name": "has space"}', "not a valid name"),
        ('{"gpus": "lots"}', "invalid gpus value"),
        ('{"no_such_setting": 1}', "no_such_setting"),
    ]:
        skipped = from_label("a/b:1", "sha256:1", value)
        assert isinstance(skipped, Skipped) and reason in skipped.reason, skipped


@pytest.fixture
def labelled(docker_client: docker.DockerClient, test_images: dict[str, str]) -> Iterator[Callable[..., str]]:
    """Build ``dktest-scan/NAME`` from the py3 test image, with a kernel label of ``value``; removed after."""
    made: list[str] = []

    def build(name: str, value: str | None, extra: str = "") -> str:
        tag = f"{REPOSITORY}/{name}"
        dockerfile = f"FROM {test_images['py3']}\n{extra}\n".encode()
        labels = {} if value is None else {LABEL_IMAGE_KERNEL: value}
        docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, labels=labels, rm=True)
        made.append(tag)
        return tag

    yield build
    remove_images(docker_client, *made)


def spec_of(jupyter_dirs: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((jupyter_dirs / "data" / "kernels" / name / "kernel.json").read_text()))


def test_scan_lists_labelled_images_and_says_why_it_skips_one(
    dockerkernel: Callable[..., CliResult], labelled: Callable[..., str]
) -> None:
    labelled("torch:2.3", json.dumps({"display_name": "Torch 2.3", "mem_limit": "2g"}))
    labelled("broken:1", "{not json")
    labelled("greedy:1", json.dumps({"gpus": "lots"}))
    result = dockerkernel("scan")
    assert result.code == 0, result.err
    [row] = [line for line in result.out.splitlines() if REPOSITORY in line]
    assert row.split()[:4] == ["dktest-scan-torch-2.3", "dktest-scan/torch:2.3", "Torch", "2.3"]
    skipped = [line for line in result.err.splitlines() if REPOSITORY in line]
    assert len(skipped) == 2
    assert skipped[0].startswith(f"skipped {REPOSITORY}/broken:1: its label {LABEL_IMAGE_KERNEL} is not JSON")
    assert skipped[1].startswith(f"skipped {REPOSITORY}/greedy:1: Invalid dockerkernel setting")


async def test_scan_install_keeps_the_kernelspecs_in_step_and_they_start(
    dockerkernel: Callable[..., CliResult],
    labelled: Callable[..., str],
    jupyter_dirs: Path,
    docker_client: docker.DockerClient,
    start_kernel: Any,
    notebook_dir: Path,
) -> None:
    image = labelled("torch:2.3", json.dumps({"display_name": "Torch 2.3", "mem_limit": "2g"}))
    mine = labelled("mine:1", "")
    assert dockerkernel("install", "--image", mine, "--name", "dktest-scan-mine-1", "--no-pull").code == 0
    result = dockerkernel("scan", "--install")
    assert result.code == 0, result.err
    assert "added kernelspec dktest-scan-torch-2.3" in result.out
    assert "left kernelspec dktest-scan-mine-1 alone: it is not one that scan wrote" in result.err
    spec = spec_of(jupyter_dirs, "dktest-scan-torch-2.3")
    assert spec["display_name"] == "Torch 2.3"
    assert spec["metadata"]["kernel_provisioner"]["config"] == {"image": image, "mem_limit": "2g"}
    # It is a kernel like any other.
    kernel = await start_kernel("dktest-scan-torch-2.3", cwd=str(notebook_dir))
    assert (await kernel.execute("print(6 * 7)")).stdout == "42\n"
    # A rebuild of the tag keeps the kernelspec's name; an unchanged label changes nothing.
    old_id = docker_client.images.get(image).id
    labelled("torch:2.3", json.dumps({"display_name": "Torch 2.3", "mem_limit": "2g"}), "ENV REBUILT=1")
    assert docker_client.images.get(image).id != old_id
    assert "The kernelspecs are in step with the images." in dockerkernel("scan", "--install").out
    labelled("torch:2.3", json.dumps({"display_name": "Torch 2.3 (new)"}))
    assert "updated kernelspec dktest-scan-torch-2.3" in dockerkernel("scan", "--install").out
    assert spec_of(jupyter_dirs, "dktest-scan-torch-2.3")["display_name"] == "Torch 2.3 (new)"
    # Gone from the engine, gone from Jupyter; the user's own kernelspec stays.
    docker_client.images.remove(image, force=True)
    assert "removed kernelspec dktest-scan-torch-2.3" in dockerkernel("scan", "--install").out
    names = {k.name for k in kernelspec.installed()}
    assert "dktest-scan-torch-2.3" not in names and "dktest-scan-mine-1" in names


def test_scan_all_probes_unlabelled_images_once(
    dockerkernel: Callable[..., CliResult],
    labelled: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    plain = labelled("plain:1", None, "ENV PLAIN=1")  # an image of its own, with ipykernel, unlabelled
    probes: list[str] = []
    real_probe = images._run_probe

    def counted(client: Any, image: str, image_id: str, python: str) -> Any:
        probes.append(image)
        return real_probe(client, image, image_id, python)

    monkeypatch.setattr(images, "_run_probe", counted)
    monkeypatch.setattr(images, "_probed", {})
    assert plain not in dockerkernel("scan").out  # no label, no probe
    assert probes == []
    first = dockerkernel("scan", "--all")
    assert first.code == 0, first.err
    [row] = [line for line in first.out.splitlines() if plain in line]
    assert row.split()[0] == "dktest-scan-plain-1" and row.split()[-1] == "probe"
    assert probes.count(plain) == 1
    # The answers are kept by image id: a second scan probes nothing.
    monkeypatch.setattr(images, "_probed", {})
    probes.clear()
    assert plain in dockerkernel("scan", "--all").out
    assert probes == []
    assert json.loads(Path(discovery.cache_file()).read_text())


async def test_a_server_keeps_the_kernelspecs_of_labelled_images_in_step(
    jupyter_server: Any,
    jupyter_dirs: Path,
    notebook_dir: Path,
    labelled: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    (jupyter_dirs / "config").mkdir(parents=True, exist_ok=True)
    (jupyter_dirs / "config" / "jupyter_server_config.json").write_text(
        json.dumps({"DockerKernelDiscovery": {"sync": True, "interval": 1}})
    )
    server = await jupyter_server(notebook_dir.parent)

    async def listed() -> set[str]:
        return set((await server.api("GET", "/api/kernelspecs"))["kernelspecs"])

    assert "dktest-scan-fresh-1" not in await listed()
    image = labelled("fresh:1", json.dumps({"display_name": "Fresh"}))
    await wait_until(
        lambda: _has(listed, "dktest-scan-fresh-1"), "the server to list the new image's kernel", 30
    )
    docker_client.images.remove(image, force=True)
    await wait_until(lambda: _has(listed, "dktest-scan-fresh-1", False), "the kernelspec's removal", 30)
    assert "removed kernelspec dktest-scan-fresh-1: its image is gone" in server.log()


async def _has(listed: Callable[[], Any], name: str, present: bool = True) -> bool:
    return (name in await listed()) == present
