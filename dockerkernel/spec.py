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
from dataclasses import dataclass, field, replace
from typing import Any

from docker.types import DeviceRequest, Mount

from . import errors, provenance
from . import gpus as gpus_mod
from .channels import CONTAINER_IPC_DIR, TCP, Channels
from .errors import DockerKernelError, GpusUnavailable
from .hosts import DockerHost, map_path
from .identity import Identity, merge_group, merge_passwd
from .settings import DockerSettings, parse_volume

# Where a kernel's own files live inside its container. Over ipc they are in the
# kernel's folder, which is mounted (see channels.py); otherwise they are copied
# into the container's own filesystem, where they can belong to whichever user the
# kernel runs as without opening up a directory on the host. ipykernel may
# rewrite its connection file after binding: both places are the kernel's to write.
CONTAINER_DIR = "/dockerkernel"
CONTAINER_CONNECTION_FILE = f"{CONTAINER_DIR}/run/kernel.json"
CONTAINER_HOME = f"{CONTAINER_DIR}/home"
# Run by IPython at start-up, through PYTHONSTARTUP: the kernel's record, and its
# notice (provenance.startup_script). Outside the home, which may be a volume
# that outlives this container.
STARTUP_FILE = f"{CONTAINER_DIR}/startup.py"
ACCOUNT_FILES = ("/etc/passwd", "/etc/group")

# Host folders that are never mounted over the image's own (the notebook's
# folder itself excepted): widening the mount to one of them, or to '/', would
# hide the image's system.
SYSTEM_DIRS = frozenset(
    ["/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
     "/sbin", "/sys", "/tmp", "/usr", "/var", CONTAINER_DIR]
)  # fmt: skip

GPUS_AUTO_ON_CPU = (
    "dockerkernel: this kernel runs on the CPU: it asks for GPUs with gpus 'auto', but the "
    "Docker daemon cannot give containers GPUs. Install the NVIDIA Container Toolkit and restart "
    "Docker to use the GPUs."
)
# Notices about the GPUs a kernel got (stdout), or had to share (stderr).
GPUS_GIVEN = "dockerkernel: this kernel has {gpus}."
GPUS_SHARED = (
    "dockerkernel: this kernel shares {gpus} with other kernels: only {free} of the host's {total} "
    "GPUs were free ({holders}). Expect less memory and speed than usual."
)
GPUS_NOT_LISTED = (
    "dockerkernel: the Docker host's GPUs could not be listed ({reason}), so Docker chose this "
    "kernel's {count} GPU(s) and they may be shared. Set gpu_inventory to the host's GPU ids "
    "to have free ones chosen."
)

LABEL_PREFIX = "org.dockerkernel"
LABEL_KERNEL_ID = f"{LABEL_PREFIX}.kernel-id"
LABEL_KERNELSPEC = f"{LABEL_PREFIX}.kernelspec"
LABEL_OWNER_HOST = f"{LABEL_PREFIX}.owner-host"
LABEL_OWNER_PID = f"{LABEL_PREFIX}.owner-pid"
LABEL_OWNER_STARTED = f"{LABEL_PREFIX}.owner-started"
LABEL_OWNER_UID = f"{LABEL_PREFIX}.owner-uid"  # the user the container belongs to
LABEL_PROBE = f"{LABEL_PREFIX}.probe"  # a throwaway container that checks an image
LABEL_HOME_OF = f"{LABEL_PREFIX}.home-of"  # on a home volume: the uid it belongs to
LABEL_NETWORK_OF = f"{LABEL_PREFIX}.network-of"  # on an isolated network: the uid it belongs to
LABEL_GPUS = f"{LABEL_PREFIX}.gpus"  # the GPU ids a kernel holds, or 'all'
LABEL_GPU_LOCK = f"{LABEL_PREFIX}.gpu-lock"  # on the container that locks GPU allocation
LABEL_POOL = f"{LABEL_PREFIX}.pool"  # on a kernel started for the warm pool (also once a start took it)
POOL_NAME_PREFIX = "dockerkernel-pool-"  # a pooled kernel's name until a start takes it

