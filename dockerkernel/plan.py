"""The container for one kernel, as a typed value, planned by pure functions.

A start goes in one direction, in three steps (see launch.py): gather what
the plan needs to know of the engine and this machine (Facts), plan, and act.
Planning is here, and needs no engine:

- draft() turns the settings and the start's arguments into a ContainerPlan
  that holds everything the settings decide;
- finish() completes it with the facts: the engine's kind, the GPUs placed,
  the kernel's record and start-up script, and where each of its files goes.

The plan says what the container is, not how an engine is asked for it:
each backend translates it in one place (engine.containers.create_args for a
container, swarm.service_args for a Swarm service).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import channels as channels_mod
from . import errors, provenance
from . import gpus as gpus_mod
from .channels import CONTAINER_IPC_DIR, TCP, Channels
from .errors import DockerKernelError, GpusUnavailable
from .hosts import DockerHost, map_path
from .identity import Identity
from .kernel_files import (
    CONTAINER_DIR,
    CONTAINER_HOME,
    FilesInPlace,
    connection_file_in,
    home_folder,
    kernel_files,
    place_files,
    startup_file_in,
    within,
)
from .labels import (
    LABEL_GPUS,
    LABEL_HOME_OF,
    LABEL_KERNEL_ID,
    LABEL_KERNELSPEC,
    LABEL_OWNER_UID,
    Owner,
    home_volume_name,
    isolated_network_name,
)
from .settings import DockerSettings, parse_volume

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
class Bind:
    """A path of the Docker host mounted at ``target`` in the container."""

    source: str
    target: str
    read_only: bool = False
    relabel: str = ""  # with SELinux: 'z', shared by containers, or 'Z', this container's alone


@dataclass(frozen=True)
class HomeVolume:
    """The kernel's home: a Docker volume of its user and kernelspec, which outlives the container."""

    name: str
    labels: Mapping[str, str]
    target: str = CONTAINER_HOME


@dataclass(frozen=True)
class GpuDevices:
    """The GPUs a container is given, in the way its engine serves them."""

    method: str = gpus_mod.NVIDIA  # NVIDIA's device driver (gpus.NVIDIA) or CDI (gpus.CDI)
    ids: tuple[str, ...] | None = None  # None: every GPU, or ``count`` of them
    count: int = 0  # so many GPUs, which the engine chooses
    podman: bool = False  # CDI devices go as devices on Podman, as a device request on Docker


@dataclass(frozen=True)
class Engine:
    """What kind of engine a daemon is, as far as a plan cares."""

    podman: bool = False
    rootless: bool = False
    selinux: bool = False  # bind mounts need relabelling for the container to use them
    local: bool = True  # it shares this machine's kernel and files: bind mounts can carry sockets
    containerd_store: bool = False  # images are kept by containerd: an image id is its manifest's digest


@dataclass(frozen=True)
class ContainerPlan:
    """Everything needed to start one kernel container."""

    image: str
    command: tuple[str, ...]
    name: str
    labels: Mapping[str, str]
    environment: Mapping[str, str]
    working_dir: str
    connection: Mapping[str, Any]  # the connection file the kernel reads
    binds: tuple[Bind, ...] = ()
    home: HomeVolume | None = None
    user: str | None = None  # uid:gid; None: the image's USER
    groups: tuple[str, ...] = ()  # supplementary group ids
    userns: str = ""  # a user namespace mode: Podman's 'keep-id'
    network: str = ""  # 'host', 'none', or the name of the network it joins; '': the engine's default
    isolated: bool = False  # ``network`` is its user's isolated network, made on first use
    ports: tuple[int, ...] = ()  # published on ``publish_ip`` of the Docker host, to the same port
    publish_ip: str = "127.0.0.1"
    gpus: str = "none"  # the normalised gpus setting
    devices: GpuDevices | None = None  # the GPUs asked for, once placed (see place_gpus)
    shm_size: str = ""
    mem_limit: str = ""
    nano_cpus: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)  # container_options: the SDK's own keywords
    file_owner: tuple[int, int] | None = None  # uid, gid of the files copied in; None: any user
    host: DockerHost = DockerHost()  # the Docker host that runs it
    when_gpus_busy: str = "share"  # the setting: 'share' or 'refuse'
    gpu_inventory: tuple[str, ...] = ()  # the setting: the host's GPU ids, where nvidia-smi cannot list them
    notice: str = ""  # shown in the notebook at the first execution
    notice_stream: str = "stderr"  # where: 'stderr' for warnings, 'stdout' for plain news
    identity: Identity | None = None  # given a passwd and group entry in the container
    channels: Channels = TCP  # how the server reaches the kernel
    gpus_given: tuple[tuple[str, str], ...] = ()  # (id, name) of each GPU placed, for the kernel's record
    startup_chain: str = ""  # the start-up file that the image or kernelspec set, run after the kernel's own
    installed_image: str = ""  # the image as the kernelspec names it, where a pin runs another reference
    settings: Mapping[str, Any] = field(default_factory=dict)  # what `run --reproduce` needs of its settings
    files: FilesInPlace = FilesInPlace()  # where its files go: set by finish()

    @property
    def owner_uid(self) -> int:
        """The user whose container, network and home volume these are."""
        return int(self.labels[LABEL_OWNER_UID])

    @property
    def kernel_name(self) -> str:
        return self.labels.get(LABEL_KERNELSPEC, "")


