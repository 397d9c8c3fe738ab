"""Any image made kernel-ready: probing at install, --add-ipykernel, --dockerfile, the python2 preset.

The bare test images have a Python and nothing else: no pip, no ipykernel.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from dockerkernel import errors, images
from dockerkernel.discovery import LABEL_IMAGE_KERNEL
from dockerkernel.images import ImageProbe

from conftest import BARE


def probe_of(libc: str = "glibc 2.36", python: str = "3.11.2", machine: str = "x86_64") -> ImageProbe:
    return ImageProbe("sha256:" + "ab" * 32, python, None, machine, libc, True)


@pytest.mark.parametrize(
    ("base", "tag"),
    [
        ("python:2.7.18-slim", "dockerkernel/python:2.7.18-slim-ipykernel-abababababab"),
        ("team/img", "dockerkernel/team/img:latest-ipykernel-abababababab"),
        ("127.0.0.1:5000/team/img:1", "dockerkernel/team/img:1-ipykernel-abababababab"),
        ("quay.io/Team/Img:v2", "dockerkernel/team/img:v2-ipykernel-abababababab"),
        ("localhost/img@sha256:" + "cd" * 32, "dockerkernel/img:latest-ipykernel-abababababab"),
    ],
)
def test_derived_tag_names_the_base_and_its_id(base: str, tag: str) -> None:
    assert images.derived_tag(base, "sha256:" + "ab" * 32) == tag


def test_wheel_platforms_follow_the_image_glibc() -> None:
    tags = images.manylinux_platforms(probe_of("glibc 2.17"))
    assert tags == ["manylinux_2_17_x86_64", *(f"manylinux_2_{m}_x86_64" for m in range(16, 4, -1)),
                    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "any"]  # fmt: skip
    assert images.manylinux_platforms(probe_of(machine="aarch64"))[0] == "manylinux_2_36_aarch64"
    with pytest.raises(errors.DockerKernelError, match="C library is not glibc"):
        images.manylinux_platforms(probe_of(libc=""))


@pytest.fixture(scope="module")
def derived_images(docker_client: docker.DockerClient) -> Iterator[None]:
    """Kernel-ready images are built by this module's tests, and removed after them."""

    def remove() -> None:
        for image in docker_client.images.list(filters={"label": "org.dockerkernel.base"}):
            for tag in image.tags:
                if tag.startswith("dockerkernel/dockerkernel-test/"):
                    docker_client.images.remove(tag, force=True)

    remove()
    yield
    remove()


def read_spec(jupyter_dirs: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((jupyter_dirs / "data" / "kernels" / name / "kernel.json").read_text()))


@pytest.mark.docker
def test_probe_finds_python_and_ipykernel(
    docker_client: docker.DockerClient, test_images: dict[str, str]
) -> None:
    found = images.probe(docker_client, test_images["py3"], "python3")
    assert (found.python[:5], found.ipykernel, found.machine) == ("3.11.", "7.4.0", "x86_64")
    assert found.libc.startswith("glibc 2.")
    bare = images.probe(docker_client, BARE["py2"], "python")
    assert (bare.python, bare.ipykernel, bare.wide_unicode) == ("2.7.18", None, True)


@pytest.mark.docker
def test_install_without_python_or_ipykernel_says_what_to_do(
    dockerkernel: Any, docker_client: docker.DockerClient, no_leftovers: None
) -> None:
    result = dockerkernel("install", "--image", BARE["py3"], "--name", "bare", "--python", "python9")
    assert (result.code, result.err.splitlines()[-1]) == (
        1, "dockerkernel: " + errors.NO_PYTHON.format(image=BARE["py3"], python="python9"),
    )  # fmt: skip
    result = dockerkernel("install", "--image", BARE["py3"], "--name", "bare")
    assert (result.code, result.err.splitlines()[-1]) == (
        1, "dockerkernel: " + errors.NO_IPYKERNEL.format(image=BARE["py3"], python="3.11.2"),
    )  # fmt: skip
    assert dockerkernel("list").out.startswith("No dockerkernel kernelspecs")
    # No probe container is left behind.
    assert docker_client.containers.list(all=True, filters={"label": "org.dockerkernel.probe"}) == []


