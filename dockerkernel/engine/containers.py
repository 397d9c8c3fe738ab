"""Kernel containers: the plan as Docker's create arguments, create, list, signal, remove, leave behind."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound, NotFound
from docker.models.containers import Container, _create_container_args
from docker.types import DeviceRequest, Mount

from .. import errors, gpus
from ..errors import DockerKernelError, GpusUnavailable, PortTaken
from ..labels import LABEL_KERNEL_ID, LABEL_OWNER_UID, LABEL_PROBE, POOL_NAME_PREFIX
from ..plan import ContainerPlan, GpuDevices
from .connect import api_timeout, cause, daemon_errors, gone_is_fine, state_of
from .networks import ensure_isolated_network
from .owners import owner_alive

log = logging.getLogger(__name__)


class StartCancelled(Exception):
    """The start was cancelled while it pulled the image: no container was made."""


def create_args(plan: ContainerPlan, network_id: str = "") -> dict[str, Any]:
    """The Docker SDK's ``containers.create`` keywords for ``plan``: where a plan becomes Docker's.

    ``network_id`` is the id of the user's isolated network, where the plan
    joins it. Binds that SELinux must relabel go as volume strings, which
    Docker's mount objects cannot say; the others as mount objects, so that a
    missing host folder is an error rather than a folder Docker makes.
    """
    mounts = [
        Mount(b.target, b.source, type="bind", read_only=b.read_only) for b in plan.binds if not b.relabel
    ]
    if plan.home is not None:
        mounts.append(Mount(plan.home.target, plan.home.name, type="volume", labels=dict(plan.home.labels)))
    kwargs: dict[str, Any] = {
        "image": plan.image,
        "command": list(plan.command),
        "name": plan.name,
        "labels": dict(plan.labels),
        "environment": dict(plan.environment),
        "working_dir": plan.working_dir,
        "mounts": mounts,
        "init": True,
        "detach": True,
        "security_opt": ["no-new-privileges"],
    }
    relabelled = [
        f"{b.source}:{b.target}:{'ro,' if b.read_only else ''}{b.relabel}" for b in plan.binds if b.relabel
    ]
    if relabelled:
        kwargs["volumes"] = relabelled
    if plan.user is not None:
        kwargs["user"] = plan.user
    if plan.groups:
        kwargs["group_add"] = list(plan.groups)
    if plan.userns:
        kwargs["userns_mode"] = plan.userns
    if plan.network in ("host", "none"):
        kwargs["network_mode"] = plan.network
    elif plan.network:
        kwargs["network"] = network_id or plan.network
    if plan.ports:
        kwargs["ports"] = {f"{port}/tcp": (plan.publish_ip, port) for port in plan.ports}
    if plan.devices is not None:
        kwargs.update(gpu_args(plan.devices))
    if plan.shm_size:
        kwargs["shm_size"] = plan.shm_size
    if plan.mem_limit:
        kwargs["mem_limit"] = plan.mem_limit
    if plan.nano_cpus:
        kwargs["nano_cpus"] = plan.nano_cpus
    kwargs.update(plan.options)
    return kwargs


def gpu_args(devices: GpuDevices) -> dict[str, Any]:
    """The create keywords that give a container ``devices``, as ``docker run --gpus`` does.

    Docker's NVIDIA device driver takes device requests; CDI names each device
    'nvidia.com/gpu=ID', in a device request of the 'cdi' driver on Docker and
    as a device on Podman.
    """
    if devices.method == gpus.NVIDIA:
        if devices.ids is not None:
            return {"device_requests": [DeviceRequest(device_ids=list(devices.ids), capabilities=[["gpu"]])]}
        return {"device_requests": [DeviceRequest(count=devices.count or -1, capabilities=[["gpu"]])]}
    names = [f"{gpus.CDI_KIND}={i}" for i in (devices.ids if devices.ids is not None else ["all"])]
    if devices.podman:
        return {"devices": names}
    return {"device_requests": [DeviceRequest(driver="cdi", device_ids=names)]}


def create(client: docker.DockerClient, plan: ContainerPlan) -> Container:
    """Create the planned container, and first its user's isolated network where it is missing."""
    if not plan.isolated:
        return _create_container(client, create_args(plan))
    try:
        return _create_container(
            client, create_args(plan, ensure_isolated_network(client, plan.network, plan.owner_uid))
        )
    except NotFound as e:
        if "network" not in cause(e):
            raise
        # Removed since this process made it (`docker network prune`, say): make it again.
        state_of(client).networks.pop(plan.network, None)
        return _create_container(
            client, create_args(plan, ensure_isolated_network(client, plan.network, plan.owner_uid))
        )


def _create_container(client: docker.DockerClient, kwargs: dict[str, Any]) -> Container:
    """``client.containers.create(**kwargs)``, also for user-namespace modes that only Podman has.

    The SDK accepts no userns_mode but 'host'; Podman's 'keep-id' goes into
    the host config that the SDK builds from the other arguments.
    """
    userns_mode = kwargs.get("userns_mode")
    if userns_mode in (None, "host"):
        return client.containers.create(**kwargs)
    others = {k: v for k, v in kwargs.items() if k != "userns_mode"}
    create_kwargs = _create_container_args({**others, "version": client.api._version})
    create_kwargs["host_config"]["UsernsMode"] = userns_mode
    created = client.api.create_container(**create_kwargs)
    return client.containers.get(created["Id"])