@dataclass(frozen=True)
class Facts:
    """What a plan needs to know of the engine and this machine at a start (see launch.gather)."""

    engine: Engine
    image: Mapping[str, Any]  # the engine's inspection of the image
    started: datetime.datetime
    docker_host: str  # as the kernel's record names it
    accounts: tuple[str, str] | None = None  # the image's passwd and group, where the kernel has a user
    gpus: gpus_mod.GpuSupport | None = None  # how the engine gives GPUs, where the kernel asks for them
    holdings: tuple[gpus_mod.Holding, ...] = ()  # what other kernels hold, read under the GPU lock
    home_exists: bool = False  # its home volume exists: its owner was set at its first start


def kernel_command(
    kernel_cmd: Sequence[str], extra_arguments: Sequence[str] = (), channels: Channels = TCP
) -> list[str]:
    """The command run in the container: ``kernel_cmd`` with its placeholder filled in."""
    cmd = [arg.replace("{connection_file}", connection_file_in(channels)) for arg in kernel_cmd]
    return cmd + list(extra_arguments)


def devices_of(gpus: str) -> GpuDevices | None:
    """The GPUs a normalised ``gpus`` value asks for, as ``docker run --gpus`` does.

    'auto' asks for none until place_gpus() has seen the daemon, which also turns
    a count into the ids of free GPUs.
    """
    if gpus in ("none", "auto"):
        return None
    if gpus == "all":
        return GpuDevices()
    if gpus.startswith("device="):
        return GpuDevices(ids=tuple(gpus[len("device=") :].split(",")))
    return GpuDevices(count=int(gpus))


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


def plan_binds(
    folders: Sequence[str], settings: DockerSettings, home: HomeVolume | None, channels_folder: str = ""
) -> tuple[Bind, ...]:
    """Binds for the folders, the volumes and the kernel's socket folder; two at one target are an error.

    Typed binds, not colon-joined strings: any folder name works, colons
    included, and a missing host folder is an error instead of a folder
    that Docker would create as root. A folder is mounted at its own path,
    from where the Docker host has it (``settings.path_map``). Nothing of the
    user's is mounted under dockerkernel's own folder in the container; the
    kernel's socket folder, ``channels_folder``, is mounted there.
    """
    binds = [Bind(map_path(f, settings.path_map), f) for f in folders]
    for volume in settings.volumes:
        host, target, mode = parse_volume(volume)
        binds.append(Bind(host, target, read_only=mode == "ro"))
    for b in binds:
        if within(b.target, CONTAINER_DIR):
            raise DockerKernelError(errors.MOUNT_TARGET_OURS.format(target=b.target, dir=CONTAINER_DIR))
    targets: dict[str, str] = {CONTAINER_DIR: "dockerkernel's own files"}
    if home is not None:
        targets[home.target] = "the kernel's home volume"
    for b in binds:
        if b.target in targets:
            raise DockerKernelError(
                errors.MOUNT_TARGET_TWICE.format(
                    target=b.target, first=targets[b.target], second=f"'{b.source}'"
                )
            )
        targets[b.target] = f"'{b.source}'"
    if channels_folder:
        binds.append(Bind(channels_folder, CONTAINER_IPC_DIR))
    return tuple(binds)


