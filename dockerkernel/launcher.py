"""The host-side launcher: a kernelspec's ``argv`` for clients that ignore provisioners.

Some clients (VS Code's Jupyter extension, for one) start a kernelspec's
``argv`` directly and never load its ``kernel_provisioner``. For them the argv
is ``python -m dockerkernel launch --spec-dir {resource_dir} -f {connection_file}``:
this process starts the same container the provisioner would, forwards
SIGINT, SIGTERM and SIGHUP to the kernel, and removes the container when the
kernel exits, or when the client that started it exits without stopping it.
A container left behind by a launcher that was SIGKILLed is found by
``dockerkernel prune``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import signal
import threading
import uuid
from collections.abc import Callable, Sequence
from types import FrameType

from jupyter_client.kernelspec import KernelSpec

from . import errors, policy
from .backends import ContainerBackend
from .channels import Channels
from .engine.owners import this_process_owner
from .errors import DockerKernelError
from .identity import host_identity
from .launch import channels_for
from .plan import draft
from .settings import DockerSettings
from .validation import check_launchable, make_settings

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

log = logging.getLogger(__name__)


def kernel_id_from(connection_file: str) -> str:
    """The kernel id that Jupyter put in the connection file's name, else a new one."""
    match = re.search(r"kernel-([0-9a-f-]{36})\.json$", connection_file)
    return match.group(1) if match else str(uuid.uuid4())


def watch_parent(on_exit: Callable[[], None]) -> None:
    """Call ``on_exit``, in a thread, when the process that started this one exits.

    A client that is killed never stops its kernel; without this, the kernel
    would run on with nobody to use it. The parent is watched through a pidfd
    (Linux 5.3 and later), which becomes readable when it exits; elsewhere it
    is not watched, and `dockerkernel prune` finds what is left.
    """
    parent = os.getppid()
    try:
        pidfd = os.pidfd_open(parent)
    except (AttributeError, OSError) as e:
        log.debug("The launcher's parent %d is not watched: %s", parent, e)
        return
    if os.getppid() != parent:  # it exited before the pidfd was opened
        os.close(pidfd)
        on_exit()
        return

    def wait() -> None:
        select.select([pidfd], [], [])
        os.close(pidfd)
        log.info("The client that started this kernel (pid %d) exited: stopping the kernel", parent)
        on_exit()

    threading.Thread(target=wait, name="dockerkernel-parent", daemon=True).start()


def launch(spec_dir: str, connection_file: str, extra_arguments: Sequence[str] = ()) -> int:
    """Run the kernel of the kernelspec in ``spec_dir`` until it exits; return its status."""
    spec = KernelSpec.from_resource_dir(spec_dir)
    name = os.path.basename(os.path.normpath(spec_dir))
    config = spec.metadata.get("kernel_provisioner", {}).get("config", {})
    settings = make_settings(DockerSettings, config, name)
    cwd = os.getcwd()
    policy.check(settings, name)
    check_launchable(settings, name, cwd)
    if settings.host().scheme == "tcp" or settings.backend == "swarm":
        # The client connects to this machine's loopback, unencrypted: it knows nothing of the host.
        where = "a swarm" if settings.backend == "swarm" else settings.docker_host
        raise DockerKernelError(errors.LAUNCHER_ON_TCP.format(kernel=name, host=where))
    with open(connection_file) as f:
        connection_info = json.load(f)
    channels = Channels()  # the client chose them: tcp ports, or ipc sockets in a folder of its own
    if connection_info.get("transport") == "ipc":
        settings.channels = "ipc"  # the client's choice: IPC_IMPOSSIBLE where the engine cannot carry it
        channels_for(settings)
        ip = os.path.abspath(connection_info["ip"])
        # A folder of the client's, maybe shared with its other kernels: the files are copied in.
        channels = Channels("ipc", folder=os.path.dirname(ip), prefix=os.path.basename(ip), own_folder=False)

    plan = draft(
        settings,
        kernel_id=kernel_id_from(connection_file),
        kernel_name=name,
        connection_info=connection_info,
        cwd=cwd,
        # The client has already put the kernelspec's env, substituted, into ours.
        spec_env={k: os.environ.get(k, v) for k, v in spec.env.items()},
        launch_env=os.environ,
        extra_arguments=extra_arguments,
        owner=this_process_owner(),
        identity=host_identity(),
        client_cwd=cwd,
        channels=channels,
    )
    backend = ContainerBackend(settings.host())
    kernel = backend.launch(plan, settings.pull_policy, log, threading.Event())
    try:

        def forward(signum: int, frame: FrameType | None) -> None:
            backend.signal(kernel.handle, signum)

        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, forward)
        watch_parent(lambda: backend.remove(kernel.handle))
        return kernel.exit.result()
    finally:
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        backend.remove(kernel.handle)
