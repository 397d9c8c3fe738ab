"""Thin, synchronous operations on the Docker engine, with errors a user can act on.

The Docker SDK blocks, so the provisioner calls these from worker threads and
the launcher calls them directly. Each one turns the SDK's exceptions for the
causes a user can fix into a DockerKernelError with a sentence from errors.py.
"""

from __future__ import annotations

import datetime
import io
import itertools
import logging
import os
import platform
import pwd
import socket
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import docker
import psutil
import requests
from docker.constants import DEFAULT_DOCKER_API_VERSION
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container, _create_container_args
from docker.tls import TLSConfig
from docker.utils import kwargs_from_env, parse_repository_tag

from . import channels, errors, gpus, provenance
from .channels import CONTAINER_IPC_DIR, Channels
from .channels import choose as choose_channels
from .errors import DockerKernelError, GpusUnavailable, ImageUnavailable, PortTaken
from .gpus import Gpu, GpuSupport, Holding
from .hosts import DockerHost
from .pulls import PullLog
from .settings import DockerSettings
from .spec import (
    LABEL_GPU_LOCK,
    LABEL_GPUS,
    LABEL_KERNEL_ID,
    LABEL_KERNELSPEC,
    LABEL_NETWORK_OF,
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_STARTED,
    LABEL_OWNER_UID,
    LABEL_PROBE,
    POOL_NAME_PREFIX,
    ContainerPlan,
    Engine,
    KernelFile,
    Owner,
    files_archive,
    for_engine,
    gpu_create_kwargs,
    home_folder,
    home_volume_of,
    kernel_files,
    place_files,
    place_gpus,
    with_read_only_files,
    with_startup,
)
from .ssh import SshHost

log = logging.getLogger(__name__)

# Every call but a pull and an exit wait gives up after this long, so that a
# daemon that stops answering cannot hang a kernel operation forever;
# DOCKERKERNEL_API_TIMEOUT (seconds) sets another.
API_TIMEOUT = 60
TIMEOUT_VARIABLE = "DOCKERKERNEL_API_TIMEOUT"


def api_timeout() -> float:
    """Seconds a Docker call may take: DOCKERKERNEL_API_TIMEOUT, else API_TIMEOUT."""
    try:
        return float(os.environ.get(TIMEOUT_VARIABLE, API_TIMEOUT))
    except ValueError:
        return API_TIMEOUT


_clients: dict[DockerHost, docker.DockerClient] = {}
_client_lock = threading.Lock()


