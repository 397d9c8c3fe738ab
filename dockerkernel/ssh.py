"""Docker hosts reached over SSH: one long-lived connection per host, shared by this process's kernels.

- The Docker API: the Docker SDK talks to a unix socket of this process, in a
  folder only this user can enter. Each connection to it is carried to the
  socket of the engine that the remote user's `docker` uses (its DOCKER_HOST or
  context: a rootless engine, say), as a forwarded unix socket channel; where that
  engine is not on a unix socket, by `docker system dial-stdio`, as
  `docker -H ssh://` does. Channels, not sessions: sshd allows only a few
  sessions per connection (MaxSessions, 10), and every running kernel holds
  one API connection, the wait for its exit.
- The kernels' channels: a kernel's ports are published on the remote host's
  loopback, and carried by local forwards on the same ports of this machine's
  loopback. The server connects to 127.0.0.1 as for a local kernel.

The listeners belong to this process, not to one SSH connection: when the
connection drops (a network blip, an idle timeout, sshd restarted), the next
connection to any listener makes a new one, and ZeroMQ's own reconnects carry
the kernel's channels over it. The kernel never notices.

asyncssh runs on an event loop of its own, in a daemon thread, so this works
the same from the CLI, the launcher and the threads where a Jupyter server runs
Docker calls; the server's own event loop is never blocked by it. Keys, agent,
~/.ssh/config and known_hosts are the user's, as for `ssh`: an unknown host key
is refused, never accepted.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncssh

from . import errors
from .errors import DockerKernelError, PortTaken

log = logging.getLogger(__name__)

T = TypeVar("T")

KEEPALIVE_INTERVAL = 15  # seconds between keepalives: a dead connection is found within a minute
KEEPALIVE_COUNT = 4
CONNECT_TIMEOUT = 30  # seconds to connect and log in
DIAL_STDIO = "docker system dial-stdio"
ENDPOINT = "docker context inspect --format '{{.Endpoints.docker.Host}}'"

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the SSH event loop from any other thread, and wait for it.

    What it waits for is bounded: connecting by CONNECT_TIMEOUT, the rest is local.
    """
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="dockerkernel-ssh", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coroutine, _loop).result()


