"""GPUs on an engine: whether it gives them, which kernels hold which, and the lock on choosing them."""

from __future__ import annotations

import logging
import pwd
import time

import docker
from docker.errors import APIError, NotFound

from .. import errors, gpus
from ..errors import DockerKernelError
from ..gpus import Gpu, GpuSupport, Holding
from ..labels import LABEL_GPU_LOCK, LABEL_GPUS, LABEL_KERNELSPEC, LABEL_OWNER_UID
from ..plan import GpuDevices
from .connect import cause, daemon_errors, state_of
from .containers import gpu_args, remove_container, run_once
from .kind import engine_of
from .owners import owner_alive, this_process_owner

log = logging.getLogger(__name__)

GPU_LOCK_NAME = "dockerkernel-gpu-lock"


GPU_LOCK_WAIT = 60.0  # seconds a start waits for another start's allocation


GPU_LOCK_STALE = 30.0  # a lock held this long by the same holder is left by a crashed process


def gpu_support(client: docker.DockerClient, image: str, *, fresh: bool = False) -> GpuSupport:
    """Whether the daemon gives containers GPUs, and which; asked once per daemon (``fresh``: again).

    The daemon itself is asked, whichever way it serves GPUs: a throwaway
    container of ``image`` (present on the daemon) with every GPU runs
    nvidia-smi, which the NVIDIA hook puts into GPU containers. That covers the
    NVIDIA runtime, the hook alone on dockerd's PATH (no runtime entry), and
    CDI, which is tried when the first way is refused.
    """
    state = state_of(client)
    with state.gpu_probe:
        if fresh or state.gpu_support is None:
            state.gpu_support = _probe_gpus(client, image)
        return state.gpu_support


def forget_gpu_support(client: docker.DockerClient) -> None:
    """Ask the daemon again at the next start: it refused GPUs that it was thought to give."""
    state_of(client).gpu_support = None


def _probe_gpus(client: docker.DockerClient, image: str) -> GpuSupport:
    podman = engine_of(client).podman
    # Podman serves GPUs through CDI only; a device request it would ignore.
    methods = [gpus.CDI] if podman else [gpus.NVIDIA, gpus.CDI]
    refusals = []
    for method in methods:
        try:
            status, out, err = run_once(
                client, image, gpus.NVIDIA_SMI_QUERY, **gpu_args(GpuDevices(method, podman=podman))
            )
        except APIError as e:  # the create itself refused the devices
            status, out, err = None, "", cause(e)
        if status is None and not _command_missing(err):
            refusals.append(f"{method}: {err.strip().splitlines()[-1] if err.strip() else 'refused'}")
            continue
        found = gpus.parse_nvidia_smi(out) if status == 0 else []
        if found:
            return GpuSupport(method, tuple(found), f"listed by nvidia-smi in image {image}")
        last = (err.strip().splitlines() or ["it printed no GPU"])[-1]
        return GpuSupport(method, (), f"nvidia-smi in image {image} did not list them: {last[:200]}")
    return GpuSupport("", (), "; ".join(refusals))


def _command_missing(reason: str) -> bool:
    return "executable file not found" in reason or ("exec:" in reason and "no such file" in reason)


def gpu_holdings(client: docker.DockerClient, inventory: tuple[Gpu, ...]) -> list[Holding]:
    """The GPUs that kernel containers hold: those created or running, of every user."""
    with daemon_errors():
        summaries = client.api.containers(all=True, filters={"label": [LABEL_GPUS]})
    holdings = []
    for summary in summaries:
        if summary.get("State") not in ("created", "running", "paused", "restarting"):
            continue  # an exited kernel holds nothing, even before its container is removed
        labels = summary.get("Labels") or {}
        holdings.append(
            Holding(
                ids=gpus.held_ids(labels.get(LABEL_GPUS, ""), inventory),
                user=user_name(labels.get(LABEL_OWNER_UID, "")),
                kernelspec=labels.get(LABEL_KERNELSPEC, "?"),
            )
        )
    return holdings


def user_name(uid: str) -> str:
    """A user's name on this host, from a uid label; the uid where it has none."""
    try:
        return pwd.getpwuid(int(uid)).pw_name
    except (KeyError, ValueError):
        return f"uid {uid}" if uid else "?"


class GpuLock:
    """A daemon-wide lock on GPU allocation: a container named GPU_LOCK_NAME, never started.

    Container names are unique per daemon, so its creation is an atomic claim
    that holds across server processes, launchers and users of one daemon.
    The holder lists the GPUs held, chooses, creates its kernel's container
    (whose label then holds the GPUs) and removes the lock. A lock whose
    holder is gone, or that stays for GPU_LOCK_STALE, is taken over.
    """

    def __init__(self, client: docker.DockerClient, image: str) -> None:
        self.client, self.image = client, image
        self.container_id: str | None = None

    def __enter__(self) -> GpuLock:
        deadline = time.monotonic() + GPU_LOCK_WAIT
        first_seen: dict[str, float] = {}
        delay = 0.01
        while self.container_id is None:
            with daemon_errors():
                try:
                    created = self.client.api.create_container(
                        self.image,
                        name=GPU_LOCK_NAME,
                        entrypoint=["true"],
                        network_disabled=True,
                        labels={LABEL_GPU_LOCK: "1", **this_process_owner().labels()},
                    )
                    self.container_id = str(created["Id"])
                    break
                except APIError as e:
                    if e.status_code != 409:
                        raise
                holder = self._holder()
            if holder is not None:
                holder_id, labels = holder
                seen = first_seen.setdefault(holder_id, time.monotonic())
                if owner_alive(labels) is False or time.monotonic() - seen > GPU_LOCK_STALE:
                    log.warning(
                        "Taking over the GPU allocation lock %s, left by a start that ended", holder_id[:12]
                    )
                    remove_container(self.client, holder_id)
                    continue
            if time.monotonic() > deadline:
                raise DockerKernelError(
                    errors.GPU_LOCK_TIMEOUT.format(name=GPU_LOCK_NAME, seconds=int(GPU_LOCK_WAIT))
                )
            time.sleep(delay)  # another start allocates: this takes tens of milliseconds
            delay = min(delay * 2, 0.2)
        return self

    def _holder(self) -> tuple[str, dict[str, str]] | None:
        try:
            attrs = self.client.api.inspect_container(GPU_LOCK_NAME)
        except NotFound:
            return None  # released since our create: try again at once
        return str(attrs["Id"]), attrs.get("Config", {}).get("Labels") or {}

    def release(self) -> None:
        """Let the next start allocate; called once this start's container exists, and on exit."""
        if self.container_id is not None:
            container_id, self.container_id = self.container_id, None
            remove_container(self.client, container_id)

    def __exit__(self, *exc: object) -> None:
        self.release()
