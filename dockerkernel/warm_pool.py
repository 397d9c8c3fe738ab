"""The warm pool: kernels started ahead of time, each handed whole to the next notebook that needs one.

A kernelspec with ``warm_pool`` N keeps up to N kernels running, per user (a
Jupyter server runs as one user and holds its own pool), for the project of its
last starts: the notebooks under one mount (in a server, its root). A start
whose container would be the same but for its notebook's folder takes one, moves
it to that folder, and fills the pool again in the background; any other start
is a cold one (see WarmPool.fill for when the pool follows it elsewhere).

"The same" is checked, not assumed: a pooled kernel is planned by the very
function that plans a cold start (plan.draft), with the same
arguments but for what is its own: its kernel id, its channels and its key. A
start takes it only where the two plans then agree in everything else (image,
command, environment, user, groups, mounts, home, network, limits, labels), so
a pooled kernel is one that was cold-started early.

What it cannot know ahead is the notebook's folder and name (JPY_SESSION_NAME).
The provisioner sets them in the kernel as it takes it (settle()), as a cold
start's kernel has them.

Each pooled kernel has channels and a key of its own, made when it is filled and
never used for another kernel: the taker adopts them. Pooled containers are
labelled with the owner's labels like any kernel, so a server that dies leaves
them to the reaper and `dockerkernel prune`; a server that stops removes them
(WarmPool.close, at exit), and a pool that goes unused for ``warm_pool_idle``
seconds removes them too. GPU kernelspecs are never pooled: a pooled container
would hold GPUs that nobody uses (validation.check_warm_pool).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from queue import Empty
from typing import Any, cast

import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.connect import KernelConnectionInfo, LocalPortCache
from jupyter_client.session import new_id_bytes

from . import channels
from .backends import ContainerBackend
from .channels import CONTAINER_IPC_DIR
from .engine.owners import this_process_owner
from .errors import DockerKernelError
from .hosts import DockerHost
from .labels import LABEL_KERNEL_ID, LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_POOL
from .plan import PASSED_THROUGH, PORT_NAMES, ContainerPlan

log = logging.getLogger("dockerkernel.warm_pool")

READY_TIMEOUT = 60.0  # seconds a pooled kernel has to answer its heartbeat before it is dropped


def fingerprint(plan: ContainerPlan) -> str:
    """The plan without what is each kernel's own: equal for two kernels that differ in nothing else.

    The working directory is left out too: a taken kernel moves to its notebook's
    folder (settle()), which its mounts must hold, as they are part of the print.
    """
    shared = replace(
        plan,
        name="",
        ports=(),
        working_dir="",
        binds=tuple(b for b in plan.binds if b.target != CONTAINER_IPC_DIR),
        labels={k: v for k, v in plan.labels.items() if k not in (LABEL_KERNEL_ID, LABEL_POOL)},
        environment={k: v for k, v in plan.environment.items() if k not in PASSED_THROUGH},
        connection={k: v for k, v in plan.connection.items() if k not in (*PORT_NAMES, "key")},
        channels=replace(plan.channels, folder=""),
    )
    return json.dumps(asdict(shared), sort_keys=True, default=str)


def new_connection(template: Mapping[str, Any]) -> dict[str, Any]:
    """A pooled kernel's own connection, like ``template``'s but for its key, made anew, and its
    channels: a sockets' folder of its own, or ports reserved in this process."""
    info = dict(template, key=new_id_bytes())
    if info.get("transport") == "ipc":
        folder = channels.new_kernel_folder(this_process_owner().labels())
        info["ip"] = os.path.join(folder, os.path.basename(str(template["ip"])))
    else:
        ports = LocalPortCache.instance()
        info.update({name: ports.find_available_port("127.0.0.1") for name in PORT_NAMES})
    return info


def release_channels(connection: Mapping[str, Any]) -> None:
    """Give a pooled kernel's ports back, or remove its sockets' folder."""
    if connection.get("transport") == "ipc":
        channels.remove_kernel_folder(os.path.dirname(str(connection["ip"])))
        return
    ports = LocalPortCache.instance()
    for name in PORT_NAMES:
        ports.return_port(int(connection[name]))