# The settings a kernel's record keeps, for `dockerkernel run --reproduce`: what made its
# environment. Not its env (it may hold secrets), nor where its engine is and how it is reached.
REPRODUCED_SETTINGS = (
    "kernel_cmd", "gpus", "user", "network", "home", "mount", "volumes", "shm_size", "mem_limit", "cpus",
)  # fmt: skip

PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")

# Variables a kernel gets from the server besides its kernelspec's own. The rest
# of the server's environment stays out: a leaked JPY_PARENT_PID makes ipykernel
# exit at once under an init process, the host's PATH breaks images, and secrets
# would end up in the container's configuration.
PASSED_THROUGH = ("JPY_SESSION_NAME",)

LOCALE_VARIABLES = frozenset(["LANG", "LC_ALL", "LC_CTYPE"])

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
    uid: int

    def labels(self) -> dict[str, str]:
        return {
            LABEL_OWNER_HOST: self.host,
            LABEL_OWNER_PID: str(self.pid),
            LABEL_OWNER_STARTED: self.started,
            LABEL_OWNER_UID: str(self.uid),
        }


def home_volume_name(uid: int, kernel_name: str) -> str:
    """The Docker volume that holds a user's home for one kernelspec."""
    return f"dockerkernel-home-{uid}-{kernel_name}"


def isolated_network_name(uid: int) -> str:
    """The network that a user's kernels share with no one else's containers."""
    return f"dockerkernel-u{uid}"


@dataclass(frozen=True)
class ContainerPlan:
    """Everything needed to start one kernel container."""

    create_kwargs: dict[str, Any]
    connection: dict[str, Any]
    file_owner: tuple[int, int] | None  # uid, gid of the files copied in; None: any user
    gpus: str  # the normalised gpus setting
    host: DockerHost = DockerHost()  # the Docker host that runs it
    when_gpus_busy: str = "share"  # the setting: 'share' or 'refuse'
    gpu_inventory: tuple[str, ...] = ()  # the setting: the host's GPU ids, where nvidia-smi cannot list them
    notice: str = ""  # shown in the notebook at the first execution
    notice_stream: str = "stderr"  # where: 'stderr' for warnings, 'stdout' for plain news
    identity: Identity | None = None  # given a passwd and group entry in the container
    network: str | None = None  # an isolated network that must exist before the create
    channels: Channels = TCP  # how the server reaches the kernel
    gpus_given: tuple[tuple[str, str], ...] = ()  # (id, name) of each GPU placed, for the kernel's record
    startup_chain: str = ""  # the start-up file that the image or kernelspec set, run after the kernel's own
    installed_image: str = ""  # the image as the kernelspec names it, where a pin runs another reference
    settings: dict[str, Any] = field(default_factory=dict)  # what `run --reproduce` needs of its settings

    @property
    def image(self) -> str:
        return str(self.create_kwargs["image"])

    @property
    def owner_uid(self) -> int:
        """The user whose container, network and home volume these are."""
        return int(self.create_kwargs["labels"][LABEL_OWNER_UID])


def connection_file_in(channels: Channels) -> str:
    """The kernel's connection file as its container sees it."""
    return f"{CONTAINER_IPC_DIR}/kernel.json" if channels.carries_files else CONTAINER_CONNECTION_FILE


def startup_file_in(channels: Channels) -> str:
    """The kernel's start-up script as its container sees it."""
    return f"{CONTAINER_IPC_DIR}/startup.py" if channels.carries_files else STARTUP_FILE


def kernel_command(
    kernel_cmd: Sequence[str], extra_arguments: Sequence[str] = (), channels: Channels = TCP
) -> list[str]:
    """The command run in the container: ``kernel_cmd`` with its placeholder filled in."""
    cmd = [arg.replace("{connection_file}", connection_file_in(channels)) for arg in kernel_cmd]
    return cmd + list(extra_arguments)