@pytest.mark.docker
@pytest.mark.parametrize(
    ("flavour", "python", "ipykernel", "code", "printed"),
    [
        ("py3", "python3", "", "import sys; print(sys.version_info[0])", "3\n"),  # the newest ipykernel
        ("py2", "python", "4.10.1", 'print "python", 2', "python 2\n"),
    ],
)
async def test_add_ipykernel_makes_a_bare_image_kernel_ready(
    flavour: str,
    python: str,
    ipykernel: str,
    code: str,
    printed: str,
    dockerkernel: Any,
    derived_images: None,
    jupyter_dirs: Path,
    start_kernel: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
) -> None:
    base = BARE[flavour]
    # --no-pull: the image is here, so it is checked and made kernel-ready all the same.
    result = dockerkernel(
        "install", "--image", base, "--name", "ready", "--python", python, "--add-ipykernel", "--no-pull"
    )
    assert result.code == 0, result.err
    assert "Successfully built" in result.err  # the build's output is shown
    spec = read_spec(jupyter_dirs, "ready")
    config = spec["metadata"]["kernel_provisioner"]["config"]
    base_id = docker_client.images.get(base).id
    assert config["image"] == images.derived_tag(base, base_id)
    assert spec["metadata"]["dockerkernel"]["base_image"] == base
    found = spec["metadata"]["dockerkernel"]["probe"]["ipykernel"]
    assert found and found.startswith(ipykernel)

    # A folder with a non-ASCII name: Python 2 without a locale would die decoding it.
    folder = notebook_dir / "ünïcødé"
    folder.mkdir()
    kernel = await start_kernel("ready", cwd=str(folder))
    assert (await kernel.execute(code)).stdout == printed
    assert (await kernel.execute("import os; print(os.path.basename(os.getcwd()))")).stdout == "ünïcødé\n"

    # Installed again: the kernel-ready image is found, not rebuilt.
    again = dockerkernel("install", "--image", base, "--name", "ready", "--python", python, "--add-ipykernel",
                         "--replace")  # fmt: skip
    assert again.code == 0 and "is present" in again.err and "Successfully built" not in again.err


@pytest.mark.docker
@pytest.mark.parametrize("flag", ["--add-ipykernel", "--curve"])
def test_no_pull_with_a_flag_that_needs_the_image_is_refused_when_it_is_absent(
    flag: str, dockerkernel: Any, docker_client: docker.DockerClient
) -> None:
    result = dockerkernel("install", "--image", "dockerkernel-test/absent:1", "--no-pull", flag)
    assert result.code == 1
    assert (
        result.err
        == "dockerkernel: "
        + errors.NO_PULL_NEEDS_IMAGE.format(flag=flag, image="dockerkernel-test/absent:1")
        + "\n"
    )
    assert dockerkernel("list").out.startswith("No dockerkernel kernelspecs")


@pytest.mark.docker
def test_a_changed_base_gets_a_new_kernel_ready_image(
    dockerkernel: Any, derived_images: None, docker_client: docker.DockerClient, jupyter_dirs: Path
) -> None:
    base = "dockerkernel-test/changing:1"
    tags = []
    for content in ("first", "second"):
        dockerfile = f"FROM {BARE['py3']}\nRUN echo {content} > /opt/version\n"
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=base, rm=True)
        result = dockerkernel(
            "install", "--image", base, "--name", "changing", "--add-ipykernel", "--replace"
        )
        assert result.code == 0, result.err
        tags.append(read_spec(jupyter_dirs, "changing")["metadata"]["kernel_provisioner"]["config"]["image"])
    assert tags[0] != tags[1]
    for tag in [*tags, base]:
        docker_client.images.remove(tag, force=True)


@pytest.mark.docker
async def test_install_builds_a_dockerfile_and_runs_a_kernel_in_the_result(
    dockerkernel: Any,
    tmp_path: Path,
    jupyter_dirs: Path,
    start_kernel: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    test_images: dict[str, str],
) -> None:
    project = tmp_path / "my-env"
    project.mkdir()
    (project / "extra.txt").write_text("from the build context\n")
    (project / "Dockerfile").write_text(f"FROM {test_images['py3']}\nCOPY extra.txt /opt/extra.txt\n")
    result = dockerkernel("install", "--dockerfile", str(project / "Dockerfile"))
    assert result.code == 0, result.err
    assert "Successfully tagged dockerkernel/my-env:latest" in result.err
    config = read_spec(jupyter_dirs, "my-env")["metadata"]["kernel_provisioner"]["config"]
    assert (config["image"], config["pull_policy"]) == ("dockerkernel/my-env:latest", "never")
    # Labelled as a kernel, so that `dockerkernel scan` finds it on any engine it goes to.
    label = docker_client.images.get("dockerkernel/my-env:latest").labels[LABEL_IMAGE_KERNEL]
    assert json.loads(label) == {
        "display_name": "my-env (Docker: dockerkernel/my-env:latest)",
        "name": "my-env",
    }
    try:
        kernel = await start_kernel("my-env", cwd=str(notebook_dir))
        assert (
            await kernel.execute("print(open('/opt/extra.txt').read())")
        ).stdout == "from the build context\n\n"
    finally:
        await kernel.shutdown()
        docker_client.images.remove("dockerkernel/my-env:latest", force=True)


