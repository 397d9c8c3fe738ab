"""DockerProvisioner: Jupyter kernels that run in Docker containers.

jupyter_client creates one provisioner per kernel (it is kept across restarts)
and drives it through KernelManager; the docstrings say which step calls what.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.connect import KernelConnectionInfo, LocalPortCache
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Bool, TraitError

from . import channels, errors, fallback, policy, warm_pool
from .backends import Backend, ContainerBackend, Launched, SwarmBackend
from .channels import IPC_PORTS, Channels
from .engine.owners import this_process_owner
from .errors import DockerKernelError, NotSignalable, PortTaken
from .identity import host_identity
from .labels import LABEL_POOL, Owner
from .launch import channels_for
from .plan import PORT_NAMES, ContainerPlan, draft
from .settings import DockerSettings
from .threads import executor, in_own_thread, in_thread
from .validation import check_launchable, check_setting_names, check_warm_pool

PORT_ATTEMPTS = 3  # starts tried when another program takes a chosen port first
SHUTDOWN_WAIT = 1.0  # seconds shutdown_requested() waits for the kernel's exit
RESTART_WAIT = 60.0  # seconds a restart waits for the new kernel's first heartbeat
# ZeroMQ's default ZMQ_RECONNECT_IVL: how soon a client's sockets reconnect to a kernel's rebound ones.
CLIENT_RECONNECT = 0.1

_MANAGER_KWARGS = ("kernel_id", "kernel_spec", "parent", "config", "log")


class KernelState(enum.Enum):
    """Where a kernel is in its lifecycle; the provisioner changes it on the server's event loop only."""

    NONE = "none"  # no kernel: before the first launch, and after each cleanup
    STARTING = "starting"  # its container runs and it has not answered yet
    READY = "ready"  # it has answered a heartbeat
    STOPPING = "stopping"  # KernelManager kills or terminates it
    FALLBACK = "fallback"  # the fallback kernel answers in its place


