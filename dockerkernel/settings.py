"""The settings of a Docker kernel, as traitlets.

Every setting can be given per kernelspec, under
``metadata.kernel_provisioner.config`` in ``kernel.json``, and server-wide as
``c.DockerProvisioner.<name>`` in a Jupyter config file; the kernelspec wins.
The help strings here are the documentation: the CLI and the README reuse them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from traitlets import (
    CaselessStrEnum,
    Dict,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    Union,
    validate,
)
from traitlets.config import LoggingConfigurable

from .hosts import DockerHost, check_url

DEFAULT_KERNEL_CMD = ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]

# A Docker image reference: [registry[:port]/]path[:tag][@digest].
_IMAGE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_SIZE = re.compile(r"^[0-9]+[bkmgBKMG]?$")
_USER = re.compile(r"^[0-9]+(?::[0-9]+)?$")
_NETWORK = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_gpus(value: str) -> str:
    """Normalise a ``docker run --gpus`` value: 'none', 'all', a count or device ids, or 'auto'.

    Raises ValueError with the accepted forms when the value is none of them.
    """
    text = str(value).strip().lower()
    if text in ("none", "all", "auto", ""):
        return text or "none"
    if text.isdigit():
        return "none" if int(text) == 0 else str(int(text))
    ids = [part.strip() for part in text.removeprefix("device=").split(",")]
    if ids and all(re.fullmatch(r"[0-9]+|gpu-[0-9a-f-]+|mig-[0-9a-z/-]+", i) for i in ids):
        return "device=" + ",".join(ids)
    raise ValueError(
        f"invalid gpus value {value!r}: use 'none', 'all', 'auto', a count such as 2, "
        "or device ids such as device=0,1"
    )


def parse_volume(spec: str | Mapping[str, Any]) -> tuple[str, str, str]:
    """A volume's host path, container path and mode ('ro' or 'rw'); both paths must be absolute.

    ``spec`` is ``HOST:CONTAINER[:ro|rw]``, or, for paths with colons in them,
    ``{"source": HOST, "target": CONTAINER, "read_only": false}``.
    """
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"source", "target", "read_only"}
        parts = [str(spec.get("source", "")), str(spec.get("target", ""))]
        mode = "ro" if spec.get("read_only") else "rw"
        if unknown or not all(p.startswith("/") for p in parts):
            raise ValueError(
                f"invalid volume {dict(spec)!r}: write it as "
                '{"source": "/host/path", "target": "/container/path", "read_only": false}'
            )
    else:
        parts = spec.split(":")
        mode = "rw"
        if len(parts) == 3 and parts[2] in ("ro", "rw"):
            mode = parts.pop()
        if len(parts) != 2 or not all(p.startswith("/") for p in parts):
            raise ValueError(
                f"invalid volume {spec!r}: write it as /host/path:/container/path[:ro], "
                "or as a source/target mapping for paths with colons"
            )
    return os.path.normpath(parts[0]), os.path.normpath(parts[1]), mode


class DockerSettings(LoggingConfigurable):
    """How a kernel's container is made: image, command, GPUs, mounts, limits."""

    image = Unicode(
        "",
        help="""The Docker image the kernel runs in, e.g. 'quay.io/jupyter/pytorch-notebook'.
        It must contain a Python with ipykernel.""",
    ).tag(config=True)

    pinned_image = Unicode(
        "",
        help="""The exact image the kernel starts, recorded by `install --pin` or `dockerkernel pin`:
        the image's digest (repository@sha256:...), or its id (sha256:...) for an image built on the
        Docker host, so that the kernel runs the same environment after the tag has moved. Empty:
        whatever the image's tag names at each start.""",
    ).tag(config=True)

    kernel_cmd = List(
        Unicode(),
        default_value=DEFAULT_KERNEL_CMD,
        help="""The command that starts the kernel inside the container.
        '{connection_file}' is replaced by the path of the connection file in the
        container; arguments from the client are appended. Use 'python' instead
        of 'python3' for Python 2 images.""",
    ).tag(config=True)

    docker_host = Unicode(
        "",
        help="""The Docker engine that runs the kernel: 'ssh://user@host' (the
        kernel's channels go over SSH), 'tcp://host:2376' (TLS; see tls_ca, and the
        channels are encrypted with CurveZMQ), or a socket of this machine such as
        'unix:///run/user/1000/podman/podman.sock' for your rootless Podman. Empty:
        the one DOCKER_HOST names, else the local Docker. On another host, the
        notebook's folder must be at the same path (shared storage), or in path_map.""",
    ).tag(config=True)

    backend = CaselessStrEnum(
        ["container", "swarm"],
        default_value="container",
        help="""Where the kernel runs: 'container' (a container of docker_host's engine)
        or 'swarm' (a service of the Docker Swarm that docker_host manages, placed
        on any node that meets the constraints; its channels are encrypted with
        CurveZMQ).""",
    ).tag(config=True)

    constraints = List(
        Unicode(),
        help="""With backend 'swarm': placement constraints, as for `docker service
        create --constraint`, e.g. ["node.labels.gpu==h200"].""",
    ).tag(config=True)

    gpu_resource = Unicode(
        "NVIDIA-GPU",
        help="""With backend 'swarm': the kind of generic resource that nodes advertise
        their GPUs as (dockerd's node-generic-resources); a kernel asking for N GPUs
        gets N of them.""",
    ).tag(config=True)

    start_timeout = Float(
        60.0,
        help="""With backend 'swarm': seconds the swarm may take to place and start the
        kernel before the start fails with what the swarm said.""",
    ).tag(config=True)

    tls_ca = Unicode(help="For a tcp:// docker_host: the CA certificate that signed the daemon's.").tag(
        config=True
    )
    tls_cert = Unicode(help="For a tcp:// docker_host: this client's certificate.").tag(config=True)
    tls_key = Unicode(help="For a tcp:// docker_host: this client's private key.").tag(config=True)

    path_map = Dict(
        value_trait=Unicode(),
        help="""Where folders of this machine are on a remote Docker host, as
        {"local prefix": "remote prefix"}, e.g. {"/home": "/nfs/home"}: the
        kernel's folders are mounted from the remote path at their local path.""",
    ).tag(config=True)

    gpus = Unicode(
        "none",
        help="""GPUs for the kernel, as for `docker run --gpus`: 'none', 'all', a count
        such as '2', or device ids such as 'device=0,1'; these need the NVIDIA
        Container Toolkit on the Docker host. A count gets GPUs that no other
        running dockerkernel kernel on that daemon holds (see when_gpus_busy).
        'auto': all GPUs where the daemon can give them, else the CPU, with a
        notice in the notebook.""",
    ).tag(config=True)

    when_gpus_busy = CaselessStrEnum(
        ["share", "refuse"],
        default_value="share",
        help="""When a kernel asks for a count of GPUs and fewer are free: 'share' (it gets
        the ones that the fewest kernels hold, and the notebook says with whom it
        shares them) or 'refuse' (the start fails with a sentence naming who holds
        which GPU).""",
    ).tag(config=True)

    gpu_inventory = List(
        Unicode(),
        help="""The ids of the Docker host's GPUs (e.g. ["0", "1"]), for hosts where
        nvidia-smi cannot run in a GPU container to list them. Empty: ask nvidia-smi.""",
    ).tag(config=True)

    volumes = List(
        Union([Unicode(), Dict()]),
        help="""Extra bind mounts, each '/host/path:/container/path[:ro]', or
        {"source": "/host/path", "target": "/container/path", "read_only": true}
        for paths with colons. The host path must exist.""",
    ).tag(config=True)

    mount = Unicode(
        "auto",
        help="""Which host folder is mounted at its own path, with the notebook's folder
        as the working directory: 'auto' (in a Jupyter server, the server's root
        directory, what its file browser shows; elsewhere, the client's working
        directory; either only when it holds the notebook's folder, else that folder
        alone), 'notebook' (the notebook's folder only), or an absolute path (that
        folder, and the notebook's folder too when it is outside it).""",
    ).tag(config=True)

    home = CaselessStrEnum(
        ["volume", "container"],
        default_value="volume",
        help="""Where the kernel's HOME lives: 'volume' (a Docker volume of its own per
        user and kernelspec, kept across restarts, so caches, downloaded weights and
        `pip install --user` survive; `dockerkernel list` names it and
        `dockerkernel uninstall --purge` removes it) or 'container' (in the
        container, gone at every restart).""",
    ).tag(config=True)

    network = Unicode(
        "isolated",
        help="""The container's network: 'isolated' (a network per user that dockerkernel
        makes, on which containers cannot reach one another: the kernel's ports are
        reachable from the host's loopback only), 'bridge' (Docker's default network, where
        other containers can reach the kernel's ports), 'host' (the kernel listens
        on the host's loopback), 'none' (no network at all: for offline kernels, with
        ipc channels), or the name of another Docker network.""",
    ).tag(config=True)

    channels = CaselessStrEnum(
        ["auto", "ipc", "tcp"],
        default_value="auto",
        help="""How the server reaches the kernel: 'auto' (unix sockets in a folder that only
        you can reach, on engines of this machine; tcp elsewhere), 'ipc' (those sockets, or
        an error before anything starts where the engine cannot carry them), or 'tcp'
        (ports published on the loopback, which any local user can connect to).""",
    ).tag(config=True)

    user = Unicode(
        "host",
        help="""Who the kernel runs as: 'host' (the uid:gid of the user who runs Jupyter,
        so that files written to the notebook directory belong to them), 'image'
        (the image's own USER), or numeric 'UID[:GID]'.""",
    ).tag(config=True)

    environment = Dict(
        value_trait=Unicode(),
        help="""Environment variables for the kernel, besides the kernelspec's 'env'.
        The server's own environment is never passed on.""",
    ).tag(config=True)

    shm_size = Unicode(
        "",
        help="""Size of /dev/shm, e.g. '2g'; PyTorch DataLoader workers need more than
        Docker's 64m default. Empty: Docker's default.""",
    ).tag(config=True)

    mem_limit = Unicode(
        "",
        help="Memory limit of the container, e.g. '8g'. Empty: no limit.",
    ).tag(config=True)

    cpus = Float(
        0.0,
        help="Number of CPUs the container may use, e.g. 1.5. 0: no limit.",
    ).tag(config=True)

    pull_policy = CaselessStrEnum(
        ["missing", "always", "never"],
        default_value="missing",
        help="""When to pull the image: 'missing' (only if it is not present), 'always'
        (before every kernel start), or 'never'.""",
    ).tag(config=True)

    warm_pool = Int(
        0,
        min=0,
        max=16,
        help="""How many kernels to keep started ahead, per user, for the project of the
        last starts (every notebook under the same mount: in a server, its root): a start
        there takes one at once, moved to its notebook's folder, and the pool is filled
        again in the background. Each holds its container's memory while it waits (see
        warm_pool_idle). Only for kernels without GPUs, on this machine's engine. 0: none.""",
    ).tag(config=True)

    warm_pool_idle = Float(
        1800.0,
        min=0.0,
        help="""Seconds a warm pool may go without a start that takes from it before its kernels
        are removed, for the memory they hold; the next start fills it again. 0: never.""",
    ).tag(config=True)

    container_options = Dict(
        help="""Extra keyword arguments for the Docker SDK's `containers.create()`, e.g.
        {"ipc_mode": "host"}. They override dockerkernel's own choices: use with care.""",
    ).tag(config=True)

    @validate("image")
    def _valid_image(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        if value and not _IMAGE.match(value):
            raise TraitError(
                f"invalid image name {value!r}: use a Docker image reference such as 'repo/name:tag'"
            )
        return value

    @validate("kernel_cmd")
    def _valid_kernel_cmd(self, proposal: Any) -> list[str]:
        cmd = list(proposal["value"])
        if not cmd:
            raise TraitError("kernel_cmd is empty: give the command that starts ipykernel")
        if not any("{connection_file}" in arg for arg in cmd):
            raise TraitError(
                "kernel_cmd must pass '{connection_file}' to the kernel, e.g. "
                "python3 -m ipykernel_launcher -f {connection_file}"
            )
        return cmd

    @validate("docker_host")
    def _valid_docker_host(self, proposal: Any) -> str:
        try:
            return check_url(str(proposal["value"]))
        except ValueError as e:
            raise TraitError(str(e)) from None

    @validate("gpu_resource")
    def _valid_gpu_resource(self, proposal: Any) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", proposal["value"]):
            raise TraitError(f"invalid gpu_resource {proposal['value']!r}: use letters, digits, '-' and '_'")
        return str(proposal["value"])

    @validate("path_map")
    def _valid_path_map(self, proposal: Any) -> dict[str, str]:
        for local, remote in proposal["value"].items():
            if not (local.startswith("/") and remote.startswith("/")):
                raise TraitError(f"invalid path_map entry {local!r}: {remote!r}: give two absolute paths")
        return dict(proposal["value"])

    def host(self) -> DockerHost:
        """The Docker host that runs the kernel, with what it takes to reach it."""
        return DockerHost(self.docker_host, self.tls_ca, self.tls_cert, self.tls_key)

    @validate("gpus")
    def _valid_gpus(self, proposal: Any) -> str:
        try:
            return parse_gpus(proposal["value"])
        except ValueError as e:
            raise TraitError(str(e)) from None

    @validate("volumes")
    def _valid_volumes(self, proposal: Any) -> list[str | dict[str, Any]]:
        for spec in proposal["value"]:
            try:
                parse_volume(spec)
            except ValueError as e:
                raise TraitError(str(e)) from None
        return list(proposal["value"])

    @validate("mount")
    def _valid_mount(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        if value in ("auto", "notebook"):
            return value
        if not value.startswith("/"):
            raise TraitError(f"invalid mount {value!r}: use 'auto', 'notebook' or an absolute path")
        return os.path.normpath(value)

    @validate("network")
    def _valid_network(self, proposal: Any) -> str:
        if not _NETWORK.match(proposal["value"]):
            raise TraitError(
                f"invalid network {proposal['value']!r}: use 'bridge', 'host' or a Docker network name"
            )
        return str(proposal["value"])

    @validate("user")
    def _valid_user(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        if value not in ("host", "image") and not _USER.match(value):
            raise TraitError(f"invalid user {value!r}: use 'host', 'image' or numeric UID[:GID]")
        return value

    @validate("environment")
    def _valid_environment(self, proposal: Any) -> dict[str, str]:
        for name in proposal["value"]:
            if not _ENV_NAME.match(name):
                raise TraitError(f"invalid environment variable name {name!r}")
        return dict(proposal["value"])

    @validate("shm_size", "mem_limit")
    def _valid_size(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        if value and not _SIZE.match(value):
            raise TraitError(f"invalid {proposal['trait'].name} {value!r}: use a size such as 512m or 2g")
        return value

    @validate("cpus")
    def _valid_cpus(self, proposal: Any) -> float:
        if proposal["value"] < 0:
            raise TraitError(f"invalid cpus {proposal['value']!r}: use a positive number, or 0 for no limit")
        return float(proposal["value"])

    @classmethod
    def setting_names(cls) -> list[str]:
        """The names that a kernelspec's provisioner config may use."""
        return sorted(cls.class_own_traits(config=True))
