"""Where a kernel's container runs, behind the small interface that the provisioner drives.

The provisioner owns a kernel's lifecycle: its ports and connection file, the
heartbeat watch, the fallback kernel, restarts. A backend owns the kernel's
container: it launches it, says where the server connects to it, signals it,
removes it and finds the orphans of servers that are gone. Its methods block
(the Docker SDK does); the provisioner calls them from threads.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from jupyter_client.connect import KernelConnectionInfo

from . import docker_ops
from .spec import ContainerPlan

KernelLog = logging.Logger | logging.LoggerAdapter[Any]


@dataclass(frozen=True)
class Launched:
    """A kernel's container, as its backend started it."""

    handle: str  # what the backend knows it by: a container id
    exit: Future[int]  # its exit status once it exited, or -1 once it is gone


class Backend(Protocol):
    def launch(
        self, plan: ContainerPlan, pull_policy: str, log: KernelLog, cancelled: threading.Event
    ) -> Launched:
        """Pull as ``pull_policy`` says and start the planned kernel; nothing once ``cancelled``."""

    def endpoints(self, connection_info: KernelConnectionInfo) -> KernelConnectionInfo:
        """Where the server connects to the kernel whose container has ``connection_info``."""

    def signal(self, handle: str, signum: int) -> None:
        """Send ``signum`` to the kernel; one that has exited, or is gone, is fine."""

    def last_words(self, handle: str) -> str:
        """The last line the kernel wrote, to tell why it exited."""

    def remove(self, handle: str) -> None:
        """Stop and remove the kernel's container; one already gone is fine."""

    def leave_behind(self, handle: str) -> None:
        """Give up on a container that could not be removed now; it is removed later."""

    def prune_orphans(self) -> list[str]:
        """Remove this user's kernels whose server or launcher is gone; their handles."""


class ContainerBackend:
    """Kernels as containers of one Docker engine of this machine: ``docker_host`` (a unix://
    URL), or, for '', the one DOCKER_HOST names, else the local one.

    The container publishes the kernel's ports on the engine host's loopback,
    which is the server's: its endpoints are the connection's own.
    """

    def __init__(self, docker_host: str = "") -> None:
        self.docker_host = docker_host

    def _client(self) -> Any:
        return docker_ops.get_client(self.docker_host)

    def launch(
        self, plan: ContainerPlan, pull_policy: str, log: KernelLog, cancelled: threading.Event
    ) -> Launched:
        container_id, exit_status = docker_ops.run_kernel_container(plan, pull_policy, log, cancelled)
        return Launched(container_id, exit_status)

    def endpoints(self, connection_info: KernelConnectionInfo) -> KernelConnectionInfo:
        return connection_info

    def signal(self, handle: str, signum: int) -> None:
        docker_ops.signal_container(self._client(), handle, signum)

    def last_words(self, handle: str) -> str:
        return docker_ops.last_log_line(self._client(), handle)

    def remove(self, handle: str) -> None:
        docker_ops.remove_container(self._client(), handle)

    def leave_behind(self, handle: str) -> None:
        docker_ops.leave_behind(self._client(), handle)

    def prune_orphans(self) -> list[str]:
        return docker_ops.prune_orphans(self._client())
