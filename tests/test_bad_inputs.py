"""Every bad input gets one clear sentence naming the problem and the fix, and leaves nothing behind.

Kernel-start inputs go through one real Jupyter server, one after another: each
answer is read where the user reads it (the fallback kernel's output in the
notebook, or the server's error for a kernelspec it cannot even load), no
container of that kernelspec may remain, and the server must go on answering.
Install-time inputs go through the CLI: exit status 1 and one line on stderr.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
from jupyter_client.manager import AsyncKernelManager
from tornado.httpclient import HTTPClientError

from dockerkernel import channels, errors
from dockerkernel.errors import DockerKernelError
from dockerkernel.labels import LABEL_KERNELSPEC

from conftest import BARE

pytestmark = pytest.mark.docker

NO_PYTHON_IMAGE = "dockerkernel-test/no-python:1"
QUITTING_IMAGE = "dockerkernel-test/entrypoint-exits:1"


@pytest.fixture(scope="module")
def broken_images(docker_client: docker.DockerClient, test_images: dict[str, str]) -> Iterator[None]:
    """An image with no Python, and one whose ENTRYPOINT exits at once."""
    for tag, dockerfile in (
        (NO_PYTHON_IMAGE, f"FROM {BARE['py3']}\nRUN rm -f /usr/bin/python3*\n"),
        (QUITTING_IMAGE, f'FROM {test_images["py3"]}\nENTRYPOINT ["/bin/false"]\n'),
    ):
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    yield
    for tag in (NO_PYTHON_IMAGE, QUITTING_IMAGE):
        docker_client.images.remove(tag, force=True)


@dataclass
class StartCase:
    """A kernelspec installed with ``install`` args, then edited by ``edit``; its start gives ``expected``."""

    what: str
    install: list[str]
    expected: str  # the whole sentence, or its start when it ends with "…"
    edit: Callable[[dict[str, Any]], None] = field(default=lambda config: None)


def _set(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda config: config.update(values)


UNKNOWN_IMAGE = "127.0.0.1:9/no/such-image:1"
PY3 = "dockerkernel-test/py3"
NO_MODULE = "/usr/bin/python3: No module named {}"
START_FAILED = f"The kernel container for image '{PY3}' could not be started (…"
START_CASES = [
    StartCase("unknown image", ["--image", UNKNOWN_IMAGE],
              errors.IMAGE_UNAVAILABLE.format(image=UNKNOWN_IMAGE, reason="…").split("…")[0] + "…"),
    StartCase("image absent, pull_policy never", ["--image", "nosuch/img:1", "--pull-policy", "never"],
              errors.IMAGE_NOT_PRESENT.format(image="nosuch/img:1")),
    StartCase("image with no Python", ["--image", NO_PYTHON_IMAGE],
              errors.KERNEL_CMD_NOT_FOUND.format(image=NO_PYTHON_IMAGE, command="python3")),
    StartCase("Python without ipykernel", ["--image", BARE["py3"]],
              errors.EXITED_DURING_STARTUP.format(
                  image=BARE["py3"], status=1, reason=NO_MODULE.format("ipykernel_launcher"))),
    StartCase("wrong kernel_cmd", ["--image", PY3],
              errors.EXITED_DURING_STARTUP.format(
                  image=PY3, status=1, reason=NO_MODULE.format("nosuch")),
              _set(kernel_cmd=["python3", "-m", "nosuch", "-f", "{connection_file}"])),
    StartCase("ENTRYPOINT exits at once", ["--image", QUITTING_IMAGE],
              errors.EXITED_DURING_STARTUP.format(image=QUITTING_IMAGE, status=1, reason="no output")),
    StartCase("mistyped key", ["--image", PY3],
              "Unknown dockerkernel setting 'gpu' in kernelspec 'bad-6': remove or rename it; …",
              _set(gpu="all")),
    StartCase("invalid gpus value", ["--image", PY3],
              "Invalid dockerkernel setting in kernelspec 'bad-7': invalid gpus value 'lots': use 'none', …",
              _set(gpus="lots")),
    StartCase("GPUs without the NVIDIA runtime", ["--image", PY3, "--gpus", "all"],
              errors.GPUS_UNAVAILABLE.format(gpus="all")),
    StartCase("volume whose host path is missing", ["--image", PY3],
              errors.VOLUME_HOST_MISSING.format(path="/no/such/dir", volume="/no/such/dir:/data"),
              _set(volumes=["/no/such/dir:/data"])),
    StartCase("huge environment", ["--image", PY3],
              "The kernel's environment is too large to start a process with (…",
              _set(environment={"BIG": "x" * 200_000})),
    StartCase("option injected through the image name", ["--image", PY3],
              "Invalid dockerkernel setting in kernelspec 'bad-11': invalid image name …",
              _set(image="dockerkernel-test/py3 --privileged")),
    StartCase("memory limit below Docker's minimum", ["--image", PY3, "--mem-limit", "1m"], START_FAILED),
    StartCase("container options, which the default policy refuses", ["--image", PY3],
              errors.POLICY_REFUSED.format(kernel="bad-13", asks="container_options",
                                           rule="KernelPolicy.allow_container_options"),
              _set(container_options={"privileged": True})),
    StartCase("two mounts at one path", ["--image", PY3],
              errors.MOUNT_TARGET_TWICE.format(target="/data", first="'/tmp'", second="'/usr'"),
              _set(volumes=["/tmp:/data", "/usr:/data:ro"])),
    StartCase("mount over the image's system", ["--image", PY3],
              errors.MOUNT_SYSTEM_DIR.format(path="/usr"), _set(mount="/usr")),
    StartCase("the Docker socket as a volume", ["--image", PY3],
              errors.POLICY_REFUSED.format(
                  kernel="bad-16", asks="the volume /run/docker.sock",
                  rule="KernelPolicy.allowed_volume_roots: any folder but the system's own"),
              _set(volumes=["/run/docker.sock:/var/run/docker.sock"])),
    StartCase("the host's network, which the default policy refuses", ["--image", PY3],
              errors.POLICY_REFUSED.format(kernel="bad-17", asks="the host's network",
                                           rule="KernelPolicy.allow_host_network"),
              _set(network="host")),
]  # fmt: skip


def matches(message: str, expected: str) -> bool:
    if expected.endswith("…"):
        return message.startswith(expected[:-1])
    return message == expected


async def message_of_start(server: Any, name: str) -> str:
    """What the user sees when a notebook starts kernel ``name`` and runs a cell."""
    body = {"path": f"project/{name}.ipynb", "type": "notebook", "kernel": {"name": name}}
    try:
        session = await server.api("POST", "/api/sessions", body)
    except HTTPClientError as e:  # a kernelspec the server cannot load: JupyterLab shows this in a dialog
        return str(e.message)
    ws = await server.kernel_websocket(session["kernel"]["id"], session["id"])
    try:
        run = await ws.execute("print('hello')", timeout=60)
    finally:
        ws.close()
        await server.api("DELETE", f"/api/sessions/{session['id']}")
    return str(next(m["content"]["evalue"] for m in run.messages if m["msg_type"] == "error"))


async def test_bad_kernel_inputs_each_get_one_clear_sentence(
    broken_images: None,
    dockerkernel: Any,
    jupyter_dirs: Path,
    jupyter_server: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
) -> None:
    server = await jupyter_server(notebook_dir.parent)
    sockets_before = set(os.listdir(channels.base_folder()))
    report, failures = [], []
    for number, case in enumerate(START_CASES):
        name = f"bad-{number}"
        result = dockerkernel("install", "--name", name, "--no-pull", *case.install)
        assert result.code == 0, result.err
        spec_file = jupyter_dirs / "data" / "kernels" / name / "kernel.json"
        spec = json.loads(spec_file.read_text())
        case.edit(spec["metadata"]["kernel_provisioner"]["config"])
        spec_file.write_text(json.dumps(spec))

        message = await message_of_start(server, name)
        report.append(f"{case.what}: {message}")
        left = docker_client.containers.list(all=True, filters={"label": f"{LABEL_KERNELSPEC}={name}"})
        if not matches(message, case.expected) or "\n" in message or left:
            failures.append(f"{case.what}: got {message!r}, expected {case.expected!r}, left {left}")
        assert (await server.api("GET", "/api/status", timeout=10))["kernels"] == 0  # still serving
    print("\n".join(report))
    assert not failures, "\n".join(failures)
    assert set(os.listdir(channels.base_folder())) <= sockets_before  # no kernel's sockets' folder left
    assert not os.path.exists("/no/such/dir")  # a missing volume source is never created


CLI_CASES = [
    ("name with spaces", ["install", "--image", "a/b", "--name", "my kernel", "--no-pull"],
     errors.INVALID_KERNEL_NAME.format(name="my kernel")),
    ("unicode name", ["install", "--image", "a/b", "--name", "ядро", "--no-pull"],
     errors.INVALID_KERNEL_NAME.format(name="ядро")),
    ("invalid gpus", ["install", "--image", "a/b", "--gpus", "lots", "--no-pull"],
     "Invalid dockerkernel setting in kernelspec 'a-b': invalid gpus value 'lots': …"),
    ("relative volume", ["install", "--image", "a/b", "--volume", "data:/data", "--no-pull"],
     "Invalid dockerkernel setting in kernelspec 'a-b': …"),
    ("env without a value", ["install", "--image", "a/b", "--env", "NOVALUE", "--no-pull"],
     errors.INVALID_ENV.format(value="NOVALUE")),
    ("run as a user name", ["install", "--image", "a/b", "--run-as", "root", "--no-pull"],
     "Invalid dockerkernel setting in kernelspec 'a-b': …"),
    ("unknown preset", ["install", "no-such-preset"], "Unknown preset 'no-such-preset': choose one of …"),
    ("nothing to install", ["install"], errors.INSTALL_NEEDS_IMAGE),
    ("missing Dockerfile", ["install", "--dockerfile", "/no/such/Dockerfile"],
     errors.DOCKERFILE_MISSING.format(path="/no/such/Dockerfile")),
    ("uninstall of an unknown kernel", ["uninstall", "nope"],
     errors.KERNELSPEC_NOT_FOUND.format(name="nope")),
]  # fmt: skip


@pytest.mark.parametrize(("what", "args", "expected"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_cli_inputs_each_get_one_clear_sentence(
    what: str, args: list[str], expected: str, dockerkernel: Any
) -> None:
    result = dockerkernel(*args)
    assert result.code == 1
    assert result.err.startswith("dockerkernel: ") and result.err.count("\n") == 1, result.err
    assert matches(result.err.removeprefix("dockerkernel: ").rstrip("\n"), expected), result.err
    assert dockerkernel("list").out.startswith("No dockerkernel kernelspecs")


async def test_missing_notebook_directory(
    install_test_kernel: Any, no_leftovers: None, tmp_path: Path
) -> None:
    km = AsyncKernelManager(kernel_name=install_test_kernel("py3"))
    with pytest.raises(DockerKernelError) as info:
        await km.start_kernel(cwd=str(tmp_path / "gone"))
    assert str(info.value) == errors.NOTEBOOK_DIR_MISSING.format(path=tmp_path / "gone")


async def test_a_uid_unknown_to_the_image_still_runs(
    install_test_kernel: Any, start_kernel: Any, notebook_dir: Path
) -> None:
    """Not an error: the kernel's home is dockerkernel's own, so no passwd entry is needed."""
    notebook_dir.chmod(0o777)  # writable for that uid
    kernel = await start_kernel(install_test_kernel("py3", "--run-as", "54321:54321"), cwd=str(notebook_dir))
    assert (await kernel.execute("import os; print(os.getuid(), os.getgid())")).stdout == "54321 54321\n"