def device_requests(gpus: str) -> list[DeviceRequest]:
    """Docker device requests for a normalised ``gpus`` value, as ``docker run --gpus`` makes.

    'auto' has none until place_gpus() has seen the daemon, which also turns
    a count into the ids of free GPUs.
    """
    if gpus in ("none", "auto"):
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if gpus.startswith("device="):
        return [DeviceRequest(device_ids=gpus[len("device=") :].split(","), capabilities=[["gpu"]])]
    return [DeviceRequest(count=int(gpus), capabilities=[["gpu"]])]


def gpu_create_kwargs(ids: Sequence[str] | None, method: str, podman: bool = False) -> dict[str, Any]:
    """The create arguments that give a container the GPUs ``ids`` (None: all of them).

    Docker's NVIDIA device driver takes device requests; CDI names each device
    'nvidia.com/gpu=ID', in a device request of the 'cdi' driver on Docker and
    as a device on Podman.
    """
    if method == gpus_mod.NVIDIA:
        return {"device_requests": device_requests("all" if ids is None else "device=" + ",".join(ids))}
    names = [f"{gpus_mod.CDI_KIND}={i}" for i in (["all"] if ids is None else ids)]
    if podman:
        return {"devices": names}
    return {"device_requests": [DeviceRequest(driver="cdi", device_ids=names)]}


def kernel_environment(
    settings: DockerSettings,
    *,
    spec_env: Mapping[str, str],
    launch_env: Mapping[str, str],
    identity: Identity | None,
) -> dict[str, str]:
    """The kernel's environment: an allow-list, never the server's whole environment.

    ``spec_env`` is the kernelspec's ``env`` with substitutions applied,
    ``launch_env`` what the client passed (only PASSED_THROUGH is taken from it);
    ``identity`` the kernel's user, when it is not the image's own.
    """
    env = {name: launch_env[name] for name in PASSED_THROUGH if name in launch_env}
    if identity is not None:
        env.update(HOME=CONTAINER_HOME, USER=identity.name, LOGNAME=identity.name)
    if not LOCALE_VARIABLES & {*spec_env, *settings.environment}:
        # Without a locale, Python 2 decodes paths as ASCII and its kernel dies in a
        # notebook folder with a non-ASCII name; an image's own LANG still sets the language.
        env["LC_CTYPE"] = "C.UTF-8"
    env.update(spec_env)
    env.update(settings.environment)
    sizes = {name: len(name.encode()) + len(value.encode()) + 2 for name, value in env.items()}
    largest = max(sizes, key=sizes.__getitem__, default="")
    if sum(sizes.values()) > ENV_TOTAL_LIMIT or sizes.get(largest, 0) > ENV_VALUE_LIMIT:
        raise DockerKernelError(
            errors.ENVIRONMENT_TOO_LARGE.format(size=sum(sizes.values()), count=len(env), largest=largest)
        )
    return env


def container_connection(
    connection_info: Mapping[str, Any], network: str, channels: Channels
) -> dict[str, Any]:
    """The connection file the kernel reads inside its container.

    Same ports and key as the host's. Over ipc, the sockets are in the
    kernel's folder as the container sees it; over tcp, the kernel listens on
    all of the container's interfaces so that published ports reach it, or on
    loopback only when it shares the host's network.
    """
    conn = {k: v for k, v in connection_info.items() if k not in ("ip",)}
    for key in ("key", "signature_scheme"):
        if isinstance(conn.get(key), bytes):
            conn[key] = conn[key].decode()
    if channels.transport == "ipc":
        conn["ip"], conn["transport"] = channels.container_ip, "ipc"
    else:
        conn["ip"] = "127.0.0.1" if network == "host" else "0.0.0.0"
        conn["transport"] = "tcp"
    return conn


