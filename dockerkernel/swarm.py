"""Kernels as Docker Swarm services: one service per kernel, placed by the swarm.

The container plan becomes a service with restart policy 'none', so that the
swarm never restarts a kernel behind Jupyter's back, and one replica. Its
connection file reaches the task as a Swarm secret of its own, which a few
lines of sh copy to a writable tmpfs before the kernel starts (ipykernel
before 6.25 rewrites its connection file, and a secret is read-only): no
launcher in the image. The kernel's ports are published in host mode on the
node the task lands on, never through the routing mesh (which drops idle
connections), with CurveZMQ on: the server connects to that node's address.

Like the engine package's, these are synchronous calls over the Docker SDK, to the
manager that ``docker_host`` names; the provisioner runs them in threads.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import docker
from docker.errors import APIError, NotFound
from docker.types import EndpointSpec, Mount, Resources, RestartPolicy, SecretReference
from docker.utils import parse_bytes

from . import errors
from .engine.connect import cause, daemon_errors
from .engine.containers import StartCancelled
from .engine.owners import owner_alive
from .errors import DockerKernelError
from .kernel_files import CONTAINER_CONNECTION_FILE
from .labels import LABEL_KERNEL_ID, LABEL_OWNER_UID
from .plan import PORT_NAMES, ContainerPlan
from .settings import DockerSettings

log = logging.getLogger(__name__)

SECRET_FILE = "dockerkernel-connection"  # its name under /run/secrets in the task
RUN_DIR = CONTAINER_CONNECTION_FILE.rsplit("/", 1)[0]
SWARM_HOME = f"{RUN_DIR}/home"  # on the tmpfs: a node's volumes are not the next start's
POLL = 0.5  # seconds between looks at a task's state
# A task in one of these states will not run (again).
ENDED = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}

# Run by the image's sh, before the kernel: copy the connection file where the kernel may rewrite it.
PRELUDE = (
    f'umask 077 && cp /run/secrets/{SECRET_FILE} {CONTAINER_CONNECTION_FILE} && mkdir -p "$HOME" && exec "$@"'
)
# And first, for a GPU kernel: the GPUs that the swarm gave the task, named as for `docker run --gpus`.
# They are in DOCKER_RESOURCE_<KIND>, a name that sh does not pass on (it has a '-'): read from
# sh's own environment.
GPU_PRELUDE = (
    "g=$(tr '\\0' '\\n' < /proc/$$/environ | sed -n 's/^DOCKER_RESOURCE_{kind}=//p') && "
    '{{ [ -z "$g" ] || export NVIDIA_VISIBLE_DEVICES="$g"; }} && '
)


@dataclass(frozen=True)
class Placed:
    """A kernel's service, once its task runs."""

    service_id: str
    node_address: str  # where its ports are published
    container_id: str  # its task's container, on that node
    node_id: str


def refusal(settings: DockerSettings, *, installing: bool = True) -> tuple[str, str] | None:
    """The first setting that a Swarm service cannot honour as set, and what the swarm can do instead.

    Every setting is in SWARM_HONOURS or here: a service has no device
    requests, no container options, no engine-side GPU list and no
    per-user network, and a node's volumes are not the next start's node's.
    A kernelspec installed before this check, with the default home
    ('volume'), still starts (``installing`` False): its home was always the
    task's, as `install --swarm` now writes.
    """
    if settings.gpus not in ("none",) and not settings.gpus.isdigit():
        return "gpus", "'none' or a count (the swarm reserves GPUs as generic resources, see gpu_resource)"
    if settings.gpu_inventory:
        return "gpu_inventory", "empty only (the nodes advertise their GPUs to the swarm)"
    if settings.container_options:
        return "container_options", "empty only (they are a container's options, not a service's)"
    if settings.home != "container" and installing:
        return (
            "home",
            "'container' only (a home in the kernel's task: a node's volume is not the next node's)",
        )
    if settings.network != "isolated":
        return "network", "'isolated' only (its ports are published on its node, with CurveZMQ)"
    if settings.pull_policy != "missing":
        return "pull_policy", "'missing' only (each node pulls the image it lacks)"
    return None


# The settings that a Swarm service honours whatever their value (see service_args); the others are
# honoured for the values refusal() allows, and refused for any other.
SWARM_HONOURS = frozenset(
    ["image", "pinned_image", "kernel_cmd", "environment", "mount", "volumes", "path_map", "user",
     "mem_limit", "cpus", "shm_size", "when_gpus_busy", "channels", "docker_host", "tls_ca", "tls_cert",
     "tls_key", "backend", "constraints", "gpu_resource", "start_timeout", "warm_pool", "warm_pool_idle"]
)  # fmt: skip
SWARM_REFUSES = frozenset(["gpus", "gpu_inventory", "container_options", "home", "network", "pull_policy"])


