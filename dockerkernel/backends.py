"""Where a kernel's container runs, behind the small interface that the provisioner drives.

The provisioner owns a kernel's lifecycle: its ports and connection file, the
heartbeat watch, the fallback kernel, restarts. A backend owns the kernel's
container: it launches it, says where the server connects to it, signals it,
removes it and finds the orphans of servers that are gone. Its methods block
(the Docker SDK does); the provisioner calls them from threads.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Protocol

from . import errors, swarm
from .engine.connect import daemon_errors, get_client
from .engine.containers import (
    last_log_line,
    leave_behind,
    prune_orphans,
    remove_container,
    rename_container,
    signal_container,
    waiting_in_pool,
)
from .errors import DockerKernelError, NotSignalable
from .hosts import DockerHost
from .launch import start_kernel
from .plan import ContainerPlan
from .ssh import SshHost

KernelLog = logging.Logger | logging.LoggerAdapter[Any]


@dataclass(frozen=True)
class Launched:
    """A kernel's container, as its backend started it."""

    handle: str  # what the backend knows it by: a container id, a service id
    exit: Future[int]  # its exit status once it exited, or -1 once it is gone
    ip: str = "127.0.0.1"  # where the server connects to its ports


class Backend(Protocol):
    def launch(
        self, plan: ContainerPlan, pull_policy: str, log: KernelLog, cancelled: threading.Event
    ) -> Launched:
        """Pull as ``pull_policy`` says and start the planned kernel; nothing once ``cancelled``."""

    def signal(self, handle: str, signum: int) -> None:
        """Send ``signum`` to the kernel; one that has exited, or is gone, is fine.

        NotSignalable when the backend cannot reach the kernel's process.
        """

    def last_words(self, handle: str) -> str:
        """The last line the kernel wrote, to tell why it exited."""

    def remove(self, handle: str) -> None:
        """Stop and remove the kernel's container; one already gone is fine."""

    def leave_behind(self, handle: str) -> None:
        """Give up on a container that could not be removed now; it is removed later."""

    def prune_orphans(self) -> list[str]:
        """Remove this user's kernels whose server or launcher is gone; their handles."""


class ContainerBackend:
    """Kernels as containers of one Docker engine (see hosts.py for the kinds of host).

    On this machine's engines, and over ssh://, the server connects to the
    kernel's ports on this machine's loopback: the container publishes them on
    its host's loopback, and over ssh:// they are forwarded here (ssh.py). On a
    tcp:// host, they are published on the host's own address, for channels
    encrypted with CurveZMQ.
    """

    def __init__(self, host: DockerHost | str = "") -> None:
        self.host = DockerHost(host) if isinstance(host, str) else host
        self._forwarded: dict[str, list[int]] = {}  # over ssh://: each container's ports
        self._publish_ip = ""

    def _client(self) -> Any:
        return get_client(self.host)

    def publish_ip(self) -> str:
        """The address of the Docker host on which the kernel's ports are published: its
        loopback, but for a tcp:// host, whose own address is resolved here."""
        if self.host.scheme != "tcp":
            return "127.0.0.1"
        if not self._publish_ip:
            try:
                self._publish_ip = socket.gethostbyname(self.host.hostname)
            except OSError as e:
                reason = f"{self.host.hostname} is not a known host name ({e})"
                raise DockerKernelError(errors.DOCKER_UNREACHABLE.format(reason=reason)) from None
        return self._publish_ip

    def launch(
        self, plan: ContainerPlan, pull_policy: str, log: KernelLog, cancelled: threading.Event
    ) -> Launched:
        if self.host.scheme == "tcp":
            plan = replace(plan, publish_ip=self.publish_ip())
        ports = list(plan.ports)
        tunnel = SshHost.of(self.host.url) if self.host.scheme == "ssh" else None
        if tunnel is not None:
            tunnel.forward(ports)  # first: a port taken here is tried again with others
        try:
            container_id, exit_status = start_kernel(plan, pull_policy, log, cancelled)
        except BaseException:
            if tunnel is not None:
                tunnel.unforward(ports)
            raise
        if tunnel is not None:
            self._forwarded[container_id] = ports
        return Launched(container_id, exit_status, self.publish_ip())

    def signal(self, handle: str, signum: int) -> None:
        signal_container(self._client(), handle, signum)

    def last_words(self, handle: str) -> str:
        return last_log_line(self._client(), handle)

    def remove(self, handle: str) -> None:
        remove_container(self._client(), handle)
        self._unforward(handle)

    def leave_behind(self, handle: str) -> None:
        self._unforward(handle)
        leave_behind(self._client(), handle)

    def _unforward(self, handle: str) -> None:
        ports = self._forwarded.pop(handle, None)
        if ports:
            SshHost.of(self.host.url).unforward(ports)

    def prune_orphans(self) -> list[str]:
        return prune_orphans(self._client())

    def rename(self, handle: str, name: str) -> None:
        """Give the kernel's container another name: a pooled kernel's, once a start takes it."""
        rename_container(self._client(), handle, name)

    def waiting_in_pool(self, **labels: str) -> list[str]:
        """The pooled kernels with ``labels`` that no start has taken."""
        return [c.id for c in waiting_in_pool(self._client(), **labels)]