def _reason(exc: BaseException) -> str:
    """A short cause for an SDK exception, from the innermost error that says one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, FileNotFoundError):
            return "no Docker socket was found"
        if isinstance(seen, PermissionError):
            return "permission denied on the Docker socket"
        if isinstance(seen, ConnectionRefusedError):
            return "the connection was refused"
        if isinstance(seen, requests.exceptions.Timeout):  # a daemon that hangs, stopped or overloaded
            return f"it did not answer within {api_timeout():g} s"
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, APIError) and exc.explanation:
        return str(exc.explanation).strip()
    text = str(exc)
    for marker in ("FileNotFoundError", "No such file or directory"):
        if marker in text:
            return "no Docker socket was found"
    if "Permission denied" in text or "PermissionError" in text:
        return "permission denied on the Docker socket"
    return text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__


def get_client(host: DockerHost | str = "") -> docker.DockerClient:
    """The process's Docker client for ``host``, made on first use.

    ``host`` is a kernelspec's Docker host (see hosts.py), or its docker_host
    URL; '' is the engine that DOCKER_HOST and friends name.
    """
    if isinstance(host, str):
        host = DockerHost(host)
    with _client_lock:
        if host not in _clients:
            _clients[host] = _new_client(host)
        return _clients[host]


def forget_clients() -> None:
    """Close every client of this process, and the SSH connections under them."""
    with _client_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
    SshHost.close_all()


def _new_client(host: DockerHost) -> docker.DockerClient:
    try:
        if host.scheme == "ssh":
            return docker.DockerClient(base_url=SshHost.of(host.url).docker_url(), timeout=api_timeout())
        if host.scheme == "tcp":
            return _tls_client(host)
        if host.url:
            return docker.DockerClient(base_url=host.url, timeout=api_timeout())
        return docker.from_env(timeout=api_timeout())
    except DockerException as e:
        _release_frames(e)  # the SDK leaves the socket of a failed connection open
        raise DockerKernelError(errors.DOCKER_UNREACHABLE.format(reason=_reason(e))) from e


def _tls_client(host: DockerHost) -> docker.DockerClient:
    """A client of a tcp:// host, whose certificates are checked against its CA and no other.

    requests lets REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, where set, replace the
    CA that the SDK gives it, and the daemon's certificate then fails to
    verify. So the client is made without asking the daemon's version, told
    not to take settings from the environment, and only then asks it.
    """
    client = docker.DockerClient(
        base_url=host.url, tls=_tls_config(host), version=DEFAULT_DOCKER_API_VERSION, timeout=api_timeout()
    )
    client.api.trust_env = False
    try:
        client.api._version = str(client.api.version(api_version=False)["ApiVersion"])
    except (requests.exceptions.RequestException, APIError) as e:
        client.close()
        raise DockerException(e) from e
    return client


def _tls_config(host: DockerHost) -> TLSConfig:
    """Mutual TLS with verification, as `docker --tlsverify` does."""
    if not all(host.tls_files):
        raise DockerKernelError(errors.TLS_FILES_MISSING.format(host=host.url))
    for path in host.tls_files:
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise DockerKernelError(
                errors.TLS_FILE_UNREADABLE.format(path=path, host=host.url, reason=e.strerror)
            ) from None
    return TLSConfig(client_cert=(host.tls_cert, host.tls_key), ca_cert=host.tls_ca, verify=True)


def engine_key(client: docker.DockerClient) -> str:
    """Which engine ``client`` talks to, for the caches kept per engine.

    Not its base_url: the SDK gives every unix socket the same one,
    'http+docker://localhost', and keeps the socket's path in its adapter.
    """
    socket_path = getattr(getattr(client.api, "_custom_adapter", None), "socket_path", None)
    return f"unix://{socket_path}" if socket_path else str(client.api.base_url)


@contextmanager
def _daemon_errors() -> Iterator[None]:
    """Turn a lost connection to the daemon into DOCKER_UNREACHABLE."""
    try:
        yield
    except requests.exceptions.ConnectionError as e:
        _release_frames(e)
        raise DockerKernelError(errors.DOCKER_UNREACHABLE.format(reason=_reason(e))) from e
    except requests.exceptions.Timeout as e:
        raise DockerKernelError(errors.DOCKER_UNREACHABLE.format(reason=_reason(e))) from e


def _release_frames(exc: BaseException) -> None:
    """Close the sockets left in the frames of an exception, and the exceptions it carries.

    When the daemon is gone, the Docker SDK's unix-socket connection raises from
    connect() without closing the socket it made, leaving it to the garbage
    collector with a ResourceWarning; it is closed here instead.
    """
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            for value in list(tb.tb_frame.f_locals.values()):
                if isinstance(value, socket.socket):
                    value.close()
            tb = tb.tb_next
        carried = (current.__cause__, current.__context__, *current.args)
        pending += [e for e in carried if isinstance(e, BaseException)]


def this_process_owner() -> Owner:
    """The Owner labels for containers started by this process."""
    return Owner(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=f"{psutil.Process().create_time():.2f}",
        uid=os.getuid(),
    )


def owner_alive(labels: dict[str, str]) -> bool | None:
    """Whether the process that started a container still runs; None when it can't be told.

    Only "gone" (False) lets a container be pruned, so anything unsure is
    None: an owner on another host, one of another user (where /proc hides
    other users' processes, hidepid=2, they look gone), a process that cannot
    be read, labels that are not ours.
    """
    if labels.get(LABEL_OWNER_HOST) != socket.gethostname():
        return None
    if labels.get(LABEL_OWNER_UID) != str(os.getuid()):
        return None
    try:
        proc = psutil.Process(int(labels.get(LABEL_OWNER_PID, "")))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return f"{proc.create_time():.2f}" == labels.get(LABEL_OWNER_STARTED)
    except psutil.NoSuchProcess:
        return False
    except (ValueError, psutil.Error):
        return None


PullEvents = Callable[[dict[str, Any]], None]


def needs_pull(client: docker.DockerClient, image: str, pull_policy: str) -> bool:
    """Whether ``image`` must be pulled before a start, as ``pull_policy`` says.

    With pull_policy 'never', an image that is not present is an error.
    """
    if pull_policy == "always":
        return True
    if image_present(client, image):
        return False
    if pull_policy == "never":
        raise DockerKernelError(errors.IMAGE_NOT_PRESENT.format(image=image))
    return True


def image_present(client: docker.DockerClient, image: str) -> bool:
    """Whether the daemon has ``image``."""
    with _daemon_errors():
        try:
            client.images.get(image)
            return True
        except ImageNotFound:
            return False


def pin_reference(client: docker.DockerClient, image: str) -> str:
    """What pins ``image`` as the engine has it now: its digest in its repository, or, for an image
    built here that no registry has, its id."""
    with _daemon_errors():
        try:
            attrs = client.api.inspect_image(image)
        except ImageNotFound:
            raise DockerKernelError(errors.PIN_NEEDS_IMAGE.format(image=image)) from None
    return provenance.repo_digest(image, attrs.get("RepoDigests") or []) or str(attrs["Id"])


def image_id(client: docker.DockerClient, image: str) -> str | None:
    """The id of the image that ``image`` names on the engine now; None where it has none."""
    with _daemon_errors():
        try:
            return str(client.api.inspect_image(image)["Id"])
        except ImageNotFound:
            return None


def pull_image(client: docker.DockerClient, image: str, on_event: PullEvents | None = None) -> None:
    """Pull ``image``, passing each of the engine's progress events to ``on_event``.

    A pull of several GB takes as long as it takes: it runs on a connection of
    its own with no read timeout. A failure, at the start or in the middle of
    the stream, is an IMAGE_UNAVAILABLE error naming the image and the reason.
    """
    repository, tag = parse_repository_tag(image)
    with _untimed_api(client) as api, _daemon_errors():
        try:
            for event in api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                if "error" in event:
                    reason = str(event["error"]).strip().splitlines()[0]
                    raise ImageUnavailable(image, reason)
                if on_event is not None:
                    on_event(event)
        except (APIError, requests.exceptions.RequestException) as e:
            raise ImageUnavailable(image, _reason(e)) from e


@contextmanager
def _untimed_api(client: docker.DockerClient) -> Iterator[docker.APIClient]:
    """A low-level client of its own to ``client``'s engine with no read timeout, for calls that may
    block for long."""
    engine = engine_key(client)
    where: dict[str, Any]
    if engine.startswith("unix://"):
        where = {"base_url": engine}
    elif client.api.cert:  # a tcp:// host: the same certificates, and only its CA (see _tls_client)
        tls = TLSConfig(client_cert=client.api.cert, ca_cert=client.api.verify, verify=True)
        where = {"base_url": engine, "tls": tls}
    else:
        where = kwargs_from_env()
    try:
        api = docker.APIClient(version=client.api.api_version, timeout=None, **where)
    except DockerException as e:
        raise DockerKernelError(errors.DOCKER_UNREACHABLE.format(reason=_reason(e))) from e
    api.trust_env = client.api.trust_env
    try:
        yield api
    finally:
        api.close()


def start_container(
    client: docker.DockerClient, plan: ContainerPlan, created: Callable[[], None] | None = None
) -> str:
    """Put the kernel's files in place, create the planned container and start it.

    The kernel's user gets its passwd and group entries in copies of the
    image's own files. Where the kernel's folder carries its files (ipc), they
    are in place before the create, and the start follows it with no copy
    (see spec.place_files). ``created`` is called once the container exists.
    Returns the container id. On any failure the container is removed again
    and a DockerKernelError says why.
    """
    container: Container | None = None
    try:
        with _daemon_errors():
            image = client.api.inspect_image(plan.image)
            plan = _with_record(client, plan, image)
            plan, copied = _files_in_place(client, plan, str(image["Id"]))
            container = _create(client, plan)
            if created is not None:
                created()
            if copied:
                container.put_archive("/", files_archive(plan, copied))
            container.start()
            return str(container.id)
    except BaseException as e:
        if container is not None:
            remove_container(client, container.id)
        if isinstance(e, APIError):
            raise _start_error(plan, e) from e
        if isinstance(e, TypeError):
            # The SDK rejects an unknown keyword: it came from container_options.
            raise DockerKernelError(errors.CONTAINER_START_FAILED.format(image=plan.image, reason=e)) from e
        raise


def _with_record(client: docker.DockerClient, plan: ContainerPlan, image: dict[str, Any]) -> ContainerPlan:
    """The plan with the kernel's record (see provenance.py), made from the engine's ``image`` inspection."""
    containerd = engine_of(client).containerd_store
    record = provenance.record(
        kernelspec=plan.create_kwargs["labels"].get(LABEL_KERNELSPEC, ""),
        image=plan.installed_image or plan.image,
        run_image=plan.image,
        image_attrs=image,
        id_kind=provenance.MANIFEST_DIGEST if containerd else provenance.CONFIG_DIGEST,
        gpus=[{"id": gpu, "name": name} for gpu, name in plan.gpus_given],
        docker_host=plan.host.url or os.environ.get("DOCKER_HOST", "") or "local",
        started=datetime.datetime.now(datetime.timezone.utc),
        settings=plan.settings,
    )
    return with_startup(plan, record, (image.get("Config") or {}).get("Env") or [])


def _files_in_place(
    client: docker.DockerClient, plan: ContainerPlan, image_id: str
) -> tuple[ContainerPlan, list[KernelFile]]:
    """Write the kernel's files that go in through its folder; the plan with the files it mounts, and the
    files to copy into the created container."""
    passwd = group = None
    if plan.identity is not None:
        passwd, group = _image_accounts(client, image_id)
    home = home_folder(plan)
    if home is not None and plan.channels.carries_files:
        volume = home_volume_of(plan)
        if volume is not None and _volume_exists(client, volume):
            home = None  # its owner was set at its first start
    placed = place_files(plan, kernel_files(plan, passwd, group), home)
    for file in placed.in_folder:
        target = os.path.join(plan.channels.folder, os.path.relpath(file.path, CONTAINER_IPC_DIR))
        channels.write_private(target, file.data or b"", file.mode)
    sources = {file.path: channels.account_file(file.data or b"") for file in placed.mounted}
    return with_read_only_files(plan, sources, engine_of(client).selinux), placed.copied


def _volume_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.api.inspect_volume(name)
        return True
    except NotFound:
        return False


_accounts: dict[tuple[str, str], tuple[str, str]] = {}  # (engine, image id): its /etc/passwd and /etc/group


def _image_accounts(client: docker.DockerClient, image_id: str) -> tuple[str, str]:
    """The image's /etc/passwd and /etc/group, read once per image from a container of it that never starts.

    An image id names its content, so the files read once hold for every
    later container of that image.
    """
    key = (engine_key(client), image_id)
    if key not in _accounts:
        reader = client.containers.create(
            image_id, command=["true"], network_disabled=True, labels={LABEL_PROBE: "1"}
        )
        try:
            _accounts[key] = (_read_file(reader, "/etc/passwd"), _read_file(reader, "/etc/group"))
        finally:
            remove_container(client, reader.id)
    return _accounts[key]


def _read_file(container: Container, path: str) -> str:
    """A text file of a container that has not started; '' when there is none."""
    try:
        chunks, _ = container.get_archive(path)
    except NotFound:
        return ""
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        member = tar.extractfile(os.path.basename(path))
        return member.read().decode(errors="replace") if member is not None else ""


def _create(client: docker.DockerClient, plan: ContainerPlan) -> Container:
    """Create the planned container, and first its isolated network where it is missing."""
    if plan.network is None:
        return _create_container(client, plan.create_kwargs)
    kwargs = {**plan.create_kwargs, "network": ensure_isolated_network(client, plan.network, plan.owner_uid)}
    try:
        return _create_container(client, kwargs)
    except NotFound as e:
        if "network" not in _reason(e):
            raise
        # Removed since this process made it (`docker network prune`, say): make it again.
        _networks.pop((engine_key(client), plan.network), None)
        kwargs["network"] = ensure_isolated_network(client, plan.network, plan.owner_uid)
        return _create_container(client, kwargs)


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


_networks: dict[tuple[str, str], str] = {}  # (daemon, network name): the id of the network used
ICC_OPTION = "com.docker.network.bridge.enable_icc"


def ensure_isolated_network(client: docker.DockerClient, name: str, uid: int) -> str:
    """Create a user's isolated network once: a bridge on which containers cannot reach one another.

    Docker already keeps containers of different networks apart; with
    inter-container traffic off, a user's kernels cannot reach each other
    either. Ports published on the host's loopback still reach each kernel.
    Returns the network's id. Docker does not make names unique: two
    processes that create it at once both succeed. All of them then use the
    oldest one (by creation time, then id), and the others are removed where no
    container uses them. A network of that name without the user's label, or
    with inter-container traffic on, is never used nor removed: on a shared
    engine, someone else may have made it to reach the user's kernels.
    """
    key = (engine_key(client), name)
    if key in _networks:
        return _networks[key]

    def ours() -> list[dict[str, Any]]:
        """The networks of that name that are the user's, made as above: another user of a shared engine
        could have made one of that name, with inter-container traffic on."""
        return [
            n
            for n in client.api.networks(names=[name])
            if n["Name"] == name
            and (n.get("Labels") or {}).get(LABEL_NETWORK_OF) == str(uid)
            and (n.get("Options") or {}).get(ICC_OPTION) == "false"
        ]

    with _daemon_errors():
        found = ours()
        if not found:
            client.api.create_network(
                name, driver="bridge", options={ICC_OPTION: "false"}, labels={LABEL_NETWORK_OF: str(uid)}
            )
            found = ours()
        oldest, *others = sorted(found, key=lambda n: (_created(n["Created"]), n["Id"]))
        for other in others:
            with _gone_is_fine():  # 409: in use, by a container of a process that chose it just before
                client.api.remove_network(other["Id"])
    _networks[key] = str(oldest["Id"])
    return _networks[key]


def _created(stamp: str) -> str:
    """An RFC 3339 time as Docker writes it, with up to nine digits of seconds, made sortable as text."""
    whole, _, fraction = stamp.partition(".")
    digits = "".join(itertools.takewhile(str.isdigit, fraction))
    return whole[:19] + digits.ljust(9, "0")


def _start_error(plan: ContainerPlan, e: APIError) -> DockerKernelError:
    reason = _reason(e)
    if "could not select device driver" in reason and "gpu" in reason:
        return GpusUnavailable(errors.GPUS_UNAVAILABLE.format(gpus=plan.gpus))
    if "executable file not found" in reason or ("exec:" in reason and "no such file" in reason):
        command = plan.create_kwargs["command"][0]
        return DockerKernelError(errors.KERNEL_CMD_NOT_FOUND.format(image=plan.image, command=command))
    if "address already in use" in reason or "port is already allocated" in reason:
        return PortTaken(errors.PORT_TAKEN.format(reason=reason))
    if "bind source path does not exist" in reason:  # on another Docker host; this one's were checked
        path = reason.rpartition(":")[2].strip()
        return DockerKernelError(errors.FOLDER_NOT_ON_HOST.format(path=path, host=plan.host))
    if isinstance(e, ImageNotFound):
        return DockerKernelError(errors.IMAGE_UNAVAILABLE.format(image=plan.image, reason=reason))
    return DockerKernelError(errors.CONTAINER_START_FAILED.format(image=plan.image, reason=reason))


_engines: dict[str, Engine] = {}


def engine_of(client: docker.DockerClient) -> Engine:
    """Whether the daemon is Podman, and whether it runs rootless; asked once per daemon."""
    key = engine_key(client)
    if key not in _engines:
        with _daemon_errors():
            components = client.version().get("Components") or []
            podman_versions = [
                c.get("Details", {}).get("APIVersion", "4.0.0")
                for c in components
                if "podman" in str(c.get("Name", "")).lower()
            ]
            podman = bool(podman_versions)
            if podman:
                # Podman's Docker-compatible info does not say; its own API does.
                url = f"{client.api.base_url}/v{podman_versions[0]}/libpod/info"
                response = client.api.get(url, timeout=api_timeout())
                response.raise_for_status()
                rootless = bool(response.json().get("host", {}).get("security", {}).get("rootless"))
            info = client.info()
            security = info.get("SecurityOptions") or []
            if not podman:
                rootless = "name=rootless" in security
        _engines[key] = Engine(
            podman=podman,
            rootless=rootless,
            selinux="name=selinux" in security,
            containerd_store=any(
                "io.containerd.snapshotter" in str(value) for _, value in info.get("DriverStatus") or []
            ),
            local=shares_this_kernel(info),
        )
    return _engines[key]


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


def shares_this_kernel(info: dict[str, Any]) -> bool:
    """Whether an engine (its ``docker info``) runs on this machine's kernel, so that a folder bind-mounted
    from here is the same folder for its containers, sockets included.

    Docker Desktop and Podman machines run their engine in a VM: another kernel,
    whose bind mounts of this machine's files are shares that carry no sockets.
    """
    if sys.platform != "linux" or str(info.get("OSType", "linux")) != "linux":
        return False
    if "docker desktop" in str(info.get("OperatingSystem", "")).lower():
        return False
    return str(info.get("KernelVersion", "")) == platform.release()


_gpu_support: dict[str, GpuSupport] = {}
_gpu_probe_lock = threading.Lock()


def gpu_support(client: docker.DockerClient, image: str, *, fresh: bool = False) -> GpuSupport:
    """Whether the daemon gives containers GPUs, and which; asked once per daemon (``fresh``: again).

    The daemon itself is asked, whichever way it serves GPUs: a throwaway
    container of ``image`` (present on the daemon) with every GPU runs
    nvidia-smi, which the NVIDIA hook puts into GPU containers. That covers the
    NVIDIA runtime, the hook alone on dockerd's PATH (no runtime entry), and
    CDI, which is tried when the first way is refused.
    """
    key = engine_key(client)
    with _gpu_probe_lock:
        if fresh or key not in _gpu_support:
            _gpu_support[key] = _probe_gpus(client, image)
        return _gpu_support[key]


def forget_gpu_support(client: docker.DockerClient) -> None:
    """Ask the daemon again at the next start: it refused GPUs that it was thought to give."""
    _gpu_support.pop(engine_key(client), None)


def _probe_gpus(client: docker.DockerClient, image: str) -> GpuSupport:
    podman = engine_of(client).podman
    # Podman serves GPUs through CDI only; a device request it would ignore.
    methods = [gpus.CDI] if podman else [gpus.NVIDIA, gpus.CDI]
    refusals = []
    for method in methods:
        try:
            status, out, err = run_once(
                client, image, gpus.NVIDIA_SMI_QUERY, **gpu_create_kwargs(None, method, podman)
            )
        except APIError as e:  # the create itself refused the devices
            status, out, err = None, "", _reason(e)
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
    with _daemon_errors():
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


GPU_LOCK_NAME = "dockerkernel-gpu-lock"
GPU_LOCK_WAIT = 60.0  # seconds a start waits for another start's allocation
GPU_LOCK_STALE = 30.0  # a lock held this long by the same holder is left by a crashed process


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
            with _daemon_errors():
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


def place_kernel_gpus(
    client: docker.DockerClient, plan: ContainerPlan, kernel_log: logging.Logger | logging.LoggerAdapter[Any]
) -> str:
    """Start the planned container with the GPUs it gets on this daemon; the container id.

    A count is chosen under the daemon's GPU lock, which this start holds
    until its container exists, so that two starts never choose the same GPU.
    """
    support = gpu_support(client, plan.image).with_inventory(plan.gpu_inventory)
    lock = GpuLock(client, plan.image) if plan.gpus.isdigit() and support.gpus else None
    with lock or nullcontext():
        holdings = gpu_holdings(client, support.gpus) if support.available else []
        plan = place_gpus(plan, support, holdings, podman=engine_of(client).podman)
        if plan.notice:
            (kernel_log.warning if plan.notice_stream == "stderr" else kernel_log.info)("%s", plan.notice)
        try:
            return start_container(client, plan, created=lock.release if lock else None)
        except GpusUnavailable:
            forget_gpu_support(client)  # it refused after all: ask again next time
            raise


class StartCancelled(Exception):
    """The start was cancelled while it pulled the image: no container was made."""


def run_kernel_container(
    plan: ContainerPlan,
    pull_policy: str,
    kernel_log: logging.Logger | logging.LoggerAdapter[Any] = log,
    cancelled: threading.Event | None = None,
) -> tuple[str, Future[int]]:
    """Pull the image as ``pull_policy`` says, start the planned container and watch it.

    The whole start, shared by the provisioner (in a thread) and the
    launcher. A pull's progress and notices about the kernel go to
    ``kernel_log``. Once ``cancelled`` is set, no container is created.
    Returns the container id and a future for its exit status.
    """
    client = get_client(plan.host)
    plan = for_engine(plan, engine_of(client))
    remove_left_behind(client)
    if plan.image.startswith("sha256:"):  # pinned to an image built here: no registry has it
        if not image_present(client, plan.image):
            kernel = plan.create_kwargs["labels"].get(LABEL_KERNELSPEC, "")
            raise DockerKernelError(errors.PINNED_IMAGE_GONE.format(kernel=kernel, image=plan.image))
    elif needs_pull(client, plan.image, pull_policy):
        progress = PullLog(plan.image, kernel_log)
        pull_image(client, plan.image, progress)
        progress.finished()
    if cancelled is not None and cancelled.is_set():
        raise StartCancelled(plan.image)
    with _start_slots(client):
        if plan.gpus == "none":
            container_id = start_container(client, plan)
        else:
            container_id = place_kernel_gpus(client, plan, kernel_log)
    return container_id, watch_container(client, container_id)


# Containers that this process creates and starts at once on one engine. The engine does
# much of a start one at a time anyway, and more at once only contend for the CPUs and
# for this process's interpreter lock, which a Jupyter server's event loop needs too:
# with 20 kernels started at once on 2 cores, two at a time made them all ready sooner.
STARTS_AT_ONCE = 2
_slots: dict[str, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def _start_slots(client: docker.DockerClient) -> threading.BoundedSemaphore:
    with _slots_lock:
        return _slots.setdefault(engine_key(client), threading.BoundedSemaphore(STARTS_AT_ONCE))


def run_once(
    client: docker.DockerClient, image: str, argv: list[str], **create_kwargs: Any
) -> tuple[int | None, str, str]:
    """Run ``argv`` in a throwaway container of ``image``, with no network.

    Returns the exit status (None when the command could not be started at
    all, e.g. it does not exist), stdout and stderr. The container is removed.
    """
    container: Container | None = None
    with _daemon_errors():
        try:
            container = client.containers.create(
                image, entrypoint=argv, network_disabled=True, labels={LABEL_PROBE: "1"}, **create_kwargs
            )
            try:
                container.start()
            except APIError as e:
                return None, "", _reason(e)
            status = int(container.wait(timeout=api_timeout())["StatusCode"])
            out = container.logs(stdout=True, stderr=False).decode(errors="replace")
            err = container.logs(stdout=False, stderr=True).decode(errors="replace")
            return status, out, err
        finally:
            if container is not None:
                remove_container(client, container.id)


@contextmanager
def _gone_is_fine() -> Iterator[None]:
    """Ignore 404 (no such container) and 409 (not running, or a removal in progress)."""
    try:
        yield
    except NotFound:
        pass
    except APIError as e:
        if e.status_code != 409:
            raise


def signal_container(client: docker.DockerClient, container_id: str, signum: int) -> None:
    """Send a signal to the kernel; a container that has exited or is gone is fine."""
    with _daemon_errors(), _gone_is_fine():
        client.api.kill(container_id, signal=signum)


def last_log_line(client: docker.DockerClient, container_id: str) -> str:
    """The last line a container wrote, for telling why it exited; 'no output' when there is none."""
    with _daemon_errors(), _gone_is_fine():
        lines = client.api.logs(container_id, tail=20).decode(errors="replace").strip().splitlines()
        return lines[-1].strip()[:300] if lines else "no output"
    return "no output"


def remove_container(client: docker.DockerClient, container_id: str) -> None:
    """Remove a kernel container, running or not; one already gone is fine."""
    with _daemon_errors(), _gone_is_fine():
        client.api.remove_container(container_id, force=True)


WATCH_RETRY_MAX = 5.0  # seconds between tries to reach a daemon that lost sight of a container

_watches: dict[str, threading.Event] = {}  # container id: set to stop watching it


def wait_container(client: docker.DockerClient, container_id: str, stop: threading.Event) -> int:
    """Block until the container exits and return its exit status; -1 once it is gone.

    Uses a connection of its own, with no read timeout, so that a long-lived
    wait neither holds one of the shared client's connections nor times out.
    A connection that drops is not an exit: the daemon may be restarting
    (with live-restore its containers run on) or a remote link may have
    idled out. The wait is then made again once the daemon answers, and the
    daemon says whether the container exited meanwhile. Ends with -1 when
    ``stop`` is set.
    """
    delay = 0.1
    lost = False
    podman = engine_of(client).podman
    while not stop.is_set():
        try:
            with _untimed_api(client) as api:
                if lost:
                    api.ping()
                    log.info("The daemon answers again: watching container %s", container_id[:12])
                    lost = False
                if podman:
                    return int(api.wait(container_id)["StatusCode"])
                return _exit_status(api, container_id)
        except NotFound:
            return -1
        except (DockerKernelError, DockerException, requests.exceptions.RequestException) as e:
            _release_frames(e)  # the SDK leaves the socket of a failed connection open
            if not lost:
                log.warning(
                    "Lost sight of container %s (%s): it is taken as running until the daemon says otherwise",
                    container_id[:12],
                    _reason(e),
                )
                lost = True
            stop.wait(delay)
            delay = min(delay * 2, WATCH_RETRY_MAX)
    return -1


def _exit_status(api: docker.APIClient, container_id: str) -> int:
    """The container's exit status, from its 'die' event; NotFound once it is gone.

    Docker sends the event as the container's process exits, and answers a wait
    only after it has released the container's network and published ports,
    some hundreds of milliseconds later: a client's shutdown ends at the
    kernel's exit, as with a local kernel. The events are asked for before the
    container's state, so that an exit in between is not missed.
    """
    events = api.events(filters={"container": container_id, "event": ["die", "destroy"]}, decode=True)
    try:
        state = api.inspect_container(container_id)["State"]
        if not state.get("Running") and state.get("Status") != "created":
            return int(state.get("ExitCode", -1))
        for event in events:
            if event.get("Action", event.get("status")) == "destroy":
                raise NotFound(f"container {container_id} was removed")
            return int(event.get("Actor", {}).get("Attributes", {}).get("exitCode", -1))
    finally:
        events.close()
    raise requests.exceptions.ConnectionError("the daemon ended the stream of events")


def watch_container(client: docker.DockerClient, container_id: str) -> Future[int]:
    """A future for the container's exit status, resolved by a thread of its own; see stop_watching()."""
    future: Future[int] = Future()
    future.set_running_or_notify_cancel()  # so that a cancelled await cannot cancel it
    stop = _watches.setdefault(container_id, threading.Event())

    def wait() -> None:
        status = wait_container(client, container_id, stop)
        _watches.pop(container_id, None)
        future.set_result(status)

    threading.Thread(target=wait, name=f"dockerkernel-wait-{container_id[:12]}", daemon=True).start()
    return future


_left_behind: dict[str, set[str]] = {}  # daemon: containers that could not be removed


def leave_behind(client: docker.DockerClient, container_id: str) -> None:
    """Give up on a container that could not be removed, its daemon out of reach, for now.

    Its watch resolves to -1 at its next try; the container is removed at the
    next kernel start on that daemon (remove_left_behind), or by the reaper.
    """
    stop = _watches.get(container_id)
    if stop is not None:
        stop.set()
    _left_behind.setdefault(engine_key(client), set()).add(container_id)


def remove_left_behind(client: docker.DockerClient) -> None:
    """Remove the containers that could not be removed earlier, now that the daemon answers."""
    left = _left_behind.get(engine_key(client), set())
    for container_id in list(left):
        remove_container(client, container_id)
        left.discard(container_id)
        log.info("Removed container %s, left behind while the daemon was out of reach", container_id[:12])


HOME_RELEASE_WAIT = 2.0  # seconds a home's kernels may take to be seen exited


def remove_home(client: docker.DockerClient, volume: str) -> bool:
    """Remove a kernel's home volume; False when there was none.

    Kernels that have exited may still hold it for a moment: a shutdown ends at
    the kernel's exit, and its container is removed just after. Their removal
    is made, or waited for, here; a kernel that still runs is an error.
    """
    with _daemon_errors():
        try:
            client.api.remove_volume(volume)
            return True
        except NotFound:
            return False
        except APIError as e:
            if e.status_code != 409:
                raise
            in_use = DockerKernelError(errors.HOME_IN_USE.format(volume=volume))
            running = ("running", "paused", "restarting")
            # The engine says 'running' until it has released an exited container's network.
            deadline = time.monotonic() + HOME_RELEASE_WAIT
            while True:
                holders = client.api.containers(all=True, filters={"volume": volume})
                if any(LABEL_KERNEL_ID not in (h.get("Labels") or {}) for h in holders):
                    raise in_use from e
                if not any(h.get("State") in running for h in holders):
                    break
                if time.monotonic() > deadline:
                    raise in_use from e
                time.sleep(0.05)
            for holder in holders:
                remove_container(client, holder["Id"])  # one whose removal is under way is fine
            deadline = time.monotonic() + api_timeout()
            while client.api.containers(all=True, filters={"volume": volume}):
                if time.monotonic() > deadline:
                    raise in_use from e
                time.sleep(0.05)
        try:
            client.api.remove_volume(volume)
            return True
        except NotFound:
            return False


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
    with _daemon_errors():
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
    with _daemon_errors():
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