def start_error(plan: ContainerPlan, e: APIError) -> DockerKernelError:
    reason = cause(e)
    if "could not select device driver" in reason and "gpu" in reason:
        return GpusUnavailable(errors.GPUS_UNAVAILABLE.format(gpus=plan.gpus))
    if "executable file not found" in reason or ("exec:" in reason and "no such file" in reason):
        command = plan.command[0]
        return DockerKernelError(errors.KERNEL_CMD_NOT_FOUND.format(image=plan.image, command=command))
    if "address already in use" in reason or "port is already allocated" in reason:
        return PortTaken(errors.PORT_TAKEN.format(reason=reason))
    if "bind source path does not exist" in reason:  # on another Docker host; this one's were checked
        path = reason.rpartition(":")[2].strip()
        return DockerKernelError(errors.FOLDER_NOT_ON_HOST.format(path=path, host=plan.host))
    if isinstance(e, ImageNotFound):
        return DockerKernelError(errors.IMAGE_UNAVAILABLE.format(image=plan.image, reason=reason))
    return DockerKernelError(errors.CONTAINER_START_FAILED.format(image=plan.image, reason=reason))


def run_once(
    client: docker.DockerClient, image: str, argv: list[str], **create_kwargs: Any
) -> tuple[int | None, str, str]:
    """Run ``argv`` in a throwaway container of ``image``, with no network.

    Returns the exit status (None when the command could not be started at
    all, e.g. it does not exist), stdout and stderr. The container is removed.
    """
    container: Container | None = None
    with daemon_errors():
        try:
            container = client.containers.create(
                image, entrypoint=argv, network_disabled=True, labels={LABEL_PROBE: "1"}, **create_kwargs
            )
            try:
                container.start()
            except APIError as e:
                return None, "", cause(e)
            status = int(container.wait(timeout=api_timeout())["StatusCode"])
            out = container.logs(stdout=True, stderr=False).decode(errors="replace")
            err = container.logs(stdout=False, stderr=True).decode(errors="replace")
            return status, out, err
        finally:
            if container is not None:
                remove_container(client, container.id)


def signal_container(client: docker.DockerClient, container_id: str, signum: int) -> None:
    """Send a signal to the kernel; a container that has exited or is gone is fine."""
    with daemon_errors(), gone_is_fine():
        client.api.kill(container_id, signal=signum)


def last_log_line(client: docker.DockerClient, container_id: str) -> str:
    """The last line a container wrote, for telling why it exited; 'no output' when there is none."""
    with daemon_errors(), gone_is_fine():
        lines = client.api.logs(container_id, tail=20).decode(errors="replace").strip().splitlines()
        return lines[-1].strip()[:300] if lines else "no output"
    return "no output"


def remove_container(client: docker.DockerClient, container_id: str) -> None:
    """Remove a kernel container, running or not; one already gone is fine."""
    with daemon_errors(), gone_is_fine():
        client.api.remove_container(container_id, force=True)


def leave_behind(client: docker.DockerClient, container_id: str) -> None:
    """Give up on a container that could not be removed, its daemon out of reach, for now.

    Its watch resolves to -1 at its next try; the container is removed at the
    next kernel start on that daemon (remove_left_behind), or by the reaper.
    """
    state = state_of(client)
    stop = state.watches.get(container_id)
    if stop is not None:
        stop.set()
    state.left_behind.add(container_id)


def remove_left_behind(client: docker.DockerClient) -> None:
    """Remove the containers that could not be removed earlier, now that the daemon answers."""
    left = state_of(client).left_behind
    for container_id in list(left):
        remove_container(client, container_id)
        left.discard(container_id)
        log.info("Removed container %s, left behind while the daemon was out of reach", container_id[:12])


@dataclass(frozen=True)
class Listed:
    """A container as the engine lists it.

    Listing inspects nothing, so a container removed meanwhile cannot fail it.
    """

    id: str
    status: str
    labels: dict[str, str]
    image: str
    name: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:12]


def kernel_containers(client: docker.DockerClient, **label_filters: str) -> list[Listed]:
    """All dockerkernel containers, running or not, optionally filtered by label values."""
    labels = [LABEL_KERNEL_ID] + [f"{k}={v}" for k, v in label_filters.items()]
    with daemon_errors():
        found = client.api.containers(all=True, filters={"label": labels})
    return [
        Listed(
            c["Id"], c["State"], c.get("Labels") or {}, c.get("Image", ""), (c.get("Names") or [""])[0][1:]
        )
        for c in found
    ]


def waiting_in_pool(client: docker.DockerClient, **label_filters: str) -> list[Listed]:
    """The warm-pool kernels that no start has taken, filtered by label values as kernel_containers()."""
    return [c for c in kernel_containers(client, **label_filters) if c.name.startswith(POOL_NAME_PREFIX)]


def rename_container(client: docker.DockerClient, container_id: str, name: str) -> None:
    with daemon_errors():
        client.api.rename(container_id, name)


def prune_orphans(client: docker.DockerClient) -> list[str]:
    """Remove this user's kernel containers whose owning server or launcher is gone; their ids.

    Only this user's containers started on this host are judged: another
    user's owner, or one elsewhere, cannot be checked (see owner_alive).
    """
    removed = []
    for container in kernel_containers(client, **{LABEL_OWNER_UID: str(os.getuid())}):
        if owner_alive(container.labels) is False:
            remove_container(client, container.id)
            removed.append(str(container.id))
    return removed
