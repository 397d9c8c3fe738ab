"""A second Docker host for tests: a dockerd in a network namespace of its own.

It shares this machine's files and processes, but has a loopback and
addresses of its own, so kernel ports published on "its" loopback are not on
ours: a client reaches them only the way it would reach another machine. With
``address``, a veth pair links it to this machine: it is at ``address`` and we
are at the pair's other end. Everything made here, the namespace, the daemon
and its data, is removed at the end, whatever stage the set-up reached. Never
start such a daemon in this machine's own network namespace: it would take
over docker0 and break the main one.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import requests

from waiting import accepts, wait_until_sync


@dataclass
class NamespacedHost:
    name: str
    netns: str  # the path of its network namespace
    docker_host: str  # the unix:// URL of its daemon's socket
    client: docker.DockerClient
    work: Path  # a folder of its own, removed with it
    address: str = ""  # its address on the veth pair, if it has one
    peer: str = ""  # and ours

    def enter(self, command: Sequence[str]) -> list[str]:
        """``command`` run in the host's network namespace, where its loopback is."""
        return ["nsenter", f"--net={self.netns}", *command]


@contextmanager
def namespaced_host(
    main: docker.DockerClient,
    images: Sequence[str],
    *,
    prefix: str,
    bip: str,
    subnet: str = "",
    env: Mapping[str, str] | None = None,
    daemon_args: Sequence[str] = (),
) -> Iterator[NamespacedHost]:
    """Start the host, with ``images`` copied from the main daemon; remove it all afterwards.

    ``subnet`` (a /30 or larger, e.g. '10.214.0.0/30') adds the veth pair: we
    take its first address, the host the second. ``daemon_args`` go to its
    dockerd, which runs with ``env`` added to ours.
    """
    name = f"{prefix}{os.getpid()}"
    netns = f"/var/run/netns/{name}"
    work = Path(tempfile.mkdtemp(prefix=f"dockerkernel-{prefix}-", dir="/var/tmp"))
    exec_root = Path(f"/run/{name}")
    socket_path = Path(f"/run/{name}.sock")
    peer = address = ""
    daemon: subprocess.Popen[bytes] | None = None
    client: docker.DockerClient | None = None
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        if subnet:
            ours, theirs = list(ipaddress.ip_network(subnet).hosts())[:2]
            peer, address = str(ours), str(theirs)
            length = ipaddress.ip_network(subnet).prefixlen
            subprocess.run(
                [
                    "ip",
                    "link",
                    "add",
                    f"vh{name}",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    f"vn{name}",
                    "netns",
                    name,
                ],
                check=True,
            )
            subprocess.run(["ip", "addr", "add", f"{peer}/{length}", "dev", f"vh{name}"], check=True)
            subprocess.run(["ip", "link", "set", f"vh{name}", "up"], check=True)
            subprocess.run(
                ["ip", "-n", name, "addr", "add", f"{address}/{length}", "dev", f"vn{name}"], check=True
            )
            subprocess.run(["ip", "-n", name, "link", "set", f"vn{name}", "up"], check=True)
        with open(work / "dockerd.log", "wb") as log:
            daemon = subprocess.Popen(
                [
                    "nsenter", f"--net={netns}",
                    "dockerd",
                    "--data-root", str(work / "data"),
                    "--exec-root", str(exec_root),
                    "--pidfile", str(work / "dockerd.pid"),
                    "-H", f"unix://{socket_path}",
                    "--bip", bip,
                    "--group", "docker",
                    *daemon_args,
                ],
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        _wait_for_daemon(socket_path, daemon, work / "dockerd.log")
        client = docker.DockerClient(
            base_url=f"unix://{socket_path}", version=main.api.api_version, timeout=120
        )
        for image in images:
            client.images.load(main.images.get(image).save(named=True))
        yield NamespacedHost(name, netns, f"unix://{socket_path}", client, work, address, peer)
    finally:
        _remove(name, daemon, client, work, exec_root, socket_path)


def _remove(
    name: str,
    daemon: subprocess.Popen[bytes] | None,
    client: docker.DockerClient | None,
    work: Path,
    exec_root: Path,
    socket_path: Path,
) -> None:
    """Remove the host: its containers, daemon, namespace, mounts and files, whatever stage it reached."""
    if client is not None:
        try:
            for container in client.containers.list(all=True):
                container.remove(force=True)
        except (docker.errors.DockerException, requests.RequestException):
            pass  # the daemon is not up: it has no containers to remove
        client.close()
    if daemon is not None and daemon.poll() is None:
        daemon.terminate()  # dockerd stops its containerd and unmounts its data root
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
    subprocess.run(["ip", "link", "delete", f"vh{name}"], check=False, stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "delete", name], check=False)
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f]
    for mount in sorted((m for m in mounts if m.startswith((f"{work}/", f"{exec_root}/"))), reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(exec_root, ignore_errors=True)
    socket_path.unlink(missing_ok=True)


def _wait_for_daemon(socket_path: Path, daemon: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the daemon accepts connections on its socket."""

    def listening() -> bool:
        assert daemon.poll() is None, f"the namespaced dockerd exited:\n{log.read_text()[-3000:]}"
        return socket_path.exists() and accepts(str(socket_path))

    wait_until_sync(listening, "the namespaced dockerd to listen on its socket")