@pytest.mark.docker
def test_a_failing_dockerfile_is_one_sentence_and_installs_nothing(
    dockerkernel: Any, tmp_path: Path, docker_client: docker.DockerClient, test_images: dict[str, str]
) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {test_images['py3']}\nRUN exit 3\n")
    result = dockerkernel("install", "--dockerfile", str(tmp_path / "Dockerfile"), "--name", "broken")
    assert result.code == 1
    last = result.err.splitlines()[-1]
    assert last.startswith(f"dockerkernel: Building {tmp_path / 'Dockerfile'} failed (")
    assert "returned a non-zero code: 3" in last
    assert dockerkernel("list").out.startswith("No dockerkernel kernelspecs")
    missing = dockerkernel("install", "--dockerfile", str(tmp_path / "nope" / "Dockerfile"))
    assert (
        missing.err
        == "dockerkernel: " + errors.DOCKERFILE_MISSING.format(path=tmp_path / "nope" / "Dockerfile") + "\n"
    )


@pytest.mark.docker
def test_python2_preset_adds_ipykernel_4_10(
    dockerkernel: Any, derived_images: None, jupyter_dirs: Path, docker_client: docker.DockerClient
) -> None:
    """The preset's public image is not reachable here: a local Python 2.7 image stands in for it."""
    result = dockerkernel("install", "python2", "--image", BARE["py2"], "--name", "py2-preset")
    assert result.code == 0, result.err
    spec = read_spec(jupyter_dirs, "py2-preset")
    assert spec["metadata"]["dockerkernel"]["probe"]["ipykernel"] == "4.10.1"
    assert spec["metadata"]["kernel_provisioner"]["config"]["kernel_cmd"][0] == "python"


def test_the_debugger_needs_python_3_ipykernel_6_and_debugpy() -> None:
    def probe(python: str = "3.11.2", ipykernel: str | None = "7.4.0", debugpy: bool = True) -> ImageProbe:
        return ImageProbe(
            "sha256:" + "ab" * 32, python, ipykernel, "x86_64", "glibc 2.36", True, debugpy=debugpy
        )

    assert probe().no_debugger() == "" and probe().metadata()["debugger"] is True
    assert probe("2.7.18", "4.10.1", False).no_debugger() == "Python 2.7.18 has no debugpy"
    assert (
        probe(ipykernel="5.5.6").no_debugger() == "ipykernel 5.5.6 is older than 6, the first with a debugger"
    )
    assert "pip install debugpy" in probe(debugpy=False).no_debugger()
    assert probe(debugpy=False).metadata()["debugger"] is False


@pytest.mark.docker
def test_jupyterlab_shows_its_debugger_where_the_image_can_run_it(
    dockerkernel: Any, jupyter_dirs: Path, test_images: dict[str, str]
) -> None:
    """The kernelspec's metadata.debugger, read by JupyterLab, from the probe; install says once why not."""
    py3 = dockerkernel("install", "--image", test_images["py3"], "--name", "with-debugger")
    assert py3.code == 0, py3.err
    assert read_spec(jupyter_dirs, "with-debugger")["metadata"]["debugger"] is True
    assert "debugger" not in py3.err
    py2 = dockerkernel(
        "install", "--image", test_images["py2"], "--name", "no-debugger", "--python", "python"
    )
    assert py2.code == 0, py2.err
    assert read_spec(jupyter_dirs, "no-debugger")["metadata"]["debugger"] is False
    assert py2.err.count("JupyterLab's debugger is off for this kernel: Python 2.7.18 has no debugpy.") == 1
