"""Kernels are fenced in: each point checked on a running kernel container, so that each check can fail."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest
import zmq
from docker.models.containers import Container
from jupyter_client.manager import AsyncKernelManager

from dockerkernel import channels, errors
from dockerkernel.channels import CONTAINER_IPC_DIR, channel_url
from dockerkernel.plan import PORT_NAMES

pytestmark = pytest.mark.docker

CONNECTION_FILE = "ipykernel.get_connection_file()"  # as the kernel in its container has it


@pytest.fixture
async def kernel(install_test_kernel: Any, start_kernel: Any, notebook_dir: Path) -> Any:
    return await start_kernel(install_test_kernel("py3"), cwd=str(notebook_dir))


async def test_a_kernel_of_this_machines_engine_publishes_no_ports(
    kernel: Any, docker_client: docker.DockerClient
) -> None:
    info = kernel.km.get_connection_info()
    assert info["transport"] == "ipc"
    folder = os.path.dirname(info["ip"])
    assert os.path.dirname(folder) == channels.base_folder()
    assert (os.stat(folder).st_mode & 0o777, os.stat(folder).st_uid) == (0o700, os.getuid())
    attrs = docker_client.api.inspect_container(kernel.container_id)
    assert not attrs["HostConfig"]["PortBindings"]
    assert not attrs["NetworkSettings"]["Ports"]
    assert not attrs["Config"].get("ExposedPorts")


async def test_tcp_kernel_ports_listen_on_loopback_only(
    install_test_kernel: Any, start_kernel: Any, notebook_dir: Path, docker_client: docker.DockerClient
) -> None:
    kernel = await start_kernel(install_test_kernel("py3", "--channels", "tcp"), cwd=str(notebook_dir))
    ports = {int(kernel.km.get_connection_info()[name]) for name in PORT_NAMES}
    listeners = [c for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    addresses = {(c.laddr.ip, c.laddr.port) for c in listeners if c.laddr.port in ports}
    assert addresses == {("127.0.0.1", port) for port in ports}
    published = docker_client.api.inspect_container(kernel.container_id)["NetworkSettings"]["Ports"]
    assert {binding["HostIp"] for bindings in published.values() for binding in bindings} == {"127.0.0.1"}


async def test_every_kernel_gets_a_fresh_random_key(
    kernel: Any, start_kernel: Any, install_test_kernel: Any, notebook_dir: Path
) -> None:
    other = await start_kernel(install_test_kernel("py3", name="other"), cwd=str(notebook_dir))
    keys = [k.km.session.key for k in (kernel, other)]
    assert keys[0] != keys[1]
    assert all(len(key) >= 32 for key in keys)
    # The kernel in the container signs with the same key: it answers only signed requests.
    reply = await kernel.execute(f"import json, ipykernel; print(json.load(open({CONNECTION_FILE}))['key'])")
    assert reply.stdout.strip().encode() == keys[0]


async def test_connection_files_are_private(kernel: Any, jupyter_dirs: Path) -> None:
    host_file = Path(kernel.km.connection_file)
    assert host_file.stat().st_mode & 0o777 == 0o600
    reply = await kernel.execute(
        f"import os, json, ipykernel\npath = {CONNECTION_FILE}\n"
        "f, d = os.stat(path), os.stat(os.path.dirname(path))\n"
        "print(json.dumps([oct(f.st_mode & 0o777), oct(d.st_mode & 0o777), f.st_uid]))"
    )
    assert json.loads(reply.stdout) == ["0o600", "0o700", os.getuid()]


async def test_the_kernel_runs_as_the_invoking_user_without_new_privileges(
    kernel: Any, docker_client: docker.DockerClient
) -> None:
    reply = await kernel.execute(
        "import os\nprint(os.getuid(), os.getgid())\n"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0])"
    )
    ids, no_new_privs = reply.stdout.splitlines()
    assert ids == f"{os.getuid()} {os.getgid()}"
    assert no_new_privs == "1"
    attrs = docker_client.api.inspect_container(kernel.container_id)
    assert "no-new-privileges" in attrs["HostConfig"]["SecurityOpt"]
    assert attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"  # asked of the engine, not only seen


async def test_no_docker_socket_capabilities_or_privileged_mode(
    kernel: Any, docker_client: docker.DockerClient, notebook_dir: Path
) -> None:
    attrs = docker_client.api.inspect_container(kernel.container_id)
    assert attrs["HostConfig"]["Privileged"] is False
    assert not attrs["HostConfig"]["CapAdd"]
    assert not attrs["HostConfig"]["Devices"]
    # The notebook's folder, the kernel's own sockets' folder and home volume, and nothing else.
    mounts = sorted((m["Type"], m.get("Name", m["Source"]), m["Destination"]) for m in attrs["Mounts"])
    home = f"dockerkernel-home-{os.getuid()}-test-py3"
    sockets = os.path.dirname(kernel.km.ip)
    assert mounts == sorted(
        [
            ("bind", str(notebook_dir), str(notebook_dir)),
            ("bind", sockets, CONTAINER_IPC_DIR),
            ("volume", home, "/dockerkernel/home"),
        ]
    )
    reply = await kernel.execute("import os; print(os.path.exists('/var/run/docker.sock'))")
    assert reply.stdout == "False\n"


async def test_over_ipc_nothing_is_copied_in_but_the_folder_of_a_new_home(
    install_test_kernel: Any, start_kernel: Any, notebook_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's files come through its folder; a new home volume's owner is set by a copy."""
    copied: list[list[str]] = []
    put_archive = Container.put_archive

    def watched(self: Container, path: str, data: bytes) -> bool:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            copied.append(tar.getnames())
        return bool(put_archive(self, path, data))

    monkeypatch.setattr(Container, "put_archive", watched)
    name = install_test_kernel("py3", name="files-in-place")
    kernels = [await start_kernel(name, cwd=str(notebook_dir)) for _ in range(2)]
    # Root's accounts are the image's own; an ordinary user's are mounted (test_nonroot.py).
    assert copied == [["dockerkernel", "dockerkernel/home"]]
    probe = (
        "import os, ipykernel; s = os.stat(os.environ['HOME'])\n"
        "print(ipykernel.get_connection_file(), s.st_uid, oct(s.st_mode & 0o777))"
    )
    for kernel in kernels:
        reply = await kernel.execute(probe)
        assert reply.stdout.split() == [f"{CONTAINER_IPC_DIR}/kernel.json", str(os.getuid()), "0o700"]


