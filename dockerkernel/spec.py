"""The container for one kernel, as data: what to pass to Docker, and the files to put in it.

Pure functions only, so that the provisioner and the host-side launcher build
exactly the same container, and so that unit tests can check every option
without a Docker engine.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from docker.types import DeviceRequest

from . import errors
from .errors import DockerKernelError
from .settings import DockerSettings, parse_volume

# Where a kernel's own files live inside its container. The connection file is
# copied in rather than bind-mounted: ipykernel rewrites it after binding, and
# a copy in the container's own filesystem can belong to whichever user the
# kernel runs as without opening up a directory on the host.
CONTAINER_DIR = "/dockerkernel"
CONTAINER_CONNECTION_FILE = f"{CONTAINER_DIR}/run/kernel.json"
CONTAINER_HOME = f"{CONTAINER_DIR}/home"
# Run by IPython at start-up when HOME is CONTAINER_HOME: shows the plan's notice.
CONTAINER_STARTUP_DIR = f"{CONTAINER_HOME}/.ipython/profile_default/startup"
NOTICE_STARTUP_FILE = f"{CONTAINER_STARTUP_DIR}/00-dockerkernel-notice.py"

GPUS_AUTO_ON_CPU = (
    "dockerkernel: this kernel runs on the CPU: it asks for GPUs with gpus 'auto', but the "
    "Docker daemon has no NVIDIA runtime. Install the NVIDIA Container Toolkit and restart "
    "Docker to use the GPUs."
)

# Python 2 and 3, IPython 5 and later: print the notice at the first execution, once.
_NOTICE_SCRIPT = """\
def _dockerkernel_notice(text):
    import sys
    shell = get_ipython()

    def show(*args):
        sys.stderr.write(text + "\\n")
        shell.events.unregister("pre_run_cell", show)

    shell.events.register("pre_run_cell", show)