def mounted_folders(mount: str, cwd: str, *, server_root: str | None, client_cwd: str | None) -> list[str]:
    """The host folders mounted at their own paths: the notebook's folder ``cwd``, or one that holds it.

    ``mount`` is the setting; ``server_root`` the Jupyter server's root
    directory, when the kernel runs in one; ``client_cwd`` the working
    directory of the client that starts the kernel. A widened mount holds the
    notebook's folder, so that relative paths that climb out of it (``../data``)
    work as in a local kernel; it is never a folder of the image's system.
    """
    if mount == "notebook":
        return [cwd]
    if mount == "auto":
        root = server_root or client_cwd
        if root is None:
            return [cwd]
        root = os.path.abspath(root)
        if root in SYSTEM_DIRS or not within(cwd, root):
            return [cwd]
        return [root]
    if mount in SYSTEM_DIRS:
        raise DockerKernelError(errors.MOUNT_SYSTEM_DIR.format(path=mount))
    return [mount] if within(cwd, mount) else [mount, cwd]


def within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or inside it (both absolute and normalised)."""
    return os.path.commonpath([path, folder]) == folder


def plan_mounts(
    folders: Sequence[str],
    settings: DockerSettings,
    home_volume: str | None,
    home_labels: Mapping[str, str] | None = None,
    channels_folder: str = "",
) -> list[Mount]:
    """Bind mounts for the folders and volumes, and the home volume; two at one target are an error.

    Mount objects, not colon-joined strings: any folder name works, colons
    included, and a missing host folder is an error instead of a folder
    that Docker would create as root. A folder is mounted at its own path,
    from where the Docker host has it (``settings.path_map``). Nothing of the
    user's is mounted under dockerkernel's own folder in the container; the
    kernel's socket folder, ``channels_folder``, is mounted there.
    """
    mounts = [Mount(target=f, source=map_path(f, settings.path_map), type="bind") for f in folders]
    for volume in settings.volumes:
        host, target, mode = parse_volume(volume)
        mounts.append(Mount(target=target, source=host, type="bind", read_only=mode == "ro"))
    for m in mounts:
        if within(m["Target"], CONTAINER_DIR):
            raise DockerKernelError(errors.MOUNT_TARGET_OURS.format(target=m["Target"], dir=CONTAINER_DIR))
    if home_volume is not None:
        mounts.append(Mount(target=CONTAINER_HOME, source=home_volume, type="volume", labels=home_labels))
    if channels_folder:
        mounts.append(Mount(target=CONTAINER_IPC_DIR, source=channels_folder, type="bind"))
    targets: dict[str, str] = {CONTAINER_DIR: "dockerkernel's own files"}
    for m in mounts:
        source = "the kernel's home volume" if m["Type"] == "volume" else f"'{m['Source']}'"
        if m["Target"] in targets:
            raise DockerKernelError(
                errors.MOUNT_TARGET_TWICE.format(
                    target=m["Target"], first=targets[m["Target"]], second=source
                )
            )
        targets[m["Target"]] = source
    return mounts


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
    identity: Identity,
    server_root: str | None = None,
    client_cwd: str | None = None,
    channels: Channels = TCP,
) -> ContainerPlan:
    """Turn settings and a kernel's launch parameters into a ContainerPlan.

    ``spec_env`` and ``launch_env`` are as for kernel_environment;
    ``identity`` the host user the kernel runs as when ``settings.user`` is
    'host'; ``server_root`` and ``client_cwd`` as for mounted_folders;
    ``channels`` how the server reaches the kernel: over ipc the container
    publishes no ports.
    """
    kernel_user: Identity | None
    if settings.user == "host":
        kernel_user = identity
    elif settings.user == "image":
        kernel_user = None
    else:
        uid, _, gid = settings.user.partition(":")
        kernel_user = Identity(
            int(uid), int(gid or uid), identity.name if int(uid) == identity.uid else "kernel"
        )
    # A home of its own needs a user that can own it: not the image's unknown USER.
    home_volume = (
        home_volume_name(owner.uid, kernel_name)
        if settings.home == "volume" and kernel_user is not None
        else None
    )
    folders = mounted_folders(settings.mount, cwd, server_root=server_root, client_cwd=client_cwd)

    kwargs: dict[str, Any] = {
        "image": settings.pinned_image or settings.image,
        "command": kernel_command(settings.kernel_cmd, extra_arguments, channels),
        "name": f"dockerkernel-{kernel_id}",
        "labels": {LABEL_KERNEL_ID: kernel_id, LABEL_KERNELSPEC: kernel_name, **owner.labels()},
        "environment": kernel_environment(
            settings, spec_env=spec_env, launch_env=launch_env, identity=kernel_user
        ),
        "working_dir": cwd,
        "mounts": plan_mounts(
            folders,
            settings,
            home_volume,
            {LABEL_HOME_OF: str(owner.uid), LABEL_KERNELSPEC: kernel_name},
            channels.folder if channels.transport == "ipc" else "",
        ),
        "init": True,
        "detach": True,
        "security_opt": ["no-new-privileges"],
    }
    if kernel_user is not None:
        kwargs["user"] = kernel_user.user
        if kernel_user.groups:
            kwargs["group_add"] = [str(g) for g in kernel_user.groups]
    network = None
    if settings.network == "none" and channels.transport != "ipc":
        raise DockerKernelError(
            errors.NETWORK_NONE_NEEDS_IPC.format(
                kernel=kernel_name, reason=channels.reason or "channels 'tcp'"
            )
        )
    if settings.network in ("host", "none"):
        kwargs["network_mode"] = settings.network
    else:
        if settings.network == "isolated":
            network = isolated_network_name(owner.uid)
        kwargs["network"] = network or settings.network
        if channels.transport == "tcp":
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
        connection=container_connection(connection_info, settings.network, channels),
        file_owner=(kernel_user.uid, kernel_user.gid) if kernel_user is not None else None,
        gpus=settings.gpus,
        host=settings.host(),
        when_gpus_busy=settings.when_gpus_busy,
        gpu_inventory=tuple(settings.gpu_inventory),
        identity=kernel_user,
        network=network,
        channels=channels,
        installed_image=settings.image,
        settings={name: getattr(settings, name) for name in REPRODUCED_SETTINGS},
    )


def published_on(plan: ContainerPlan, ip: str) -> ContainerPlan:
    """The plan with the kernel's ports published on the host's address ``ip``, not its loopback."""
    ports = {key: (ip, port) for key, (_, port) in plan.create_kwargs.get("ports", {}).items()}
    return replace(plan, create_kwargs={**plan.create_kwargs, "ports": ports})


def place_gpus(
    plan: ContainerPlan,
    support: gpus_mod.GpuSupport,
    holdings: Sequence[gpus_mod.Holding],
    *,
    podman: bool = False,
) -> ContainerPlan:
    """The plan with the GPUs it gets on a daemon with ``support``, while ``holdings`` hold theirs.

    A count gets that many GPUs that no running kernel holds, or, when too
    few are free, the least held ones with a notice, or a refusal, as
    ``when_gpus_busy`` says. 'all' and device ids get what they name, and
    'auto' is 'all' where the daemon gives GPUs, else the CPU with a notice.
    The ids the kernel holds go into a label, for the next allocation and
    `dockerkernel ps`; the notebook's first execution names them.
    """
    setting = plan.gpus
    if setting == "none":
        return plan
    if not support.available:
        if setting == "auto":
            return with_notice(plan, GPUS_AUTO_ON_CPU)
        raise GpusUnavailable(errors.GPUS_UNAVAILABLE.format(gpus=setting))
    support = support.with_inventory(plan.gpu_inventory)
    inventory = support.gpus
    notice, stream = "", "stdout"
    ids: list[str] | None
    if setting in ("auto", "all"):
        ids = None
        held = [g.id for g in inventory] or ["all"]
    elif setting.startswith("device="):
        ids = setting[len("device=") :].split(",")
        held = list(gpus_mod.held_ids(setting[len("device=") :], inventory))
        known_ids = {g.id for g in inventory}
        unknown = [i for i in held if known_ids and i not in known_ids and not i.startswith("mig-")]
        if unknown:
            known = ",".join(sorted(known_ids, key=gpus_mod.index_key))
            raise DockerKernelError(
                errors.GPU_UNKNOWN_DEVICE.format(
                    unknown=unknown[0], gpus=setting, known=known, first=inventory[0].id
                )
            )
    elif not inventory:
        # Without the list of GPUs nothing can be chosen: Docker picks, as `docker run --gpus N` does.
        kwargs = {**plan.create_kwargs, "labels": {**plan.create_kwargs["labels"], LABEL_GPUS: setting}}
        text = GPUS_NOT_LISTED.format(reason=support.detail or "nvidia-smi listed none", count=setting)
        return with_notice(replace(plan, create_kwargs=kwargs), text)
    else:
        count, total = int(setting), len(inventory)
        if count > total:
            raise DockerKernelError(errors.GPUS_MORE_THAN_HOST.format(count=count, total=total))
        ids, shared = gpus_mod.choose(inventory, holdings, count)
        held = ids
        if shared:
            free = sum(1 for load in gpus_mod.loads(inventory, holdings).values() if load == 0)
            if plan.when_gpus_busy == "refuse":
                every = gpus_mod.holders([g.id for g in inventory], holdings)
                raise DockerKernelError(
                    errors.GPUS_BUSY.format(count=count, free=free, total=total, holders=every)
                )
            who = gpus_mod.holders(ids, holdings)
            notice, stream = (
                GPUS_SHARED.format(
                    gpus=gpus_mod.describe(ids, inventory), free=free, total=total, holders=who
                ),
                "stderr",
            )
    kwargs = {k: v for k, v in plan.create_kwargs.items() if k not in ("device_requests", "devices")}
    kwargs.update(gpu_create_kwargs(ids, support.method, podman))
    kwargs["labels"] = {**kwargs["labels"], LABEL_GPUS: ",".join(held)}
    names = {g.id: g.name for g in inventory}
    plan = replace(plan, gpus_given=tuple((i, names.get(i, "")) for i in held))
    if not notice:
        given = gpus_mod.describe(held, inventory) if inventory else "all the host's GPUs"
        notice = GPUS_GIVEN.format(gpus=given)
    return with_notice(replace(plan, create_kwargs=kwargs), notice, stream)


def with_notice(plan: ContainerPlan, notice: str, stream: str = "stderr") -> ContainerPlan:
    """The plan with a notice that the kernel shows at the notebook's first execution, on ``stream``."""
    return replace(plan, notice=notice, notice_stream=stream)