class SshHost:
    """A Docker host at ``ssh://[user@]host[:port]``, as this process reaches it."""

    _hosts: dict[str, SshHost] = {}
    _hosts_lock = threading.Lock()

    @classmethod
    def of(cls, url: str) -> SshHost:
        """The one SshHost of this process for ``url``."""
        with cls._hosts_lock:
            if url not in cls._hosts:
                cls._hosts[url] = cls(url)
            return cls._hosts[url]

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.hostname = parts.hostname or ""
        self.port = parts.port
        self.username = parts.username
        self._connection: asyncssh.SSHClientConnection | None = None
        self._connecting: asyncio.Lock | None = None
        self._listeners: dict[int, asyncio.Server] = {}
        self._folder = tempfile.mkdtemp(prefix="dockerkernel-ssh-")  # mode 0700
        atexit.register(shutil.rmtree, self._folder, True)
        self.docker_socket = os.path.join(self._folder, "docker.sock")
        self._api: asyncio.Server | None = None
        self._engine_socket: str | None = None  # the remote engine's unix socket, once known

    # What other threads call.

    def docker_url(self) -> str:
        """A unix:// URL of this machine that reaches the host's Docker API; connects first,
        so that an unreachable host is one sentence here rather than a reset later."""
        return _run(self._serve_api())

    def forward(self, ports: Iterable[int]) -> None:
        """Carry the host's loopback ``ports`` on the same ports of this machine's loopback.

        PortTaken when another program has one of them here.
        """
        _run(self._forward(list(ports)))

    def unforward(self, ports: Iterable[int]) -> None:
        _run(self._unforward(list(ports)))

    @classmethod
    def close_all(cls) -> None:
        """Close every host's listeners and connection; the next use connects again."""
        with cls._hosts_lock:
            hosts, cls._hosts = list(cls._hosts.values()), {}
        for host in hosts:
            _run(host._close())
            shutil.rmtree(host._folder, ignore_errors=True)

    # On the SSH event loop.

    async def _connect(self) -> asyncssh.SSHClientConnection:
        """The live SSH connection, made anew when there is none or it dropped."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            connection = self._connection
            if connection is None or connection.is_closed():
                try:
                    connection = await asyncssh.connect(
                        self.hostname,
                        port=self.port if self.port is not None else (),
                        username=self.username if self.username is not None else (),
                        keepalive_interval=KEEPALIVE_INTERVAL,
                        keepalive_count_max=KEEPALIVE_COUNT,
                        connect_timeout=CONNECT_TIMEOUT,
                    )
                except (OSError, asyncssh.Error) as e:
                    raise DockerKernelError(
                        errors.SSH_UNREACHABLE.format(host=self.url, reason=_reason(e))
                    ) from None
                self._connection = connection
                if self._engine_socket is None:
                    self._engine_socket = await self._find_engine_socket(connection)
                log.info("Connected to the Docker host %s over SSH", self.url)
            return connection

    async def _find_engine_socket(self, connection: asyncssh.SSHClientConnection) -> str:
        """The unix socket of the engine that `docker` on the host uses; '' where it has none."""
        try:
            found = await connection.run(ENDPOINT, check=True, timeout=CONNECT_TIMEOUT)
        except (OSError, asyncssh.Error) as e:
            log.info("Reaching the Docker host %s by dial-stdio: %s", self.url, e)
            return ""
        endpoint = str(found.stdout).strip()
        return endpoint.removeprefix("unix://") if endpoint.startswith("unix:///") else ""

    async def _serve_api(self) -> str:
        await self._connect()
        if self._api is None:
            self._api = await asyncio.start_unix_server(self._bridge_api, self.docker_socket)
        return f"unix://{self.docker_socket}"

    async def _bridge_api(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection of the Docker SDK, carried to the host's engine socket, else by dial-stdio."""
        try:
            connection = await self._connect()
            if self._engine_socket:
                from_host, to_host = await connection.open_unix_connection(self._engine_socket)
            else:
                to_host, from_host, _ = await connection.open_session(DIAL_STDIO, encoding=None)
        except (DockerKernelError, OSError, asyncssh.Error) as e:
            log.warning("The Docker host %s cannot be reached: %s", self.url, e)
            writer.close()
            return
        await _splice(reader, writer, from_host, to_host)

    async def _forward(self, ports: list[int]) -> None:
        await self._connect()
        opened = []
        try:
            for port in ports:
                if port not in self._listeners:
                    bridge = functools.partial(self._bridge_port, port)
                    self._listeners[port] = await asyncio.start_server(bridge, "127.0.0.1", port)
                    opened.append(port)
        except OSError as e:
            await self._unforward(opened)
            raise PortTaken(str(e)) from None

    async def _unforward(self, ports: list[int]) -> None:
        for port in ports:
            listener = self._listeners.pop(port, None)
            if listener is not None:
                listener.close()

    async def _bridge_port(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One connection to a kernel's port, carried to the same port of the host's loopback."""
        try:
            connection = await self._connect()
            from_host, to_host = await connection.open_connection("127.0.0.1", port)
        except (DockerKernelError, OSError, asyncssh.Error) as e:
            log.debug("Port %d of %s not reached: %s", port, self.url, e)
            writer.close()  # ZeroMQ connects again, over the next connection
            return
        await _splice(reader, writer, from_host, to_host)

    async def _close(self) -> None:
        await self._unforward(list(self._listeners))
        if self._api is not None:
            self._api.close()
            self._api = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None


async def _splice(
    local_in: asyncio.StreamReader,
    local_out: asyncio.StreamWriter,
    from_host: Any,  # asyncssh's SSHReader[bytes]
    to_host: Any,  # and SSHWriter[bytes]
) -> None:
    """Copy both ways until either side ends, then close both."""

    async def copy(source: Any, sink: Any) -> None:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()

    tasks = [
        asyncio.ensure_future(copy(local_in, to_host)),
        asyncio.ensure_future(copy(from_host, local_out)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        to_host.close()
        local_out.close()


def _reason(e: BaseException) -> str:
    if isinstance(e, asyncssh.HostKeyNotVerifiable):
        return "its host key is not in known_hosts"
    if isinstance(e, asyncssh.PermissionDenied):
        return "no key was accepted"
    if isinstance(e, TimeoutError):
        return f"it did not answer within {CONNECT_TIMEOUT} s"
    if isinstance(e, asyncssh.Error):
        return e.reason or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__