_dockerkernel_notice({text!r})
del _dockerkernel_notice
"""

LABEL_PREFIX = "org.dockerkernel"
LABEL_KERNEL_ID = f"{LABEL_PREFIX}.kernel-id"
LABEL_KERNELSPEC = f"{LABEL_PREFIX}.kernelspec"
LABEL_OWNER_HOST = f"{LABEL_PREFIX}.owner-host"
LABEL_OWNER_PID = f"{LABEL_PREFIX}.owner-pid"
LABEL_OWNER_STARTED = f"{LABEL_PREFIX}.owner-started"
LABEL_PROBE = f"{LABEL_PREFIX}.probe"  # a throwaway container that checks an image

PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")

# Variables a kernel gets from the server besides its kernelspec's own. The rest
# of the server's environment stays out: a leaked JPY_PARENT_PID makes ipykernel
# exit at once under an init process, the host's PATH breaks images, and secrets
# would end up in the container's configuration.
PASSED_THROUGH = ("JPY_SESSION_NAME",)

# Linux starts no process whose environment is larger (ARG_MAX is commonly 2 MiB,
# shared with the arguments), nor one with a single variable over 128 KiB.
ENV_TOTAL_LIMIT = 1024 * 1024
ENV_VALUE_LIMIT = 128 * 1024


@dataclass(frozen=True)
class Owner:
    """The process that a kernel container belongs to: a Jupyter server or a launcher."""

    host: str
    pid: int
    started: str

    def labels(self) -> dict[str, str]:
        return {
            LABEL_OWNER_HOST: self.host,
            LABEL_OWNER_PID: str(self.pid),
            LABEL_OWNER_STARTED: self.started,
        }


@dataclass(frozen=True)
class ContainerPlan:
    """Everything needed to start one kernel container."""

    create_kwargs: dict[str, Any]
    connection: dict[str, Any]
    file_owner: tuple[int, int] | None  # uid, gid of the files copied in; None: any user
    gpus: str  # the normalised gpus setting, for error messages
    notice: str = ""  # shown in the notebook at the first execution

    @property
    def image(self) -> str:
        return str(self.create_kwargs["image"])


def kernel_command(kernel_cmd: Sequence[str], extra_arguments: Sequence[str] = ()) -> list[str]:
    """The command run in the container: ``kernel_cmd`` with its placeholder filled in."""
    cmd = [arg.replace("{connection_file}", CONTAINER_CONNECTION_FILE) for arg in kernel_cmd]
    return cmd + list(extra_arguments)


def device_requests(gpus: str) -> list[DeviceRequest]:
    """Docker device requests for a normalised ``gpus`` value, as ``docker run --gpus`` makes.

    'auto' has none until resolve_auto_gpus() has seen the daemon.
    """
    if gpus in ("none", "auto"):
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if gpus.startswith("device="):
        ids = gpus[len("device=") :].split(",")
        return [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]
    return [DeviceRequest(count=int(gpus), capabilities=[["gpu"]])]


def kernel_environment(
    settings: DockerSettings,
    *,
    spec_env: Mapping[str, str],
    launch_env: Mapping[str, str],
    home: bool,
) -> dict[str, str]:
    """The kernel's environment: an allow-list, never the server's whole environment.

    ``spec_env`` is the kernelspec's ``env`` with substitutions applied,
    ``launch_env`` what the client passed (only PASSED_THROUGH is taken from it).
    """
    env = {name: launch_env[name] for name in PASSED_THROUGH if name in launch_env}
    if home:
        env["HOME"] = CONTAINER_HOME
    env.update(spec_env)
    env.update(settings.environment)
    sizes = {name: len(name.encode()) + len(value.encode()) + 2 for name, value in env.items()}
    largest = max(sizes, key=sizes.__getitem__, default="")
    if sum(sizes.values()) > ENV_TOTAL_LIMIT or sizes.get(largest, 0) > ENV_VALUE_LIMIT:
        raise DockerKernelError(
            errors.ENVIRONMENT_TOO_LARGE.format(size=sum(sizes.values()), count=len(env), largest=largest)
        )
    return env


def container_connection(connection_info: Mapping[str, Any], network: str) -> dict[str, Any]:
    """The connection file the kernel reads inside its container.

    Same ports and key as the host's; the kernel listens on all of the
    container's interfaces so that published ports reach it, or on loopback
    only when it shares the host's network.
    """
    conn = {k: v for k, v in connection_info.items() if k not in ("ip",)}
    for key in ("key", "signature_scheme"):
        if isinstance(conn.get(key), bytes):
            conn[key] = conn[key].decode()
    conn["ip"] = "127.0.0.1" if network == "host" else "0.0.0.0"
    conn["transport"] = "tcp"
    return conn


def plan_container(
    settings: DockerSettings,
    *,
    kernel_id: str,
    kernel_name: str,
    connection_info: Mapping[str, Any],
    cwd: str,
    spec_env: Mapping[str, str],
    launch_env: Mapping[str, str],
    extra_arguments: Sequence[str] = (),
    owner: Owner,
    host_ip: str = "127.0.0.1",
    host_ids: tuple[int, int] | None = None,
) -> ContainerPlan:
    """Turn settings and a kernel's launch parameters into a ContainerPlan.

    ``spec_env`` and ``launch_env`` are as for kernel_environment;
    ``host_ids`` the uid and gid to run as when ``settings.user`` is 'host'.
    """
    if settings.user == "host":
        ids = host_ids if host_ids is not None else (os.getuid(), os.getgid())
        user: str | None = f"{ids[0]}:{ids[1]}"
    elif settings.user == "image":
        ids, user = None, None
    else:
        uid, _, gid = settings.user.partition(":")
        ids = (int(uid), int(gid or uid))
        user = f"{ids[0]}:{ids[1]}"

    volumes = {cwd: {"bind": cwd, "mode": "rw"}}
    for volume in settings.volumes:
        host, target, mode = parse_volume(volume)
        volumes[host] = {"bind": target, "mode": mode}

    kwargs: dict[str, Any] = {
        "image": settings.image,
        "command": kernel_command(settings.kernel_cmd, extra_arguments),
        "name": f"dockerkernel-{kernel_id}",
        "labels": {LABEL_KERNEL_ID: kernel_id, LABEL_KERNELSPEC: kernel_name, **owner.labels()},
        "environment": kernel_environment(
            settings, spec_env=spec_env, launch_env=launch_env, home=settings.user != "image"
        ),
        "working_dir": cwd,
        "volumes": volumes,
        "init": True,
        "detach": True,
        "security_opt": ["no-new-privileges"],
    }
    if user is not None:
        kwargs["user"] = user
    if settings.network == "host":
        kwargs["network_mode"] = "host"
    else:
        kwargs["network"] = settings.network
        kwargs["ports"] = {
            f"{connection_info[name]}/tcp": (host_ip, int(connection_info[name])) for name in PORT_NAMES
        }
    requests = device_requests(settings.gpus)
    if requests:
        kwargs["device_requests"] = requests
    if settings.shm_size:
        kwargs["shm_size"] = settings.shm_size
    if settings.mem_limit:
        kwargs["mem_limit"] = settings.mem_limit
    if settings.cpus:
        kwargs["nano_cpus"] = int(settings.cpus * 1e9)
    kwargs.update(settings.container_options)

    return ContainerPlan(
        create_kwargs=kwargs,
        connection=container_connection(connection_info, settings.network),
        file_owner=ids,
        gpus=settings.gpus,
    )


def resolve_auto_gpus(plan: ContainerPlan, nvidia_runtime: bool) -> ContainerPlan:
    """The plan for gpus 'auto' on a daemon that has (or lacks) the NVIDIA runtime."""
    if plan.gpus != "auto":
        return plan
    if nvidia_runtime:
        return replace(plan, create_kwargs={**plan.create_kwargs, "device_requests": device_requests("all")})
    return replace(plan, notice=GPUS_AUTO_ON_CPU)


def kernel_files_archive(plan: ContainerPlan) -> bytes:
    """A tar of the kernel's files, for ``put_archive`` at ``/``: its connection file and home.

    They belong to the kernel's user and only it can read them; when that user is
    unknown (the image's own USER) they are open to every user of the container.
    """
    buf = io.BytesIO()
    uid, gid = plan.file_owner or (0, 0)
    private = plan.file_owner is not None
    now = time.time()

    def add(name: str, mode: int, data: bytes | None = None) -> None:
        info = tarfile.TarInfo(name.lstrip("/"))
        info.uid, info.gid, info.mtime = uid, gid, now
        if data is None:
            info.type, info.mode = tarfile.DIRTYPE, mode if private else 0o777
            tar.addfile(info)
        else:
            info.mode, info.size = mode if private else 0o666, len(data)
            tar.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buf, mode="w") as tar:
        add(CONTAINER_DIR, 0o755)
        add(os.path.dirname(CONTAINER_CONNECTION_FILE), 0o700)
        add(CONTAINER_CONNECTION_FILE, 0o600, json.dumps(plan.connection, indent=1).encode())
        add(CONTAINER_HOME, 0o700)
        if plan.notice:
            for directory in (".ipython", ".ipython/profile_default", ".ipython/profile_default/startup"):
                add(f"{CONTAINER_HOME}/{directory}", 0o700)
            add(NOTICE_STARTUP_FILE, 0o600, _NOTICE_SCRIPT.format(text=plan.notice).encode())
    return buf.getvalue()