def with_startup(plan: ContainerPlan, record: Mapping[str, Any], image_env: Sequence[str]) -> ContainerPlan:
    """The plan with its start-up script and its ``record`` (see provenance.py) in its environment.

    A PYTHONSTARTUP that the kernelspec or the image (``image_env``, its
    NAME=VALUE list) set runs after the kernel's own script.
    """
    environment = dict(plan.create_kwargs["environment"])
    ours = startup_file_in(plan.channels)
    image_startup = [e.partition("=")[2] for e in image_env if e.startswith("PYTHONSTARTUP=")]
    chained = environment.get("PYTHONSTARTUP") or (image_startup[0] if image_startup else "")
    environment.update(provenance.environment(record), PYTHONSTARTUP=ours)
    kwargs = {**plan.create_kwargs, "environment": environment}
    return replace(plan, create_kwargs=kwargs, startup_chain="" if chained == ours else chained)


@dataclass(frozen=True)
class Engine:
    """What kind of engine a daemon is, as far as a plan cares."""

    podman: bool = False
    rootless: bool = False
    selinux: bool = False  # bind mounts need relabelling for the container to use them
    local: bool = True  # it shares this machine's kernel and files: bind mounts can carry sockets
    containerd_store: bool = False  # images are kept by containerd: an image id is its manifest's digest