async def test_curve_encrypts_the_kernel_channels(
    dockerkernel: Any, docker_client: docker.DockerClient, notebook_dir: Path, no_leftovers: None
) -> None:
    """`install --curve` checks the image's ipykernel; transport_encryption then encrypts every channel."""
    assert dockerkernel("install", "--image", "dockerkernel-test/py3", "--name", "curve", "--curve").code == 0
    km = AsyncKernelManager(kernel_name="curve", transport_encryption="required")
    await km.start_kernel(cwd=str(notebook_dir))
    kc = km.client()
    kc.start_channels()
    plain = zmq.Context.instance().socket(zmq.DEALER)
    try:
        await kc.wait_for_ready(timeout=60)
        info = km.get_connection_info()
        assert info["curve_publickey"] and info["curve_secretkey"]
        reply = await kc.execute_interactive(
            f"import json, ipykernel; print(sorted(json.load(open({CONNECTION_FILE}))))",
            timeout=30,
            output_hook=lambda msg: None,
        )
        assert reply["content"]["status"] == "ok"
        # A client without the keys gets nothing from the shell channel.
        plain.linger = 0
        plain.connect(channel_url(info, "shell"))
        km.session.send(plain, km.session.msg("kernel_info_request"))
        assert not plain.poll(2000)
    finally:
        plain.close()
        kc.stop_channels()
        await km.shutdown_kernel()


def test_curve_is_refused_for_an_image_whose_ipykernel_lacks_it(
    dockerkernel: Any, docker_client: Any
) -> None:
    args = ["--image", "dockerkernel-test/py2", "--name", "old", "--python", "python", "--curve"]
    result = dockerkernel("install", *args)
    assert result.code == 1
    assert result.err.splitlines()[-1] == "dockerkernel: " + errors.CURVE_UNSUPPORTED.format(
        version="4.10.1", image="dockerkernel-test/py2"
    )


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.mark.parametrize("wanted", ["auto", "tcp"])
async def test_another_local_user_overhears_nothing(
    wanted: str, install_test_kernel: Any, start_kernel: Any, notebook_dir: Path, public_scripts: Path
) -> None:
    """A local user who is not the kernel's owner, nor in the docker group, tries every socket of the
    host while the kernel prints a secret: over ipc they hear nothing; over tcp they do, so this can fail."""
    if os.geteuid() != 0:
        pytest.fail("running the sniffer as another user needs root: run the suite with tests/run.sh as root")
    kernel = await start_kernel(install_test_kernel("py3", "--channels", wanted), cwd=str(notebook_dir))
    assert kernel.km.transport == ("ipc" if wanted == "auto" else "tcp")
    secret = f"secret-{uuid.uuid4().hex}"
    msg_id = kernel.kc.execute(f"import time\nwhile True:\n    print({secret!r})\n    time.sleep(0.05)")
    while True:  # the owner hears it
        msg = await kernel.kc.get_iopub_msg(timeout=30)
        if msg["msg_type"] == "stream" and secret in msg["content"]["text"]:
            break
    base = channels.base_folder()
    sniff = [*NOBODY, sys.executable, str(public_scripts / "sniffer.py"), secret, base, "5"]
    env = {"PATH": os.environ["PATH"], "HOME": str(public_scripts), "LANG": "C.UTF-8"}
    done = await asyncio.to_thread(
        subprocess.run, sniff, env=env, cwd=public_scripts, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    heard = json.loads(done.stdout.splitlines()[-1])
    await kernel.km.interrupt_kernel()
    while True:
        reply = await kernel.kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert heard["unix_sockets"] > 0
    if wanted == "tcp":
        assert heard["heard"] is True, heard
        return
    assert heard["heard"] is False, heard
    assert heard["folder"] == "PermissionError"
    assert not [path for path in heard["unix_connected"] if path.startswith(base)]
