"""`dockerkernel doctor`: one checklist of what kernels need, each failed line saying how to fix it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import docker
from docker.types import DeviceRequest
from jupyter_core.paths import jupyter_config_path
from jupyter_server.extension.config import ExtensionConfigManager

from . import docker_ops, images, kernelspec
from .errors import DockerKernelError
from .settings import DEFAULT_KERNEL_CMD


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # what was found, or what is wrong and how to fix it


def run_checks() -> Iterator[Check]:
    """The checks, in order; later ones are skipped when the daemon cannot be reached."""
    try:
        client = docker_ops.get_client()
        with docker_ops._daemon_errors():
            version = client.version()
    except DockerKernelError as e:
        yield Check("Docker daemon", False, str(e))
        yield extension_check()
        return
    yield Check(
        "Docker daemon", True, f"reachable, Docker {version['Version']} (API {version['ApiVersion']})"
    )
    kernels = kernelspec.installed()
    yield from gpu_checks(client, kernels)
    for kernel in kernels:
        yield kernel_check(client, kernel)
    yield extension_check()


def gpu_checks(client: docker.DockerClient, kernels: list[kernelspec.InstalledKernel]) -> Iterator[Check]:
    if not docker_ops.has_nvidia_runtime(client):
        yield Check(
            "NVIDIA runtime",
            False,
            "the Docker daemon has none, so kernels cannot use GPUs (gpus 'auto' runs them on the CPU): "
            "install the NVIDIA Container Toolkit and restart Docker.",
        )
        return
    yield Check("NVIDIA runtime", True, "present")
    image = next((k.image for k in kernels if _present(client, k.image)), None)
    if image is None:
        yield Check("GPUs", False, "no installed kernel's image is present to run nvidia-smi in: pull one.")
        return
    status, out, err = docker_ops.run_once(
        client, image, ["nvidia-smi", "-L"], device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])]
    )
    gpus = [line for line in out.splitlines() if line.startswith("GPU ")]
    if status == 0 and gpus:
        yield Check("GPUs", True, f"{len(gpus)} visible to containers: " + "; ".join(gpus))
    else:
        reason = (err.strip().splitlines() or ["no GPU listed"])[-1]
        yield Check(
            "GPUs",
            False,
            f"nvidia-smi in a container failed ({reason}): check the NVIDIA driver with nvidia-smi on the "
            "host, then run `nvidia-ctk runtime configure --runtime=docker` and restart Docker.",
        )


def kernel_check(client: docker.DockerClient, kernel: kernelspec.InstalledKernel) -> Check:
    name = f"kernel {kernel.name}"
    if not _present(client, kernel.image):
        return Check(
            name, False, f"image {kernel.image} is not present: run `dockerkernel pull {kernel.name}`."
        )
    python = kernelspec.config_of(kernel.name).get("kernel_cmd", DEFAULT_KERNEL_CMD)[0]
    try:
        found = images.probe(client, kernel.image, python)
    except DockerKernelError as e:
        return Check(name, False, str(e))
    if found.ipykernel is None:
        return Check(
            name,
            False,
            f"image {kernel.image} has Python {found.python} but no ipykernel: reinstall with "
            f"`dockerkernel install --image {kernel.image} --name {kernel.name} --add-ipykernel --replace`.",
        )
    return Check(name, True, f"image {kernel.image}: Python {found.python}, ipykernel {found.ipykernel}")


def extension_check() -> Check:
    manager = ExtensionConfigManager(read_config_path=jupyter_config_path())
    if manager.enabled("dockerkernel"):  # type: ignore[no-untyped-call]
        return Check(
            "Server extension", True, "enabled: servers remove the containers of servers that are gone"
        )
    return Check(
        "Server extension",
        False,
        "not enabled, so containers of a crashed server stay until `dockerkernel prune`: "
        "run `jupyter server extension enable dockerkernel`.",
    )


def _present(client: docker.DockerClient, image: str) -> bool:
    try:
        return not docker_ops.needs_pull(client, image, "missing")
    except DockerKernelError:
        return False
