"""A kernel container's start, in three steps that go one way: gather, plan, act.

1. gather() asks the engine and this machine, in one place, everything the
   plan needs to know: the engine's kind, the image (its inspection, and its
   passwd and group where the kernel has a user of its own), the GPUs that
   other kernels hold, read under the engine's GPU lock, and whether the
   kernel's home volume exists. These are the Facts.
2. plan.finish() completes the plan drafted from the settings with those
   facts: a pure function, unit-tested without an engine.
3. act() creates and starts exactly what the plan says: it writes the files
   that go in through the kernel's folder, makes the user's network where it
   is missing, creates the container, copies the rest into it and starts it.

start_kernel() runs the three after the image is on the engine, for the
container backend, the warm pool (through that backend) and the launcher.
The engine package below never calls back into planning. Everything here
blocks: the provisioner calls it from a thread.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import nullcontext
from typing import Any

import docker
from docker.errors import APIError

from . import channels, errors
from .channels import Channels
from .channels import choose as choose_channels
from .engine.connect import daemon_errors, get_client, state_of
from .engine.containers import StartCancelled, create, remove_container, remove_left_behind, start_error
from .engine.exits import watch_container
from .engine.gpus import GpuLock, forget_gpu_support, gpu_holdings, gpu_support
from .engine.homes import volume_exists
from .engine.images import image_accounts, inspect_image, pull_image, pull_wanted
from .engine.kind import engine_of
from .errors import DockerKernelError, GpusUnavailable
from .gpus import GpuSupport
from .kernel_files import files_archive, host_path
from .plan import ContainerPlan, Facts, finish, for_engine
from .pulls import PullLog
from .settings import DockerSettings

log = logging.getLogger(__name__)

KernelLog = logging.Logger | logging.LoggerAdapter[Any]


def channels_for(settings: DockerSettings) -> Channels:
    """How a kernel of ``settings`` is reached: ipc sockets where its engine can carry them (see channels.py).

    Asks a local engine what it is, once per engine.
    """
    host = settings.host()
    where = ""
    if settings.backend == "swarm":
        where = "the kernel runs on a swarm"
    elif host.remote:
        where = f"the engine is on another host ({host.url})"
    elif not host.url and os.environ.get("DOCKER_HOST", "").startswith(("tcp://", "ssh://")):
        where = f"the engine is on another host (DOCKER_HOST={os.environ['DOCKER_HOST']})"
    if where or settings.channels == "tcp":
        return choose_channels(settings.channels, where=where, engine_local=False, user_can_use=True)
    engine = engine_of(get_client(host))
    runs_as_you = settings.user == "host" or (
        not engine.rootless and settings.user.partition(":")[0] == str(os.getuid())
    )
    return choose_channels(settings.channels, where="", engine_local=engine.local, user_can_use=runs_as_you)


def start_kernel(
    draft: ContainerPlan,
    pull_policy: str,
    kernel_log: KernelLog = log,
    cancelled: threading.Event | None = None,
) -> tuple[str, Future[int]]:
    """Pull the image as ``pull_policy`` says, then gather, plan and act; the container and its exit.

    A pull's progress and notices about the kernel go to ``kernel_log``. Once
    ``cancelled`` is set, no container is created. A GPU count is chosen
    under the engine's GPU lock, held until the container exists, so that two
    starts never choose the same GPU. Returns the container id and a future
    for its exit status.
    """
    client = get_client(draft.host)
    remove_left_behind(client)
    image = ensure_image(client, draft, pull_policy, kernel_log)
    if cancelled is not None and cancelled.is_set():
        raise StartCancelled(draft.image)
    with state_of(client).start_slots:
        support = None
        if draft.gpus != "none":
            support = gpu_support(client, draft.image).with_inventory(draft.gpu_inventory)
        lock = GpuLock(client, draft.image) if draft.gpus.isdigit() and support and support.gpus else None
        with lock or nullcontext():
            plan = finish(draft, gather(client, draft, support, image))
            if plan.notice:
                (kernel_log.warning if plan.notice_stream == "stderr" else kernel_log.info)("%s", plan.notice)
            try:
                container_id = act(client, plan, created=lock.release if lock else None)
            except GpusUnavailable:
                forget_gpu_support(client)  # it refused after all: ask again next time
                raise
    return container_id, watch_container(client, container_id)


def ensure_image(
    client: docker.DockerClient, plan: ContainerPlan, pull_policy: str, kernel_log: KernelLog
) -> dict[str, Any] | None:
    """Have the plan's image on the engine, pulled as ``pull_policy`` says, its progress in ``kernel_log``.

    Returns the engine's inspection of the image where it was there already,
    for gather(); None after a pull.
    """
    if plan.image.startswith("sha256:"):  # pinned to an image built here: no registry has it
        found = inspect_image(client, plan.image)
        if found is None:
            raise DockerKernelError(
                errors.PINNED_IMAGE_GONE.format(kernel=plan.kernel_name, image=plan.image)
            )
        return found
    found = None if pull_policy == "always" else inspect_image(client, plan.image)
    if not pull_wanted(found is not None, plan.image, pull_policy):
        return found
    progress = PullLog(plan.image, kernel_log)
    pull_image(client, plan.image, progress)
    progress.finished()
    return None


def gather(
    client: docker.DockerClient,
    draft: ContainerPlan,
    gpus: GpuSupport | None,
    image: dict[str, Any] | None = None,
) -> Facts:
    """What finishing ``draft`` needs to know of the engine and this machine; ``gpus`` how the engine
    gives GPUs, where the kernel asks for them (then called under the engine's GPU lock), and
    ``image`` the engine's inspection of the image where ensure_image() made it already."""
    engine = engine_of(client)
    try:
        with daemon_errors():
            image = image or client.api.inspect_image(draft.image)
            # A user of its own gets passwd and group entries, added to the image's.
            has_user = for_engine(draft, engine).identity is not None
            accounts = image_accounts(client, str(image["Id"])) if has_user else None
            # A home volume that exists had its owner set at its first start.
            home_exists = (
                draft.home is not None
                and draft.channels.carries_files
                and volume_exists(client, draft.home.name)
            )
    except APIError as e:
        raise start_error(draft, e) from e
    return Facts(
        engine=engine,
        image=image,
        started=datetime.datetime.now(datetime.timezone.utc),
        docker_host=draft.host.url or os.environ.get("DOCKER_HOST", "") or "local",
        accounts=accounts,
        gpus=gpus,
        holdings=tuple(gpu_holdings(client, gpus.gpus)) if gpus is not None and gpus.available else (),
        home_exists=home_exists,
    )


def act(client: docker.DockerClient, plan: ContainerPlan, created: Callable[[], None] | None = None) -> str:
    """Put the kernel's files in place, create the planned container and start it; its id.

    ``created`` is called once the container exists. On any failure the
    container is removed again and a DockerKernelError says why.
    """
    for file in plan.files.in_folder:
        channels.write_private(host_path(plan.channels, file), file.data or b"", file.mode)
    for file in plan.files.mounted:
        channels.store_account_file(file.source, file.data or b"")
    container = None
    try:
        with daemon_errors():
            container = create(client, plan)
            if created is not None:
                created()
            if plan.files.copied:
                container.put_archive("/", files_archive(plan, plan.files.copied))
            container.start()
            return str(container.id)
    except BaseException as e:
        if container is not None:
            remove_container(client, container.id)
        if isinstance(e, APIError):
            raise start_error(plan, e) from e
        if isinstance(e, TypeError):
            # The SDK rejects an unknown keyword: it came from container_options.
            raise DockerKernelError(errors.CONTAINER_START_FAILED.format(image=plan.image, reason=e)) from e
        raise