def draft(
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
    identity: Identity,
    server_root: str | None = None,
    client_cwd: str | None = None,
    channels: Channels = TCP,
) -> ContainerPlan:
    """The plan of a kernel's container, as far as its settings and the start's arguments decide it.

    ``spec_env`` and ``launch_env`` are as for kernel_environment;
    ``identity`` the host user the kernel runs as when ``settings.user`` is
    'host'; ``server_root`` and ``client_cwd`` as for mounted_folders;
    ``channels`` how the server reaches the kernel: over ipc the container
    publishes no ports. finish() completes it at the start.
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
    home = (
        HomeVolume(
            home_volume_name(owner.uid, kernel_name),
            {LABEL_HOME_OF: str(owner.uid), LABEL_KERNELSPEC: kernel_name},
        )
        if settings.home == "volume" and kernel_user is not None
        else None
    )
    folders = mounted_folders(settings.mount, cwd, server_root=server_root, client_cwd=client_cwd)
    if settings.network == "none" and channels.transport != "ipc":
        raise DockerKernelError(
            errors.NETWORK_NONE_NEEDS_IPC.format(
                kernel=kernel_name, reason=channels.reason or "channels 'tcp'"
            )
        )
    isolated = settings.network == "isolated"
    published = channels.transport == "tcp" and settings.network not in ("host", "none")
    return ContainerPlan(
        image=settings.pinned_image or settings.image,
        command=tuple(kernel_command(settings.kernel_cmd, extra_arguments, channels)),
        name=f"dockerkernel-{kernel_id}",
        labels={LABEL_KERNEL_ID: kernel_id, LABEL_KERNELSPEC: kernel_name, **owner.labels()},
        environment=kernel_environment(
            settings, spec_env=spec_env, launch_env=launch_env, identity=kernel_user
        ),
        working_dir=cwd,
        connection=container_connection(connection_info, settings.network, channels),
        binds=plan_binds(folders, settings, home, channels.folder if channels.transport == "ipc" else ""),
        home=home,
        user=kernel_user.user if kernel_user is not None else None,
        groups=tuple(str(g) for g in kernel_user.groups) if kernel_user is not None else (),
        network=isolated_network_name(owner.uid) if isolated else settings.network,
        isolated=isolated,
        ports=tuple(int(connection_info[name]) for name in PORT_NAMES) if published else (),
        gpus=settings.gpus,
        devices=devices_of(settings.gpus),
        shm_size=settings.shm_size,
        mem_limit=settings.mem_limit,
        nano_cpus=int(settings.cpus * 1e9) if settings.cpus else 0,
        options=dict(settings.container_options),
        file_owner=(kernel_user.uid, kernel_user.gid) if kernel_user is not None else None,
        host=settings.host(),
        when_gpus_busy=settings.when_gpus_busy,
        gpu_inventory=tuple(settings.gpu_inventory),
        identity=kernel_user,
        channels=channels,
        installed_image=settings.image,
        settings={name: getattr(settings, name) for name in REPRODUCED_SETTINGS},
    )


def finish(plan: ContainerPlan, facts: Facts) -> ContainerPlan:
    """The final plan of a drafted one, from the facts gathered at its start: exactly what to create."""
    plan = for_engine(plan, facts.engine)
    if facts.gpus is not None:
        plan = place_gpus(plan, facts.gpus, facts.holdings, podman=facts.engine.podman)
    plan = with_record(plan, facts)
    return with_files(plan, facts)


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
    alone (':Z', as Podman users write it).
    """
    if engine.selinux and plan.channels.transport == "ipc":
        binds = tuple(replace(b, relabel="Z") if b.target == CONTAINER_IPC_DIR else b for b in plan.binds)
        plan = replace(plan, binds=binds)
    if not engine.rootless or plan.identity is None:
        return plan
    plan = replace(plan, groups=())  # the engine's user namespace maps no other groups
    if engine.podman:
        network = "slirp4netns" if plan.isolated else plan.network
        return replace(plan, userns="keep-id", network=network, isolated=False)
    return replace(plan, user="0:0", file_owner=(0, 0), identity=None)


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
        text = GPUS_NOT_LISTED.format(reason=support.detail or "nvidia-smi listed none", count=setting)
        return with_notice(replace(plan, labels={**plan.labels, LABEL_GPUS: setting}), text)
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
    names = {g.id: g.name for g in inventory}
    plan = replace(
        plan,
        devices=GpuDevices(support.method, None if ids is None else tuple(ids), podman=podman),
        labels={**plan.labels, LABEL_GPUS: ",".join(held)},
        gpus_given=tuple((i, names.get(i, "")) for i in held),
    )
    if not notice:
        given = gpus_mod.describe(held, inventory) if inventory else "all the host's GPUs"
        notice = GPUS_GIVEN.format(gpus=given)
    return with_notice(plan, notice, stream)