class DockerProvisioner(DockerSettings, KernelProvisionerBase):  # type: ignore[metaclass]
    """Runs each kernel in a container of its own, made from the kernelspec's image.

    The notebook's directory is mounted at its own path and is the working
    directory; the kernel's channels are unix sockets in a private folder on
    this machine's engines, else ports published on 127.0.0.1 only; the kernel
    runs as the user who runs Jupyter unless told otherwise.
    """

    fallback_kernel = Bool(
        False,
        help="""When the kernel's container cannot start, or its kernel exits during
        start-up, start a small kernel on the host that answers every execution
        with the reason and the fix, instead of failing the start. The server
        extension turns this on in Jupyter servers, where the notebook is where
        the user looks; elsewhere (nbclient, papermill) the start fails with the
        same sentence.""",
    ).tag(config=True)

    container_id: str | None = None  # the backend's handle on the kernel's container
    _state = KernelState.NONE
    _kernel: Launched | None = None  # the container, kept until cleanup()
    _exit: Future[int] | None = None  # its exit, until KernelManager has waited for it
    _plan: ContainerPlan | None = None
    _plan_args: dict[str, Any]
    _ports_cached = False
    _heartbeat: asyncio.Task[None] | None = None
    _early_exit = ""  # why the last container's kernel died before it ever answered
    _fallback: subprocess.Popen[bytes] | None = None
    _start_error = ""  # found by pre_launch(), shown by the fallback kernel
    _ip = "127.0.0.1"  # where the server reaches the kernel's ports: here, a tcp:// host or a node
    _pooled: warm_pool.Pooled | None = None  # taken from the warm pool by pre_launch(), for launch_kernel()
    _session_name: str | None = None  # the JPY_SESSION_NAME that a pooled kernel is given
    _pool_off = False  # warm_pool is set where a pool cannot be (GPUs, another host): see check_warm_pool
    _channels = Channels()  # chosen at the first start, kept across restarts
    _first_start = True  # whether the start under way is the kernel's first

    def __init__(self, **kwargs: Any) -> None:
        spec = kwargs.get("kernel_spec")
        name = getattr(spec, "name", "") or os.path.basename(getattr(spec, "resource_dir", "") or "?")
        # jupyter_client passes the kernelspec's config as keyword arguments, beside its own.
        config = {k: v for k, v in kwargs.items() if k not in _MANAGER_KWARGS}
        check_setting_names(config, name)
        try:
            super().__init__(**kwargs)
        except TraitError as e:
            raise DockerKernelError(errors.INVALID_SETTING.format(kernel=name, reason=e)) from e
        self.kernel_name = name
        try:
            check_warm_pool(self, name)
        except DockerKernelError as e:  # a server-wide warm_pool, say, for a GPU kernel: cold starts
            self.log.warning("Kernel %s: no warm pool: %s", name, e)
            self._pool_off = True
        self._backend: Backend = (
            SwarmBackend(self.host(), list(self.constraints), self.gpu_resource, self.start_timeout)
            if self.backend == "swarm"
            else ContainerBackend(self.host())
        )

    @property
    def has_process(self) -> bool:
        return self._exit is not None

    async def poll(self) -> int | None:
        """The container's exit status, or None while it runs. Called by the restarter."""
        if self._exit is None:
            return 0
        return self._exit.result() if self._exit.done() else None

    async def wait(self) -> int | None:
        """Wait for the container to exit. Called by KernelManager during shutdown,
        always under a timeout."""
        if self._exit is None:
            return 0
        status = await asyncio.wrap_future(self._exit)
        self._exit = None
        return status

    async def shutdown_requested(self, restart: bool = False) -> None:
        """Wait, briefly, for the kernel to exit after KernelManager asked it to shut down.

        KernelManager then checks every 100 ms whether the kernel still runs. A
        container's exit is known only once the engine has seen it, later than
        a local process's: waiting for it here ends the shutdown at the exit.
        A kernel that takes longer gets KernelManager's usual wait and signals.
        """
        if self._exit is not None and self._fallback is None:
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._exit)), SHUTDOWN_WAIT)

    async def send_signal(self, signum: int) -> None:
        """Signal the kernel through the container's init process (interrupts are SIGINT).

        A container that has exited or is gone is not an error: KernelManager
        interrupts before every shutdown, also after the kernel has crashed.
        """
        await self._signal(signum, stopping=False)

    async def _signal(self, signum: int, *, stopping: bool) -> None:
        """Signal the kernel; a daemon that cannot be reached is logged, never raised.

        KernelManager interrupts and then kills a kernel to shut it down: an
        error here would fail the whole shutdown, and leave its ports taken.
        """
        if self._fallback is not None:
            if self._fallback.poll() is None:
                self._fallback.send_signal(signum)
        elif self.container_id is not None:
            try:
                await in_thread(self._backend.signal, self.container_id, signum)
            except NotSignalable as e:  # only ever for SIGINT
                self.log.debug("Kernel %s: interrupted by a message: %s", self.kernel_id, e)
                self._send_interrupt_request()
            except DockerKernelError as e:
                # While stopping, cleanup() says what is left behind, once.
                (self.log.debug if stopping else self.log.warning)(
                    "Kernel %s: signal %d not sent: %s", self.kernel_id, signum, e
                )

    def _send_interrupt_request(self) -> None:
        """Interrupt as KernelManager does for kernelspecs whose interrupt_mode is 'message'."""
        km: Any = self.parent
        km._connect_control_socket()
        km.session.send(km._control_socket, km.session.msg("interrupt_request", content={}))

    async def kill(self, restart: bool = False) -> None:
        """Called by KernelManager when a kernel does not shut down in time, and to restart a dead one."""
        self._note_stopping()
        await self._signal(signal.SIGKILL, stopping=True)

    async def terminate(self, restart: bool = False) -> None:
        """Called by KernelManager when a kernel does not answer a shutdown request."""
        self._note_stopping()
        await self._signal(signal.SIGTERM, stopping=True)

    def _note_stopping(self) -> None:
        """A kernel still running when KernelManager stops it did not die by itself."""
        running = self._kernel is not None and not self._kernel.exit.done()
        if running and self._state in (KernelState.STARTING, KernelState.READY):
            self._state = KernelState.STOPPING

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Check the policy, choose the channels, write the connection file and plan the container.

        Called by KernelManager.pre_start_kernel() at every start and restart.
        The plan is made afresh each time, from the settings and kwargs.
        """
        km: Any = self.parent  # the KernelManager
        cwd = os.path.abspath(os.fspath(kwargs.get("cwd") or os.getcwd()))
        self._first_start = not self._ports_cached  # a restart keeps its channels, and is never warm
        first_start = self._first_start
        self._pooled = None
        self._start_error = ""
        with self._deferred_if_fallback():
            policy.check(self, self.kernel_name, self.config)
            check_launchable(self, self.kernel_name, cwd)
        owner = this_process_owner()
        if first_start:
            # The same channels, sockets or ports, are kept across restarts, as for local kernels.
            await self._choose_channels(km, owner)
        try:
            return await self._write_connection_and_plan(km, cwd, owner, kwargs)
        except BaseException:
            if first_start:  # nothing is left of a start that failed
                self._release_channels()
            raise

    async def _choose_channels(self, km: Any, owner: Owner) -> None:
        """ipc sockets in a folder of the kernel's own where the engine can carry them, else tcp ports.

        With the fallback kernel, an error here leaves the kernel on tcp ports, where the
        fallback answers with it.
        """
        self._channels = Channels()
        with self._deferred_if_fallback():
            chosen = await in_thread(channels_for, self)
            if chosen.transport == "ipc":
                self._use_ipc(km, replace(chosen, folder=channels.new_kernel_folder(owner.labels())))
                return
            self._channels = chosen
        # A tcp:// host's address is the KernelManager's after the first start: see launch_kernel().
        if km.transport == "tcp" and km.ip not in ("127.0.0.1", "localhost", self._ip):
            raise DockerKernelError(errors.LOOPBACK_ONLY.format(ip=km.ip, transport=km.transport))
        km.transport, km.ip = "tcp", "127.0.0.1"
        self._choose_ports()

    async def _write_connection_and_plan(
        self, km: Any, cwd: str, owner: Owner, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """Write the connection file and plan the container; take a pooled kernel where one matches."""
        with self._deferred_if_fallback():
            self._enable_curve_if_asked(km)
        extra_arguments = kwargs.pop("extra_arguments", [])
        kwargs = await super().pre_launch(**kwargs)  # applies the kernelspec's env substitutions
        env = kwargs.pop("env")
        km.write_connection_file(jupyter_session=env.get("JPY_SESSION_NAME", ""))
        self.connection_info = km.get_connection_info()

        self._plan_args = dict(
            kernel_id=str(self.kernel_id),
            kernel_name=self.kernel_name,
            cwd=cwd,
            spec_env={k: env[k] for k in self.kernel_spec.env if k in env},
            launch_env=env,
            extra_arguments=extra_arguments,
            owner=owner,
            identity=host_identity(),
            # In a Jupyter server, the MappingKernelManager that made our KernelManager knows its root.
            server_root=getattr(km.parent, "root_dir", None) or None,
            client_cwd=os.getcwd(),
            channels=self._channels,
        )
        with self._deferred_if_fallback():
            self._plan = draft(self, connection_info=self.connection_info, **self._plan_args)
        if self._first_start and self._plan is not None and self._pool_size():
            pooled = await self._take_pooled(self._plan)
            if pooled is not None:
                self._adopt_ports_and_key(km, pooled, env)
        kwargs["cmd"] = list(self._plan.command) if self._plan else []
        return kwargs

    def _use_ipc(self, km: Any, own: Channels) -> None:
        """Carry the kernel's channels over unix sockets in ``own``'s folder, the kernel's own."""
        self._channels = own
        km.transport, km.ip = "ipc", own.host_ip
        for port_name, port in IPC_PORTS.items():
            setattr(km, port_name, port)
        self._ports_cached = True

    def _pool_size(self) -> int:
        """The warm pool's size for this kernel: 0 where its channels are encrypted (the pool's are not)."""
        km: Any = self.parent
        off = self._pool_off or km.curve_publickey is not None or self._start_error
        return 0 if off else int(self.warm_pool)

    async def _take_pooled(self, plan: ContainerPlan) -> warm_pool.Pooled | None:
        """A pooled kernel for ``plan``: a ready one, or one being started, waited for in a thread."""
        pooled = warm_pool.POOL.take(self.kernel_name, plan, timeout=0)
        if pooled is not None or not warm_pool.POOL.starting(self.kernel_name, plan):
            return pooled

        def give_back(taken: warm_pool.Pooled | None) -> None:  # taken for a start that was cancelled
            if taken is not None:
                warm_pool.POOL.discard(taken)

        return await in_own_thread(
            f"dockerkernel-take-{self.kernel_id}",
            lambda: warm_pool.POOL.take(self.kernel_name, plan),
            give_back,
        )

    def _adopt_ports_and_key(self, km: Any, pooled: warm_pool.Pooled, env: dict[str, str]) -> None:
        """Make a pooled kernel's channels and key this kernel's, for launch_kernel() to take it.

        The sockets' folder or the ports that pre_launch() chose go back; the
        connection file is written again with the pooled kernel's.
        """
        if self._channels.transport == "ipc":
            channels.remove_kernel_folder(self._channels.folder)
            self._use_ipc(km, pooled.plan.channels)
            self._plan_args["channels"] = self._channels  # for a cold start, should the take fail
        else:
            ports = LocalPortCache.instance()
            for port_name in PORT_NAMES:
                ports.return_port(getattr(km, port_name))
                setattr(km, port_name, int(pooled.connection[port_name]))
        km.session.key = pooled.connection["key"]
        km._connection_file_written = False
        km.write_connection_file(jupyter_session=env.get("JPY_SESSION_NAME", ""))
        self.connection_info = km.get_connection_info()
        # Its container's plan, in the notebook's folder, where launch_kernel() moves it.
        self._plan, self._pooled = replace(pooled.plan, working_dir=self._plan_args["cwd"]), pooled
        self._session_name = env.get("JPY_SESSION_NAME")

    def _fill_pool(self) -> None:
        """Start kernels like this one ahead, for the next starts of its kernelspec in its folder."""
        size = self._pool_size()
        if not size or self._plan is None:
            return
        args = {**self._plan_args, "launch_env": {}}  # the notebook's name is set as a start takes one

        def plan_for(connection: dict[str, Any]) -> ContainerPlan:
            own = self._channels  # a pooled kernel's sockets are in a folder of its own
            if own.transport == "ipc":
                own = replace(own, folder=os.path.dirname(str(connection["ip"])))
            plan = draft(
                self,
                connection_info=connection,
                **{**args, "kernel_id": warm_pool.pool_kernel_id(), "channels": own},
            )
            return replace(plan, labels={**plan.labels, LABEL_POOL: "1"})

        warm_pool.POOL.fill(self.kernel_name, size, plan_for, self.connection_info, self.warm_pool_idle)

    @contextmanager
    def _deferred_if_fallback(self) -> Iterator[None]:
        """With the fallback kernel, an error found before the launch is shown by it at launch."""
        try:
            yield
        except DockerKernelError as e:
            if not self.fallback_kernel:
                raise
            self._start_error = self._start_error or str(e)

    def _enable_curve_if_asked(self, km: Any) -> None:
        """Encrypt the kernel's channels with CurveZMQ, as the local provisioner does.

        When KernelManager.transport_encryption is 'required', or 'auto' and the
        kernelspec declares 'curve' support (`dockerkernel install --curve`), and
        always on a tcp:// host, whose channels cross the network. The keys go
        into the connection file, the kernel's copy included; they are kept
        across restarts, like the session key.
        """
        policy = getattr(km, "_transport_encryption_policy", lambda: "disabled")()
        supported = getattr(km, "_kernel_supports_curve_encryption", lambda: False)()
        over_network = self.host().scheme == "tcp" or self.backend == "swarm"
        if over_network and not supported:
            raise DockerKernelError(
                errors.TLS_KERNELSPEC_NEEDS_CURVE.format(kernel=self.kernel_name, host=self.docker_host)
            )
        wanted = policy == "required" or (policy == "auto" and supported) or over_network
        if wanted and km.curve_publickey is None:
            km.curve_publickey, km.curve_secretkey = zmq.curve_keypair()

    def _choose_ports(self) -> None:
        """Free loopback ports for the kernel, set on the KernelManager."""
        km: Any = self.parent
        ports = LocalPortCache.instance()
        for port_name in PORT_NAMES:
            if self._ports_cached:
                ports.return_port(getattr(km, port_name))
            setattr(km, port_name, ports.find_available_port("127.0.0.1"))
        self._ports_cached = True

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Pull the image if needed and start the container planned by pre_launch().

        Called by KernelManager right after pre_launch(); ``cmd`` is the
        in-container command already in the plan.
        """
        first_start = self._first_start
        try:
            early_exit, self._early_exit = self._early_exit, ""  # told once: a later restart tries again
            if self._start_error or early_exit:
                # Restarting after an early exit would only die again: say why instead of looping.
                raise DockerKernelError(self._start_error or early_exit)
            kernel = await self._adopt_pooled() if self._pooled is not None else None
            if kernel is None:
                kernel = await self._start_container()
        except asyncio.CancelledError:
            if first_start:
                self._release_channels()
            raise
        except DockerKernelError as e:
            if not self.fallback_kernel:
                if first_start:  # nothing is left of a start that failed
                    self._release_channels()
                raise
            self.log.error("Kernel %s could not start: %s", self.kernel_id, e)
            self._start_fallback(str(e))
            return self._connection()
        self._kernel, self._exit, self.container_id = kernel, kernel.exit, kernel.handle
        self._ip = kernel.ip
        self._state = KernelState.STARTING
        self.log.info(
            "Kernel %s runs in container %s (image %s)", self.kernel_id, kernel.handle[:12], self.image
        )
        self._heartbeat = asyncio.ensure_future(self._watch_heartbeat(kernel.exit))
        if not first_start:
            await self._settle_restart()
        return self._connection()

    async def _settle_restart(self) -> None:
        """Return from a restart once the new kernel answers, and its clients have had time to reconnect.

        The clients' sockets are still those of the old kernel, and reconnect to
        the new one's within their reconnect interval. A request that they queued
        meanwhile reaches the kernel as soon as its shell socket is bound, which
        over ipc can be before their IOPub subscription has reached it: the
        kernel would then run it unheard (its status and outputs lost, a cell busy
        for ever). Returning only now, the server's restart, and so JupyterLab's,
        sends nothing before the kernel can be heard.
        """
        assert self._heartbeat is not None
        await asyncio.wait([self._heartbeat], timeout=RESTART_WAIT)
        if self._state is KernelState.READY:
            await asyncio.sleep(CLIENT_RECONNECT)

    def _connection(self) -> KernelConnectionInfo:
        """Where the server reaches the kernel: its sockets' folder, or its ports' address."""
        if self._channels.transport == "ipc":
            return self.connection_info
        return {**self.connection_info, "ip": self._ip}

    async def _adopt_pooled(self) -> Launched | None:
        """Make the pooled kernel this one: its name, and the notebook's JPY_SESSION_NAME and folder in it.

        None when it cannot be adopted (it died meanwhile, say): it is removed,
        and the start goes on cold, on the same ports and key.
        """
        pooled, self._pooled = self._pooled, None
        assert pooled is not None

        try:
            await in_thread(
                warm_pool.adopt, pooled, str(self.kernel_id), self._session_name, self._plan_args["cwd"]
            )
        except DockerKernelError as e:
            self.log.warning(
                "Kernel %s: the pooled kernel could not be taken (%s); starting one", self.kernel_id, e
            )
            await in_thread(self._remove, pooled.container_id)
            self._plan = draft(self, connection_info=self.connection_info, **self._plan_args)
            return None
        self.log.info("Kernel %s: taken from the warm pool", self.kernel_id)
        return Launched(pooled.container_id, pooled.exit)

    async def _start_container(self) -> Launched:
        assert self._plan is not None
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return await self._startin_thread(self._plan)
            except PortTaken as e:
                if attempt == PORT_ATTEMPTS:
                    raise
                # Another program took a port since pre_launch() chose it: choose again.
                # KernelManager takes the new ports from the connection info returned.
                self.log.info("Kernel %s: %s; trying other ports", self.kernel_id, e)
                self._choose_ports()
                self.connection_info = self.parent.get_connection_info()  # type: ignore[union-attr]
                self._plan = draft(self, connection_info=self.connection_info, **self._plan_args)
        raise AssertionError("unreachable")

    async def _startin_thread(self, plan: ContainerPlan) -> Launched:
        """The backend's launch, in a thread of its own, for a start that can be cancelled.

        A pull can take minutes. If the start is cancelled meanwhile (Ctrl-C in
        nbclient, a session deleted while it starts), this returns at once; the
        thread, a daemon that cannot hold up the process's exit, creates no
        container after the pull, and removes one that it started before it saw
        the cancellation.
        """
        cancelled = threading.Event()

        def remove(started: Launched) -> None:
            container_id = started.handle
            self.log.info(
                "Kernel %s: removing container %s, started after a cancel", self.kernel_id, container_id[:12]
            )
            try:
                self._backend.remove(container_id)
            except DockerKernelError as e:
                self.log.warning(
                    "Kernel %s: container %s is left behind: %s", self.kernel_id, container_id[:12], e
                )

        return await in_own_thread(
            f"dockerkernel-start-{self.kernel_id}",
            lambda: self._backend.launch(plan, self.pull_policy, self.log, cancelled),
            remove,
            cancelled,
        )

    async def _watch_heartbeat(self, exit_status: Future[int] | None) -> None:
        """Ping the kernel's heartbeat until it answers once, or its container exits.

        A kernel that exits without ever answering died during start-up: see cleanup().
        """
        context = zmq.asyncio.Context.instance()
        address = channels.channel_url(self._connection(), "hb")
        while exit_status is not None and not exit_status.done():
            socket = context.socket(zmq.REQ)
            socket.linger = 0
            if "curve_publickey" in self.connection_info:  # as jupyter_client's own sockets do
                public = self.connection_info["curve_publickey"].encode()
                socket.curve_secretkey = self.connection_info["curve_secretkey"].encode()
                socket.curve_publickey = socket.curve_serverkey = public
            try:
                socket.connect(address)
                await socket.send(b"ping")
                if await socket.poll(500):
                    await socket.recv()
                    if self._state is KernelState.STARTING:
                        self._state = KernelState.READY
                    # Only now: kernels started ahead would slow this one's own start-up.
                    self._fill_pool()
                    return
            finally:
                socket.close()

    def _start_fallback(self, message: str) -> None:
        """Run the fallback kernel on the host, on the kernel's channels; it shows ``message``."""
        km: Any = self.parent
        connection_file = km.connection_file  # over ipc, its sockets are in the kernel's folder, here
        self._ip = "127.0.0.1"  # on this machine, wherever the kernel would have run
        if self._channels.transport == "tcp" and km.ip != self._ip:
            # The last start's host: the fallback gets a file of its own.
            connection_file = f"{km.connection_file}.fallback.json"
            info = {**self.connection_info, "ip": self._ip}
            info["key"] = km.session.key.decode()
            fd = os.open(connection_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
        self._fallback, self._exit = fallback.start(connection_file, message)
        self._early_exit = ""  # a restart by the user tries the container again
        self._state = KernelState.FALLBACK

    async def cleanup(self, restart: bool = False) -> None:
        """Remove the container; when not restarting, also give the ports back.

        Called by KernelManager at the end of every shutdown and restart, so a
        restart always gets a fresh container, on the same ports.
        """
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._fallback is not None:
            process, self._fallback = self._fallback, None
            if process.poll() is None:
                process.kill()
            await in_thread(process.wait)
        if self.container_id is not None:  # launched, or known from load_provisioner_info()
            kernel, handle = self._kernel, self.container_id
            self._kernel = self.container_id = None
            # Exited by itself before it ever answered: it died during start-up.
            starting = self._state is KernelState.STARTING
            status = kernel.exit.result() if kernel is not None and kernel.exit.done() else None
            if restart and starting and status is not None:
                with suppress(DockerKernelError):
                    self._early_exit = await self._why_it_died(handle, status)
                    self.log.error("Kernel %s: %s", self.kernel_id, self._early_exit)
            if restart:  # the new container takes the old one's name: it must be gone first
                await in_thread(self._remove, handle)
            else:
                # The client's shutdown ends at the kernel's exit, as with a local kernel; the
                # engine releases the container's network and ports meanwhile. The executor's
                # threads finish their work before this process exits.
                executor.submit(self._remove, handle)
        self._state = KernelState.NONE
        with suppress(OSError):  # written by _start_fallback() for a kernel of another host
            os.remove(f"{self.parent.connection_file}.fallback.json")  # type: ignore[union-attr]
        if not restart:
            self._release_channels()

    def _release_channels(self) -> None:
        """Give the kernel's ports back, or remove its sockets' folder: at its end, or after a failed
        first start."""
        if not self._ports_cached:
            return
        if self._channels.transport == "ipc":
            channels.remove_kernel_folder(self._channels.folder)
        else:
            ports = LocalPortCache.instance()
            for port_name in PORT_NAMES:
                ports.return_port(int(self.parent.get_connection_info()[port_name]))  # type: ignore[union-attr]
        self._ports_cached = False

    def _remove(self, handle: str) -> None:
        """Remove the kernel's container, or leave it to be removed later; in a thread."""
        try:
            self._backend.remove(handle)
        except Exception as e:  # in a thread whose errors nobody else sees
            # Best effort: the ports are given back all the same, and the container is
            # removed at this process's next start on that daemon, or, once this process
            # is gone, by `dockerkernel prune` or the next server's reaper.
            with suppress(DockerKernelError):  # no client yet, and no daemon to make one
                self._backend.leave_behind(handle)
            self.log.warning("Kernel %s: its container %s is left behind: %s", self.kernel_id, handle[:12], e)

    async def _why_it_died(self, container_id: str, status: int) -> str:
        """The sentence for a kernel that exited during start-up, from its container's last words."""
        if status == 127 and self._plan is not None:  # the init process found no such command
            command = self._plan.command[0]
            return errors.KERNEL_CMD_NOT_FOUND.format(image=self.image, command=command)
        reason = await in_thread(self._backend.last_words, container_id)
        return errors.EXITED_DURING_STARTUP.format(image=self.image, status=status, reason=reason)

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info["container_id"] = self.container_id
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.container_id = provisioner_info.get("container_id")