def service_args(
    plan: ContainerPlan, secret: SecretReference, constraints: list[str], gpu_kind: str
) -> dict[str, Any]:
    """The Docker SDK's ``services.create`` keywords for ``plan``: where a plan becomes a service.

    The same image, command, user, groups, folders, environment, labels and
    limits; the shared memory as a tmpfs at /dev/shm. What a service cannot
    have was refused at install (see refusal()).
    """
    environment = {**plan.environment, "HOME": SWARM_HOME}
    mounts = [Mount(b.target, b.source, type="bind", read_only=b.read_only) for b in plan.binds]
    mounts.append(Mount(target=RUN_DIR, source=None, type="tmpfs", tmpfs_mode=0o1777))
    if plan.shm_size:
        mounts.append(Mount(target="/dev/shm", source=None, type="tmpfs", tmpfs_size=plan.shm_size))
    ports = {int(p): (int(p), "tcp", "host") for p in (plan.connection[name] for name in PORT_NAMES)}
    resources: dict[str, Any] = {}
    if plan.mem_limit:
        resources["mem_limit"] = parse_bytes(plan.mem_limit)  # a service's limit is in bytes only
    if plan.nano_cpus:
        resources["cpu_limit"] = plan.nano_cpus
    prelude = PRELUDE
    if plan.gpus.isdigit():
        resources["generic_resources"] = {gpu_kind: int(plan.gpus)}
        prelude = GPU_PRELUDE.format(kind=gpu_kind) + prelude
    kwargs: dict[str, Any] = {
        "image": plan.image,
        "args": ["sh", "-c", prelude, "sh", *plan.command],
        "name": plan.name,
        "labels": dict(plan.labels),
        "container_labels": dict(plan.labels),
        "env": [f"{k}={v}" for k, v in environment.items()],
        "workdir": plan.working_dir,
        "mounts": mounts,
        "secrets": [secret],
        "init": True,
        "restart_policy": RestartPolicy(condition="none"),
        "endpoint_spec": EndpointSpec(mode="dnsrr", ports=ports),
        "constraints": list(constraints),
    }
    if resources:
        kwargs["resources"] = Resources(**resources)
    if plan.user is not None:
        kwargs["user"] = plan.user
        kwargs["groups"] = list(plan.groups)
    return kwargs


def place_kernel(
    client: docker.DockerClient,
    plan: ContainerPlan,
    constraints: list[str],
    gpu_kind: str,
    timeout: float,
    cancelled: threading.Event,
) -> Placed:
    """Create the kernel's secret and service and wait until its task runs, at most ``timeout`` s.

    A task that cannot be placed, or fails to start, is one sentence; the
    service and secret are then removed again.
    """
    uid, gid = plan.file_owner or (0, 0)
    name = plan.name
    with daemon_errors():
        try:
            secret = client.secrets.create(
                name=f"{name}-{secrets.token_hex(4)}",
                data=json.dumps(plan.connection).encode(),
                labels=dict(plan.labels),
            )
        except APIError as e:
            raise _swarm_error(e) from e
        reference = SecretReference(
            secret.id, secret.name, filename=SECRET_FILE, uid=str(uid), gid=str(gid), mode=0o400
        )
        try:
            service = client.services.create(**service_args(plan, reference, constraints, gpu_kind))
        except BaseException as e:
            _remove_secret(client, secret.id)
            if isinstance(e, APIError):
                raise DockerKernelError(
                    errors.CONTAINER_START_FAILED.format(image=plan.image, reason=cause(e))
                ) from e
            raise
    try:
        return _wait_until_running(client, service.id, plan, timeout, cancelled)
    except BaseException:
        remove_kernel(client, service.id)
        raise


def _wait_until_running(
    client: docker.DockerClient,
    service_id: str,
    plan: ContainerPlan,
    timeout: float,
    cancelled: threading.Event,
) -> Placed:
    deadline = time.monotonic() + timeout
    said = ""
    while True:
        task = _task(client, service_id)
        if task is not None:
            status = task["Status"]
            state = status["State"]
            said = status.get("Err") or status.get("Message") or state
            if state == "running":
                node_id = task["NodeID"]
                container_id = status.get("ContainerStatus", {}).get("ContainerID", "")
                return Placed(service_id, node_address(client, node_id), container_id, node_id)
            if state in ENDED:
                raise DockerKernelError(errors.SWARM_TASK_FAILED.format(image=plan.image, reason=said))
        if time.monotonic() > deadline:
            raise DockerKernelError(errors.SWARM_NOT_PLACED.format(timeout=f"{timeout:g}", reason=said))
        if cancelled.wait(POLL):
            raise StartCancelled(plan.image)


