"""Connecting to Docker engines, and what this process keeps about each one.

One client per engine and process, made on first use: the local engine, the
one DOCKER_HOST names, a unix socket, a tcp:// host over mutual TLS, or an
ssh:// host through ssh.py's tunnel. Every other module of this package takes
that client as an argument. The caches kept per engine (what kind it is, its
GPUs, its networks...) are in its EngineState, here, and nowhere else.

The SDK's exceptions for causes a user can fix become a DockerKernelError with
one sentence from errors.py: daemon_errors() for a lost or silent daemon, and
cause() for the short reason inside the others.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import docker
import requests
from docker.constants import DEFAULT_DOCKER_API_VERSION
from docker.errors import APIError, DockerException, NotFound
from docker.tls import TLSConfig
from docker.utils import kwargs_from_env

from .. import errors
from ..errors import DockerKernelError
from ..gpus import GpuSupport
from ..hosts import DockerHost
from ..plan import Engine
from ..ssh import SshHost

# Every call but a pull and an exit wait gives up after this long, so that a
# daemon that stops answering cannot hang a kernel operation forever;
# DOCKERKERNEL_API_TIMEOUT (seconds) sets another.
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


def cause(exc: BaseException) -> str:
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


_clients: dict[DockerHost, docker.DockerClient] = {}
_client_lock = threading.Lock()


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
        release_frames(e)  # the SDK leaves the socket of a failed connection open
        raise DockerKernelError(errors.DOCKER_UNREACHABLE.format(reason=cause(e))) from e


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
def daemon_errors() -> Iterator[None]:
    """Turn a lost connection to the daemon into DOCKER_UNREACHABLE."""
    try:
        yield
    except requests.exceptions.ConnectionError as e:
        release_frames(e)
        raise DockerKernelError(errors.DOCKER_UNREACHABLE.format(reason=cause(e))) from e
    except requests.exceptions.Timeout as e:
        raise DockerKernelError(errors.DOCKER_UNREACHABLE.format(reason=cause(e))) from e


def release_frames(exc: BaseException) -> None:
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


@contextmanager
def untimed_api(client: docker.DockerClient) -> Iterator[docker.APIClient]:
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
        raise DockerKernelError(errors.DOCKER_UNREACHABLE.format(reason=cause(e))) from e
    api.trust_env = client.api.trust_env
    try:
        yield api
    finally:
        api.close()


# Containers that this process creates and starts at once on one engine. The engine does
# much of a start one at a time anyway, and more at once only contend for the CPUs and
# for this process's interpreter lock, which a Jupyter server's event loop needs too:
# with 20 kernels started at once on 2 cores, two at a time made them all ready sooner.
STARTS_AT_ONCE = 2


@dataclass
class EngineState:
    """What this process keeps about one engine while it runs: facts asked once, and its own doings."""

    kind: Engine | None = None  # see kind.engine_of
    gpu_support: GpuSupport | None = None  # see gpus.gpu_support
    gpu_probe: threading.Lock = field(default_factory=threading.Lock)
    accounts: dict[str, tuple[str, str]] = field(default_factory=dict)  # image id: its passwd, group
    networks: dict[str, str] = field(default_factory=dict)  # network name: the id of the one used
    start_slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(STARTS_AT_ONCE)
    )
    watches: dict[str, threading.Event] = field(default_factory=dict)  # container id: set to stop watching
    left_behind: set[str] = field(default_factory=set)  # containers that could not be removed


_states: dict[str, EngineState] = {}
_states_lock = threading.Lock()


def state_of(client: docker.DockerClient) -> EngineState:
    """This process's state of the engine that ``client`` talks to."""
    with _states_lock:
        return _states.setdefault(engine_key(client), EngineState())


@contextmanager
def gone_is_fine() -> Iterator[None]:
    """Ignore 404 (no such container) and 409 (not running, or a removal in progress)."""
    try:
        yield
    except NotFound:
        pass
    except APIError as e:
        if e.status_code != 409:
            raise
