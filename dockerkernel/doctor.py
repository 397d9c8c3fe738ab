"""`dockerkernel doctor`: one checklist of what kernels need, each failed line saying how to fix it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import docker
from jupyter_core.paths import jupyter_config_path
from jupyter_server.extension.config import ExtensionConfigManager

from . import channels, gpus, images, kernelspec
from .engine.connect import daemon_errors, get_client
from .engine.gpus import gpu_holdings, gpu_support
from .engine.images import needs_pull
from .errors import DockerKernelError
from .hosts import DockerHost
from .launch import channels_for
from .settings import DEFAULT_KERNEL_CMD, DockerSettings
from .validation import make_settings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # what was found, or what is wrong and how to fix it


def run_checks() -> Iterator[Check]:
    """The checks, in order: each engine that kernelspecs use, then the server extension."""
    kernels = kernelspec.installed()
    for host in kernelspec.docker_hosts(kernels):
        own = [k for k in kernels if k.host == host]
        # GPUs where a kernel asks for them; on the default engine also where its kernels, or no
        # kernel at all, might.
        ask_gpus = any(k.gpus != "none" for k in own) or (not host.url and (bool(own) or not kernels))
        yield from engine_checks(host, own, ask_gpus)
    yield channels_check()
    yield extension_check()


def engine_checks(
    host: DockerHost, kernels: list[kernelspec.InstalledKernel], ask_gpus: bool
) -> Iterator[Check]:
    """The engine ``host``, its GPUs and its kernels' images; the rest is skipped when it is unreachable."""
    name = f"Docker daemon {host.url}" if host.url else "Docker daemon"
    try:
        client = get_client(host)
        with daemon_errors():
            version = client.version()
    except DockerKernelError as e:
        yield Check(name, False, str(e))
        return
    yield Check(name, True, f"reachable, Docker {version['Version']} (API {version['ApiVersion']})")
    if ask_gpus:
        yield from gpu_checks(client, kernels)
    for kernel in kernels:
        yield kernel_check(client, kernel)


METHODS = {gpus.NVIDIA: "Docker's NVIDIA device driver", gpus.CDI: "CDI"}


def gpu_checks(client: docker.DockerClient, kernels: list[kernelspec.InstalledKernel]) -> Iterator[Check]:
    """Whether the daemon gives containers GPUs, and each GPU with the kernels that hold it."""
    wanting = sorted(kernels, key=lambda k: k.gpus == "none")  # a GPU kernel's image first
    image = next((k.image for k in wanting if _present(client, k.image)), None)
    if image is None:
        yield Check(
            "GPUs", False, "no installed kernel's image is present to ask the daemon for GPUs with: pull one."
        )
        return
    support = gpu_support(client, image, fresh=True)
    if not support.available:
        yield Check(
            "GPUs",
            False,
            f"the Docker daemon cannot give containers GPUs ({support.detail}), so kernels cannot "
            "use GPUs (gpus 'auto' runs them on the CPU): install the NVIDIA Container Toolkit "
            "and restart Docker.",
        )
        return
    if not support.gpus:
        yield Check(
            "GPUs",
            False,
            f"the Docker daemon gives containers GPUs through {METHODS[support.method]}, but "
            f"{support.detail}, so kernels asking for a count get GPUs that may be taken: "
            "set gpu_inventory to the host's GPU ids.",
        )
        return
    yield Check("GPUs", True, f"{len(support.gpus)} through {METHODS[support.method]}, {support.detail}")
    holdings = gpu_holdings(client, support.gpus)
    for gpu in support.gpus:
        who = [h.describe() for h in holdings if gpu.id in h.ids]
        held = f"held by {', '.join(who)}" if who else "free"
        yield Check(
            f"GPU {gpu.id}", True, f"{gpu.name or '?'}, {gpu.memory_mib or '?'} MiB, {gpu.uuid}; {held}"
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
    try:
        settings = make_settings(DockerSettings, kernelspec.config_of(kernel.name), kernel.name)
        carried = channels_for(settings).describe()
    except DockerKernelError as e:
        return Check(name, False, str(e))
    return Check(
        name,
        True,
        f"image {kernel.image}: Python {found.python}, ipykernel {found.ipykernel}; channels {carried}",
    )


def channels_check() -> Check:
    """The folder that holds this user's kernel sockets: private, and short enough."""
    try:
        folder = channels.base_folder()
    except DockerKernelError as e:
        return Check("Private channels", False, str(e))
    return Check("Private channels", True, f"kernel sockets in {folder}, yours alone (mode 0700)")


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
        return not needs_pull(client, image, "missing")
    except DockerKernelError:
        return False