def for_engine(plan: ContainerPlan, engine: Engine) -> ContainerPlan:
    """The plan adapted to the engine that will run it.

    A rootless engine runs containers in a user namespace of the user who
    started it: a uid in the container is not that uid on the host. There the
    kernel must run as whoever maps back to the user, or the files it writes to
    the notebook's folder belong to a stranger. Rootless Podman maps the user's
    own uid to itself (``keep-id``), so the kernel keeps the user's ids and name;
    rootless Docker maps only the container's root to the user, so the kernel
    runs as root in the container, which is the user outside it. In rootless
    Podman every container has a network stack of its own (slirp4netns), which
    isolates kernels without a network of dockerkernel's.

    With SELinux, the kernel's socket folder is relabelled for its container
    alone (':Z', as Podman users write it), which Docker's mount objects
    cannot say: it goes as a bind instead.
    """
    if engine.selinux and plan.channels.transport == "ipc":
        kwargs = dict(plan.create_kwargs)
        kwargs["mounts"] = [m for m in kwargs["mounts"] if m["Target"] != CONTAINER_IPC_DIR]
        kwargs["volumes"] = [*kwargs.get("volumes", []), f"{plan.channels.folder}:{CONTAINER_IPC_DIR}:Z"]
        plan = replace(plan, create_kwargs=kwargs)
    if not engine.rootless or plan.identity is None:
        return plan
    kwargs = dict(plan.create_kwargs)
    kwargs.pop("group_add", None)  # the engine's user namespace maps no other groups
    if engine.podman:
        kwargs["userns_mode"] = "keep-id"
        if plan.network is not None:
            kwargs["network"] = "slirp4netns"
        return replace(plan, create_kwargs=kwargs, network=None)
    kwargs["user"] = "0:0"
    return replace(plan, create_kwargs=kwargs, file_owner=(0, 0), identity=None)