def with_notice(plan: ContainerPlan, notice: str, stream: str = "stderr") -> ContainerPlan:
    """The plan with a notice that the kernel shows at the notebook's first execution, on ``stream``."""
    return replace(plan, notice=notice, notice_stream=stream)


def with_record(plan: ContainerPlan, facts: Facts) -> ContainerPlan:
    """The plan with the kernel's record (see provenance.py), from the engine's inspection of its image."""
    record = provenance.record(
        kernelspec=plan.kernel_name,
        image=plan.installed_image or plan.image,
        run_image=plan.image,
        image_attrs=facts.image,
        id_kind=provenance.MANIFEST_DIGEST if facts.engine.containerd_store else provenance.CONFIG_DIGEST,
        gpus=[{"id": gpu, "name": name} for gpu, name in plan.gpus_given],
        docker_host=facts.docker_host,
        started=facts.started,
        settings=plan.settings,
    )
    return with_startup(plan, record, (facts.image.get("Config") or {}).get("Env") or [])


def with_startup(plan: ContainerPlan, record: Mapping[str, Any], image_env: Sequence[str]) -> ContainerPlan:
    """The plan with its start-up script and its ``record`` (see provenance.py) in its environment.

    A PYTHONSTARTUP that the kernelspec or the image (``image_env``, its
    NAME=VALUE list) set runs after the kernel's own script.
    """
    environment = dict(plan.environment)
    ours = startup_file_in(plan.channels)
    image_startup = [e.partition("=")[2] for e in image_env if e.startswith("PYTHONSTARTUP=")]
    chained = environment.get("PYTHONSTARTUP") or (image_startup[0] if image_startup else "")
    environment.update(provenance.environment(record), PYTHONSTARTUP=ours)
    return replace(plan, environment=environment, startup_chain="" if chained == ours else chained)


def with_files(plan: ContainerPlan, facts: Facts) -> ContainerPlan:
    """The plan with where each of its kernel's files goes (see kernel_files.place_files).

    A home volume that exists had its owner set at its first start: its folder
    is copied in only then. The passwd and group files mounted read-only are
    kept in the store beside the kernel's folder.
    """
    passwd, group = facts.accounts or (None, None)
    home = home_folder(plan)
    if home is not None and plan.home is not None and plan.channels.carries_files and facts.home_exists:
        home = None
    placed = place_files(plan, kernel_files(plan, passwd, group), home)
    folder = plan.channels.folder
    mounted = tuple(
        replace(f, source=channels_mod.account_path(folder, f.data or b"")) for f in placed.mounted
    )
    sources = {f.path: f.source for f in mounted}
    files = replace(placed, mounted=mounted)
    return replace(with_read_only_files(plan, sources, facts.engine.selinux), files=files)


def with_read_only_files(plan: ContainerPlan, sources: Mapping[str, str], selinux: bool) -> ContainerPlan:
    """The plan with each host file of ``sources`` mounted read-only at its target path.

    The files are shared by kernels: with SELinux, they get the label that all
    containers may read (':z').
    """
    binds = (Bind(s, t, read_only=True, relabel="z" if selinux else "") for t, s in sources.items())
    return replace(plan, binds=(*plan.binds, *binds))