class SwarmBackend:
    """Kernels as services of the Docker Swarm that ``host`` manages (see swarm.py).

    The server connects to the kernel's ports on the node its task runs on,
    published there in host mode, with CurveZMQ on. Signals reach the kernel
    where the task runs on the manager itself; elsewhere an interrupt is sent as
    a message (NotSignalable), and a kill or terminate removes the service.
    """

    def __init__(self, host: DockerHost, constraints: list[str], gpu_kind: str, start_timeout: float) -> None:
        self.host = host
        self.constraints = constraints
        self.gpu_kind = gpu_kind
        self.start_timeout = start_timeout
        self._placed: dict[str, swarm.Placed] = {}
        self._watches: dict[str, threading.Event] = {}
        self._manager = ""  # the node id of the manager that docker_host names
        self._node = ""  # the node that the kernel's first start landed on

    def _client(self) -> Any:
        return get_client(self.host)

    def launch(
        self, plan: ContainerPlan, pull_policy: str, log: KernelLog, cancelled: threading.Event
    ) -> Launched:
        client = self._client()
        # A restart stays on the kernel's node: the server's open channels keep its address.
        constraints = [*self.constraints, *([f"node.id=={self._node}"] if self._node else [])]
        placed = swarm.place_kernel(client, plan, constraints, self.gpu_kind, self.start_timeout, cancelled)
        self._node = placed.node_id
        exit_status, stop = swarm.watch_task(client, placed.service_id)
        self._placed[placed.service_id] = placed
        self._watches[placed.service_id] = stop
        log.info("Kernel %s: the swarm placed it at %s", plan.name, placed.node_address)
        return Launched(placed.service_id, exit_status, placed.node_address)

    def signal(self, handle: str, signum: int) -> None:
        placed = self._placed.get(handle)
        if placed is None:
            return
        client = self._client()
        if placed.node_id == self._manager_node(client) and placed.container_id:
            signal_container(client, placed.container_id, signum)
        elif signum == signal.SIGINT:
            where = placed.node_address
            raise NotSignalable(f"the kernel runs on node {where}, whose engine is not reachable from here")
        else:  # the swarm stops the task: SIGTERM, then SIGKILL after its grace period
            self.remove(handle)

    def _manager_node(self, client: Any) -> str:
        if not self._manager:
            with daemon_errors():
                self._manager = str(client.info().get("Swarm", {}).get("NodeID", ""))
        return self._manager

    def last_words(self, handle: str) -> str:
        return swarm.last_log_line(self._client(), handle)

    def remove(self, handle: str) -> None:
        swarm.remove_kernel(self._client(), handle)
        self._forget(handle)

    def leave_behind(self, handle: str) -> None:
        self._forget(handle)  # its server's reaper, or `dockerkernel prune`, removes it

    def _forget(self, handle: str) -> None:
        self._placed.pop(handle, None)
        stop = self._watches.pop(handle, None)
        if stop is not None:
            stop.set()

    def prune_orphans(self) -> list[str]:
        return swarm.prune_orphans(self._client(), os.getuid())


def prune_host(host: DockerHost) -> list[str]:
    """Remove this user's kernels on ``host`` whose server or launcher is gone: containers, and
    services where it manages a swarm. Their ids."""
    client = get_client(host)
    return prune_orphans(client) + swarm.prune_orphans(client, os.getuid())