@dataclass(frozen=True)
class KernelFile:
    """A file that a kernel needs in its container, at ``path``; a folder where ``data`` is None."""

    path: str
    mode: int
    data: bytes | None = None
    root_owned: bool = False  # else it belongs to the kernel's user


def kernel_files(
    plan: ContainerPlan, passwd: str | None = None, group: str | None = None
) -> list[KernelFile]:
    """The files a kernel needs besides its home: its connection file, its start-up script, its accounts.

    ``passwd`` and ``group`` are the image's /etc/passwd and /etc/group: with the
    plan's identity, the container gets copies with the kernel's user in them,
    where that adds anything.
    """
    connection = json.dumps(plan.connection, indent=1).encode()
    files = [KernelFile(connection_file_in(plan.channels), 0o600, connection)]
    if plan.create_kwargs.get("environment", {}).get("PYTHONSTARTUP") == startup_file_in(plan.channels):
        script = provenance.startup_script(plan.notice, plan.notice_stream, plan.startup_chain)
        files.append(KernelFile(startup_file_in(plan.channels), 0o644, script.encode(), root_owned=True))
    if plan.identity is not None and passwd is not None and group is not None:
        for path, image_file, merged in (
            ("/etc/passwd", passwd, merge_passwd(passwd, plan.identity, CONTAINER_HOME)),
            ("/etc/group", group, merge_group(group, plan.identity)),
        ):
            if merged != image_file:
                files.append(KernelFile(path, 0o644, merged.encode(), root_owned=True))
    return files


def home_folder(plan: ContainerPlan) -> KernelFile | None:
    """The kernel's HOME, where dockerkernel gives it one: the kernel's user must own it."""
    if plan.create_kwargs.get("environment", {}).get("HOME") != CONTAINER_HOME:
        return None
    return KernelFile(CONTAINER_HOME, 0o700)


def home_volume_of(plan: ContainerPlan) -> str | None:
    """The name of the kernel's home volume; None when its home is in the container."""
    for m in plan.create_kwargs.get("mounts", []):
        if m["Target"] == CONTAINER_HOME and m["Type"] == "volume":
            return str(m["Source"])
    return None