@dataclass
class Pooled:
    """A running kernel in the pool."""

    container_id: str
    exit: Future[int]
    connection: dict[str, Any]  # as the host connects: ports, key ('ip' is 127.0.0.1)
    plan: ContainerPlan
    print: str  # its fingerprint


@dataclass
class _Kernelspec:
    """One kernelspec's pool: the kernels ready, and how many are being started, for one fingerprint."""

    print: str = ""
    ready: list[Pooled] = field(default_factory=list)
    filling: int = 0
    elsewhere: str = ""  # the print of the last start that the pool could not serve
    idle: float = 0.0  # seconds unused before it shrinks to nothing; 0: never
    used: float = 0.0  # when a start last took a kernel or filled it (time.monotonic())
    timer: threading.Timer | None = None


class WarmPool:
    """This process's pools, one per kernelspec; safe to call from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, _Kernelspec] = {}
        self._closed = False
        self._filled = threading.Condition(self._lock)

    def take(self, kernel_name: str, plan: ContainerPlan, timeout: float = READY_TIMEOUT) -> Pooled | None:
        """A ready kernel whose plan is ``plan`` but for what is each kernel's own; None if there is none.

        Where none is ready but one is being started, it is waited for, up to
        ``timeout`` seconds: it started before this start, so it is ready sooner
        than a cold start would be. Blocks: call it from a thread.
        """
        wanted = fingerprint(plan)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                pool = self._pools.get(kernel_name)
                if pool is None or pool.print != wanted:
                    return None
                while pool.ready:
                    pooled = pool.ready.pop(0)
                    if not pooled.exit.done():
                        self._used(kernel_name, pool)
                        return pooled
                    self.discard(pooled)  # it died in the pool
                left = deadline - time.monotonic()
                if not pool.filling or left <= 0:
                    return None
                self._filled.wait(left)

    def starting(self, kernel_name: str, plan: ContainerPlan) -> bool:
        """Whether a kernel for ``plan`` is being started for the pool."""
        with self._lock:
            pool = self._pools.get(kernel_name)
            return pool is not None and pool.filling > 0 and pool.print == fingerprint(plan)

    def fill(
        self,
        kernel_name: str,
        size: int,
        plan_for: Callable[[dict[str, Any]], ContainerPlan],
        template: Mapping[str, Any],
        idle: float = 0.0,
    ) -> None:
        """Start kernels in the background until ``size`` are ready or starting for ``plan_for``'s kernels.

        ``plan_for(connection)`` plans a pooled kernel with that connection,
        which is ``template`` with channels and a key of its own.

        A pool serves one project: the starts whose plans print the same, which
        are those whose mounts are the same (in a server, every notebook under its
        root). The first start that it cannot serve (a notebook elsewhere) leaves it
        where it is; a second such start in a row, of the same other project, moves
        it there: it gives up its kernels first, and never holds more than ``size``.
        ``idle`` seconds without a start that fills or takes from it shrink it to
        nothing (0: never); the next start fills it again.
        """
        wanted = fingerprint(plan_for(dict(template)))
        with self._lock:
            if self._closed:
                return
            pool = self._pools.setdefault(kernel_name, _Kernelspec())
            if pool.print != wanted:
                if pool.print and pool.elsewhere != wanted:
                    pool.elsewhere = wanted  # once: the pool stays with the project it serves
                    return
                for old in pool.ready:
                    self.discard(old)
                pool.ready.clear()
                pool.print = wanted
            pool.elsewhere, pool.idle = "", idle
            self._used(kernel_name, pool)
            missing = size - len(pool.ready) - pool.filling
            pool.filling += max(missing, 0)
        for _ in range(missing):
            # Ports are chosen here, in the caller's thread, like every other kernel's of this process.
            connection = new_connection(template)
            threading.Thread(
                target=self._start_one,
                args=(kernel_name, wanted, plan_for, connection, pool),
                name="dockerkernel-pool",
                daemon=True,
            ).start()

    def _start_one(
        self,
        kernel_name: str,
        wanted: str,
        plan_for: Callable[[dict[str, Any]], ContainerPlan],
        connection: dict[str, Any],
        pool: _Kernelspec,
    ) -> None:
        pooled: Pooled | None = None
        answered = False
        try:
            plan = plan_for(connection)
            launched = ContainerBackend(plan.host).launch(plan, "never", log, threading.Event())
            container_id, exit_status = launched.handle, launched.exit
            pooled = Pooled(container_id, exit_status, connection, plan, wanted)
            answered = _answers(connection, exit_status)
            if not answered:
                log.warning("The warm pool of kernel %s: %s never answered", kernel_name, container_id[:12])
        except Exception as e:  # a pool that cannot fill only makes starts cold
            log.warning("The warm pool of kernel %s could not start a kernel: %s", kernel_name, e)
        with self._lock:
            pool.filling -= 1
            # Kept where its pool was neither drained nor moved to another folder meanwhile.
            kept = (
                answered
                and not self._closed
                and self._pools.get(kernel_name) is pool
                and pool.print == wanted
            )
            if kept and pooled is not None:
                pool.ready.append(pooled)
            self._filled.notify_all()
        if kept:
            return
        if pooled is not None:
            self.discard(pooled, background=not self._closed)  # at exit: before the process ends
        else:
            release_channels(connection)

    def _used(self, kernel_name: str, pool: _Kernelspec) -> None:
        """Note that a start used ``pool``, and shrink it once it goes unused for its idle time."""
        pool.used = time.monotonic()
        if pool.timer is not None:
            pool.timer.cancel()
        if pool.idle > 0:
            args = (kernel_name, pool, pool.used)
            pool.timer = threading.Timer(pool.idle, self._shrink_if_idle, args=args)
            pool.timer.daemon = True
            pool.timer.start()

    def _shrink_if_idle(self, kernel_name: str, pool: _Kernelspec, used: float) -> None:
        """Remove an unused pool's kernels: they hold memory that others on the machine need."""
        with self._lock:
            if self._pools.get(kernel_name) is not pool or pool.used != used:
                return  # drained, moved or used since
            del self._pools[kernel_name]  # kernels still starting for it are removed once started
            ready, pool.ready = pool.ready, []
        log.info(
            "The warm pool of kernel %s went unused for %g s: removing its kernels", kernel_name, pool.idle
        )
        for pooled in ready:
            self.discard(pooled)

    def discard(self, pooled: Pooled, background: bool = True) -> None:
        """Remove a pooled kernel's container, in the background, and give its channels back."""

        def remove() -> None:
            try:
                ContainerBackend(pooled.plan.host).remove(pooled.container_id)
            except DockerKernelError as e:
                log.warning("Pooled kernel %s is left to the reaper: %s", pooled.container_id[:12], e)
            release_channels(pooled.connection)

        if background:
            threading.Thread(target=remove, name="dockerkernel-pool-remove", daemon=True).start()
        else:
            remove()

    def ready(self, kernel_name: str) -> int:
        with self._lock:
            pool = self._pools.get(kernel_name)
            return len(pool.ready) if pool else 0

    def wait_filled(self, timeout: float) -> bool:
        """Wait until no pool is starting a kernel; whether that happened within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while any(p.filling for p in self._pools.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._filled.wait(left)
        return True

    def close(self) -> None:
        """Fill no more, and remove every pooled kernel of this process; called at exit."""
        with self._lock:
            self._closed = True
        self.drain()

    def drain(self) -> None:
        """Remove every pooled kernel of this process, those being started included."""
        with self._lock:
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            if pool.timer is not None:
                pool.timer.cancel()
        # This machine's engines (see check_warm_pool); those of kernels being started are asked too.
        hosts = {p.plan.host for pool in pools.values() for p in pool.ready} or {DockerHost()}
        for pool in pools.values():
            for pooled in pool.ready:
                release_channels(pooled.connection)
        for host in hosts:
            try:
                backend = ContainerBackend(host)
                mine = {LABEL_OWNER_PID: str(os.getpid()), LABEL_OWNER_HOST: socket.gethostname()}
                for handle in backend.waiting_in_pool(**mine):
                    backend.remove(handle)
            except DockerKernelError as e:
                log.warning("The warm pool's kernels are left to the reaper: %s", e)


def _answers(connection: Mapping[str, Any], exit_status: Future[int]) -> bool:
    """Whether the kernel answers its heartbeat within READY_TIMEOUT, while it runs."""
    context: Any = zmq.Context.instance()
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and not exit_status.done():
        with context.socket(zmq.REQ) as probe:
            probe.linger = 0
            probe.connect(channels.channel_url(connection, "hb"))
            probe.send(b"ping")
            if probe.poll(500):
                probe.recv()
                return True
    return False


# Run in the taken kernel, so that it is what a cold start in the notebook's folder
# would be: the notebook's name in its environment (and as IPython's __session__
# where its ipykernel sets that), and the notebook's folder as its working
# directory and IPython's first directory. Its sys.path holds '' as every
# kernel's does, so modules beside the notebook import from there. Python 2 and 3
# alike; a function, so that nothing is left in the user's namespace.
_TAKE_CODE = """\
def _dockerkernel_take(name, cwd):
    import json, os, sys
    name, cwd = json.loads(name), json.loads(cwd)
    native = (lambda text: text) if sys.version_info[0] > 2 else (lambda text: text.encode("utf-8"))
    shell = get_ipython()
    if name is not None:
        os.environ["JPY_SESSION_NAME"] = native(name)
        try:
            import inspect, ipykernel.ipkernel
            if name and "JPY_SESSION_NAME" in inspect.getsource(ipykernel.ipkernel):
                shell.user_ns["__session__"] = name
        except Exception:
            pass
    os.chdir(native(cwd))
    history = shell.user_ns.get("_dh")
    if isinstance(history, list):  # of the type IPython keeps there: text, or a Path
        history[:] = [type(history[0])(cwd) if history else cwd]