def _task(client: docker.DockerClient, service_id: str) -> dict[str, Any] | None:
    """The service's newest task, or None before it has one."""
    with daemon_errors():
        tasks = client.api.tasks(filters={"service": service_id})
    return max(tasks, key=lambda t: t["CreatedAt"]) if tasks else None


def task_state(client: docker.DockerClient, service_id: str) -> str:
    """The state of the service's newest task: 'running', 'pending', 'failed'..."""
    task = _task(client, service_id)
    return str(task["Status"]["State"]) if task is not None else "no task"


def node_address(client: docker.DockerClient, node_id: str) -> str:
    """The address that a node advertises to the swarm: where its host-mode ports are."""
    with daemon_errors():
        node = client.api.inspect_node(node_id)
    address = str(node.get("Status", {}).get("Addr", ""))
    if address in ("", "0.0.0.0"):  # a manager may report this; its manager address is right
        address = str(node.get("ManagerStatus", {}).get("Addr", "")).rsplit(":", 1)[0]
    return address


def watch_task(client: docker.DockerClient, service_id: str) -> tuple[Future[int], threading.Event]:
    """A future for the exit status of the service's task (-1 when it is gone), and an event that
    ends the watch. A manager that cannot be reached for a while is not an exit."""
    future: Future[int] = Future()
    future.set_running_or_notify_cancel()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(POLL):
            try:
                task = _task(client, service_id)
            except DockerKernelError:
                continue  # lost sight of it: look again
            except NotFound:
                break
            if task is None:
                break
            status = task["Status"]
            if status["State"] in ENDED:
                future.set_result(int(status.get("ContainerStatus", {}).get("ExitCode", -1)))
                return
        future.set_result(-1)

    threading.Thread(target=watch, name=f"dockerkernel-task-{service_id[:12]}", daemon=True).start()
    return future, stop


def remove_kernel(client: docker.DockerClient, service_id: str, wait: float = 30) -> None:
    """Remove the kernel's service, which stops its task, and then its secret.

    Where the task ran on the node that ``client`` talks to, waits up to
    ``wait`` s for its container to be gone, as for a container kernel; another
    node removes its own in its own time.
    """
    with daemon_errors():
        try:
            service = client.api.inspect_service(service_id)
            task = _task(client, service_id)
        except NotFound:
            return
        spec = service["Spec"]["TaskTemplate"]["ContainerSpec"]
        try:
            client.api.remove_service(service_id)
        except NotFound:
            pass
        for secret in spec.get("Secrets", []):
            _remove_secret(client, secret["SecretID"])
        container_id = (task or {}).get("Status", {}).get("ContainerStatus", {}).get("ContainerID")
        if not container_id or (task or {}).get("NodeID") != client.info()["Swarm"].get("NodeID"):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                client.api.inspect_container(container_id)
            except NotFound:
                return
            time.sleep(POLL / 5)


def _remove_secret(client: docker.DockerClient, secret_id: str) -> None:
    try:
        client.api.remove_secret(secret_id)
    except NotFound:
        pass


def last_log_line(client: docker.DockerClient, service_id: str) -> str:
    with daemon_errors():
        try:
            lines = b"".join(client.api.service_logs(service_id, stdout=True, stderr=True, tail=5))
        except APIError as e:
            return cause(e)
    text = lines.decode(errors="replace").strip().splitlines()
    return text[-1] if text else "no output"


def kernel_services(client: docker.DockerClient, **label_filters: str) -> list[dict[str, Any]]:
    """The kernel services of the swarm that ``client``'s engine manages; none where it manages none."""
    labels = [LABEL_KERNEL_ID] + [f"{k}={v}" for k, v in label_filters.items()]
    with daemon_errors():
        if client.info().get("Swarm", {}).get("ControlAvailable") is not True:
            return []
        return list(client.api.services(filters={"label": labels}))


def prune_orphans(client: docker.DockerClient, uid: int) -> list[str]:
    """Remove ``uid``'s kernel services whose server or launcher is gone; their ids."""
    removed = []
    for service in kernel_services(client, **{LABEL_OWNER_UID: str(uid)}):
        if owner_alive(service["Spec"].get("Labels", {})) is False:
            remove_kernel(client, service["ID"])
            removed.append(str(service["ID"]))
    return removed


def _swarm_error(e: APIError) -> DockerKernelError:
    reason = cause(e)
    if "not a swarm manager" in reason or "This node is not a swarm manager" in reason:
        return DockerKernelError(errors.NOT_A_SWARM_MANAGER.format(reason=reason))
    return DockerKernelError(errors.DOCKER_UNREACHABLE.format(reason=reason))