@dataclass(frozen=True)
class FilesInPlace:
    """Where a kernel's files go before its start (see place_files)."""

    in_folder: list[KernelFile]  # written into the kernel's folder, which is mounted
    mounted: list[KernelFile]  # stored on this machine and mounted read-only at their paths
    copied: list[KernelFile]  # copied into the created container


def place_files(plan: ContainerPlan, files: Sequence[KernelFile], home: KernelFile | None) -> FilesInPlace:
    """Where each of a kernel's files goes (pure); ``home`` is its home folder where that needs an owner.

    Where the kernel's folder carries its files (ipc on this machine), the
    connection file and the start-up script go there, and the container is created and
    started with no copy. A user's passwd and group entries are mounted
    read-only, as that user could not change them anyway; root's are copied,
    so that root can still add users and groups (a package's install does). A
    home that needs its owner set is copied as a folder. Elsewhere, every file
    is copied.
    """
    extra = [home] if home is not None else []
    if not plan.channels.carries_files:
        return FilesInPlace([], [], [*files, *extra])
    in_folder = [f for f in files if within(f.path, CONTAINER_IPC_DIR)]
    accounts = [f for f in files if f.path in ACCOUNT_FILES]
    as_root = plan.identity is not None and plan.identity.uid == 0
    return FilesInPlace(in_folder, [] if as_root else accounts, [*(accounts if as_root else []), *extra])


def with_read_only_files(plan: ContainerPlan, sources: Mapping[str, str], selinux: bool) -> ContainerPlan:
    """The plan with each host file of ``sources`` mounted read-only at its target path.

    The files are shared by kernels: with SELinux, they get the label that all
    containers may read (':z').
    """
    if not sources:
        return plan
    kwargs = dict(plan.create_kwargs)
    if selinux:
        kwargs["volumes"] = [*kwargs.get("volumes", []), *(f"{s}:{t}:ro,z" for t, s in sources.items())]
    else:
        binds = [Mount(target=t, source=s, type="bind", read_only=True) for t, s in sources.items()]
        kwargs["mounts"] = [*kwargs.get("mounts", []), *binds]
    return replace(plan, create_kwargs=kwargs)


def files_archive(plan: ContainerPlan, files: Sequence[KernelFile]) -> bytes:
    """A tar of ``files``, for ``put_archive`` at ``/``, with dockerkernel's folders that hold them.

    They belong to the kernel's user and only it can read them; when that user
    is unknown (the image's own USER) they are open to every user of the
    container.
    """
    buf = io.BytesIO()
    uid, gid = plan.file_owner or (0, 0)
    private = plan.file_owner is not None
    now = time.time()

    def add(file: KernelFile) -> None:
        info = tarfile.TarInfo(file.path.lstrip("/"))
        (info.uid, info.gid), info.mtime = (0, 0) if file.root_owned else (uid, gid), now
        if file.data is None:
            info.type, info.mode = tarfile.DIRTYPE, file.mode if private or file.root_owned else 0o777
            tar.addfile(info)
        else:
            info.mode, info.size = file.mode if private or file.root_owned else 0o666, len(file.data)
            tar.addfile(info, io.BytesIO(file.data))

    folders = {os.path.dirname(f.path) for f in files if within(f.path, CONTAINER_DIR)} - {CONTAINER_DIR}
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if folders or any(within(f.path, CONTAINER_DIR) for f in files):
            add(KernelFile(CONTAINER_DIR, 0o755, root_owned=True))
        for folder in sorted(folders):
            add(KernelFile(folder, 0o700))
        for file in files:
            add(file)
    return buf.getvalue()


def kernel_files_archive(plan: ContainerPlan, passwd: str | None = None, group: str | None = None) -> bytes:
    """A tar of all of a kernel's files and its home folder, as a copy into its container has them."""
    home = home_folder(plan)
    return files_archive(plan, [*kernel_files(plan, passwd, group), *([home] if home else [])])