_dockerkernel_take({name!r}, {cwd!r})
del _dockerkernel_take
"""


def adopt(pooled: Pooled, kernel_id: str, name: str | None, cwd: str) -> None:
    """Make a taken kernel the started one: the start's container name, and its notebook (see settle())."""
    ContainerBackend(pooled.plan.host).rename(pooled.container_id, f"dockerkernel-{kernel_id}")
    settle(pooled.connection, name, cwd)


def settle(connection: Mapping[str, Any], name: str | None, cwd: str, timeout: float = 10) -> None:
    """Make a taken kernel the notebook's: its name and folder, by a silent execution that leaves no
    history and no output."""
    client = BlockingKernelClient(context=zmq.Context.instance())
    client.load_connection_info(cast(KernelConnectionInfo, dict(connection)))
    client.start_channels(iopub=False, stdin=False, hb=False, control=False)
    try:
        code = _TAKE_CODE.format(name=json.dumps(name), cwd=json.dumps(cwd))
        msg_id = client.execute(code, silent=True, store_history=False)
        deadline = time.monotonic() + timeout
        while True:
            reply = client.get_shell_msg(timeout=max(deadline - time.monotonic(), 0))
            if reply["parent_header"].get("msg_id") == msg_id:
                break
    except Empty:
        raise DockerKernelError(
            "the pooled kernel did not take its notebook's name and folder in time"
        ) from None
    finally:
        client.stop_channels()
    if reply["content"].get("status") != "ok":
        raise DockerKernelError(
            f"the pooled kernel refused its notebook's name and folder: {reply['content']}"
        )


POOL = WarmPool()
atexit.register(POOL.close)


def pool_kernel_id() -> str:
    """A pooled kernel's id, in its name (labels.POOL_NAME_PREFIX) and its kernel-id label."""
    return f"pool-{uuid.uuid4()}"
