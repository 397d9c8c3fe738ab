"""Kernels on a remote Docker host (tests/remote_host.py), over ssh:// and over tcp:// with TLS.

The host is a dockerd in a network namespace of its own, at its veth
address, with sshd beside it. It shares our files, as a lab's GPU servers
share its storage, but not our loopback: its kernels' ports are reachable
only the way the backend carries them, through SSH, or on its address with
CurveZMQ.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest
import zmq
from jupyter_client.manager import AsyncKernelManager
from traitlets.config import Config

from dockerkernel import errors
from dockerkernel.engine.connect import forget_clients
from dockerkernel.engine.containers import kernel_containers, remove_container
from dockerkernel.labels import LABEL_KERNEL_ID, LABEL_KERNELSPEC, LABEL_OWNER_PID

from conftest import IMAGES, CliResult, Kernel, interrupt_a_sleep
from remote_host import ADDRESS, RemoteHost, remote_host
from waiting import accepts, wait_until, wait_until_sync

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def remote(docker_client: docker.DockerClient, ordinary_user: Any) -> Iterator[RemoteHost]:
    if os.geteuid() != 0:
        pytest.fail("the remote test host needs root (a network namespace, a dockerd, sshd): run as root")
    with remote_host(docker_client, [IMAGES["py3"], IMAGES["py2"]], ordinary_user.pw_name) as host:
        yield host


@pytest.fixture(autouse=True)
def fresh_connections() -> Iterator[None]:
    """Each test makes its own clients and SSH connections, with the HOME it gives."""
    yield
    forget_clients()


@pytest.fixture
def ssh_home(remote: RemoteHost, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's SSH key, known_hosts and config are the test host's, not the user's."""
    monkeypatch.setenv("HOME", str(remote.home))
    return remote.home


@pytest.fixture
def on_remote(remote: RemoteHost, ssh_home: Path) -> Iterator[RemoteHost]:
    """The remote host; after the test it must have no kernel container left, and no home volume."""
    yield remote
    # A shutdown ends at the kernel's exit; its container is removed just after.
    with suppress(AssertionError):
        wait_until_sync(lambda: not kernel_containers(remote.client), "removals", timeout=30)
    left = kernel_containers(remote.client)
    for container in left:
        remove_container(remote.client, container.id)
    for volume in remote.client.volumes.list(filters={"name": "dockerkernel-home-"}):
        volume.remove(force=True)
    assert not left, f"kernel containers left on the remote host: {[c.short_id for c in left]}"


def remote_containers(remote: RemoteHost, kernel: Kernel) -> list[Any]:
    kernel_id = str(kernel.km.kernel_id)
    return remote.client.containers.list(all=True, filters={"label": f"{LABEL_KERNEL_ID}={kernel_id}"})


def reachable(port: int, address: str = "127.0.0.1") -> bool:
    return accepts((address, port), timeout=2)


async def lifecycle(
    kernel: Kernel, remote: RemoteHost, docker_client: docker.DockerClient, cwd: Path
) -> None:
    """Start (done), cwd, interrupt, restart: the kernel runs on the remote host, never here."""
    first = kernel.container_id
    assert [c.id for c in remote_containers(remote, kernel)] == [first]
    assert not docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_KERNEL_ID}={kernel.km.kernel_id}"}
    )
    reply = await kernel.execute("import os; print(os.getcwd()); print(open('data.txt').read(), end='')")
    assert reply.stdout == f"{cwd}\ndata from the host\n"
    await interrupt_a_sleep(kernel)
    assert (await kernel.execute("x = 1")).status == "ok"
    await kernel.km.restart_kernel()
    await kernel.kc.wait_for_ready(timeout=60)
    assert (await kernel.execute("print('x' in dir())")).stdout == "False\n"
    assert kernel.container_id != first
    assert [c.id for c in remote_containers(remote, kernel)] == [kernel.container_id]


async def test_a_kernel_on_an_ssh_host_runs_its_lifecycle_with_its_channels_over_ssh(
    on_remote: RemoteHost,
    dockerkernel: Callable[..., CliResult],
    start_kernel: Callable[..., Any],
    docker_client: docker.DockerClient,
    notebook_dir: Path,
) -> None:
    result = dockerkernel(
        "install", "--image", IMAGES["py3"], "--name", "remote", "--host", on_remote.ssh_url
    )
    assert result.code == 0, result.err
    kernel = await start_kernel("remote", cwd=str(notebook_dir))
    info = kernel.km.get_connection_info()
    assert info["ip"] == "127.0.0.1"
    # Published on the host's loopback, which is not ours: our port is the SSH forward.
    (container,) = remote_containers(on_remote, kernel)
    bindings = container.attrs["HostConfig"]["PortBindings"]
    assert {b[0]["HostIp"] for b in bindings.values()} == {"127.0.0.1"}
    assert not reachable(info["shell_port"], ADDRESS)
    await lifecycle(kernel, on_remote, docker_client, notebook_dir)

    ps = dockerkernel("ps")
    assert ps.code == 0, ps.err
    (row,) = [line for line in ps.out.splitlines() if str(kernel.km.kernel_id) in line]
    assert row.split()[-1] == on_remote.ssh_url
    doctor = dockerkernel("doctor")
    assert f"ok    Docker daemon {on_remote.ssh_url}: reachable, Docker" in doctor.out
    assert "ok    kernel remote: image dockerkernel-test/py3: Python 3" in doctor.out
    assert "GPUs" not in doctor.out  # no kernel asks for them, on either engine

    await kernel.shutdown()
    await wait_until(lambda: not remote_containers(on_remote, kernel), "the container's removal")
    assert not reachable(info["shell_port"])  # the forwards are closed with the kernel


async def test_a_dropped_ssh_connection_is_made_again_and_the_kernel_lives_on(
    on_remote: RemoteHost,
    dockerkernel: Callable[..., CliResult],
    start_kernel: Callable[..., Any],
    notebook_dir: Path,
) -> None:
    assert (
        dockerkernel(
            "install", "--image", IMAGES["py3"], "--name", "remote", "--host", on_remote.ssh_url
        ).code
        == 0
    )
    kernel = await start_kernel("remote", cwd=str(notebook_dir))
    container = kernel.container_id
    assert (await kernel.execute("x = 41")).status == "ok"
    assert on_remote.drop_ssh_connections() >= 1
    # The channels come back over a new connection, and the watch of the kernel's exit, which
    # lost its connection too, waits again: the restarter sees no exit.
    await kernel.kc.wait_for_ready(timeout=60)
    assert (await kernel.execute("print(x + 1)")).stdout == "42\n"
    assert on_remote.ssh_connections() >= 1
    assert kernel.container_id == container
    assert await kernel.km.is_alive()
    await interrupt_a_sleep(kernel)


async def test_a_kernel_on_a_tls_host_has_curve_encrypted_channels_on_the_hosts_address(
    on_remote: RemoteHost,
    dockerkernel: Callable[..., CliResult],
    start_kernel: Callable[..., Any],
    docker_client: docker.DockerClient,
    notebook_dir: Path,
) -> None:
    args = ["--image", IMAGES["py3"], "--name", "tls", "--host", on_remote.tcp_url, *on_remote.tls_args()]
    result = dockerkernel("install", *args)
    assert result.code == 0, result.err
    kernel = await start_kernel("tls", cwd=str(notebook_dir))
    info = kernel.km.get_connection_info()
    assert info["ip"] == ADDRESS
    assert info["curve_publickey"] and info["curve_secretkey"]
    (container,) = remote_containers(on_remote, kernel)
    bindings = container.attrs["HostConfig"]["PortBindings"]
    assert {b[0]["HostIp"] for b in bindings.values()} == {ADDRESS}
    # Nothing on our loopback, and a client without the keys gets no answer from the host's address.
    assert not reachable(info["shell_port"])
    plain = zmq.Context.instance().socket(zmq.DEALER)
    plain.linger = 0
    try:
        plain.connect(f"tcp://{ADDRESS}:{info['shell_port']}")
        kernel.km.session.send(plain, kernel.km.session.msg("kernel_info_request"))
        assert not plain.poll(2000)
    finally:
        plain.close()
    await lifecycle(kernel, on_remote, docker_client, notebook_dir)
    await kernel.shutdown()
    await wait_until(lambda: not remote_containers(on_remote, kernel), "the container's removal")


def test_a_tls_host_refuses_an_image_whose_ipykernel_lacks_curve(
    on_remote: RemoteHost, dockerkernel: Callable[..., CliResult]
) -> None:
    args = [
        "--image",
        IMAGES["py2"],
        "--python",
        "python",
        "--host",
        on_remote.tcp_url,
        *on_remote.tls_args(),
    ]
    result = dockerkernel("install", *args)
    assert result.code == 1
    assert result.err.splitlines()[-1] == "dockerkernel: " + errors.TLS_NEEDS_CURVE.format(
        host=on_remote.tcp_url, image=IMAGES["py2"], version="4.10.1"
    )
    without = dockerkernel("install", "--image", IMAGES["py3"], "--host", on_remote.tcp_url)
    assert without.code == 1
    assert without.err.splitlines()[-1] == "dockerkernel: " + errors.TLS_FILES_MISSING.format(
        host=on_remote.tcp_url
    )


async def test_a_folder_missing_on_the_host_is_one_sentence_and_a_path_map_mounts_it(
    on_remote: RemoteHost,
    dockerkernel: Callable[..., CliResult],
    start_kernel: Callable[..., Any],
    notebook_dir: Path,
    tmp_path: Path,
) -> None:
    missing = tmp_path / "not-on-the-host"
    install = ["--image", IMAGES["py3"], "--host", on_remote.ssh_url, "--mount", "notebook"]
    assert (
        dockerkernel(
            "install", *install, "--name", "unmapped", "--path-map", f"{notebook_dir}={missing}"
        ).code
        == 0
    )
    with pytest.raises(Exception) as failed:
        await start_kernel("unmapped", cwd=str(notebook_dir))
    assert str(failed.value) == errors.FOLDER_NOT_ON_HOST.format(path=missing, host=on_remote.ssh_url)
    assert not missing.exists()  # never made by the engine

    elsewhere = tmp_path / "as-the-host-has-it"
    elsewhere.mkdir()
    (elsewhere / "there.txt").write_text("on the host's storage\n")
    assert (
        dockerkernel(
            "install", *install, "--name", "mapped", "--path-map", f"{notebook_dir}={elsewhere}"
        ).code
        == 0
    )
    kernel = await start_kernel("mapped", cwd=str(notebook_dir))
    reply = await kernel.execute("import os; print(os.getcwd()); print(sorted(os.listdir()))")
    assert reply.stdout == f"{notebook_dir}\n['there.txt']\n"


def test_an_ssh_host_that_cannot_be_trusted_is_one_sentence(
    remote: RemoteHost,
    dockerkernel: Callable[..., CliResult],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    for name in ("id_ed25519", "id_ed25519.pub"):
        (home / ".ssh" / name).write_bytes((remote.home / ".ssh" / name).read_bytes())
    os.chmod(home / ".ssh" / "id_ed25519", 0o600)
    monkeypatch.setenv("HOME", str(home))  # the key, but no known_hosts
    result = dockerkernel("install", "--image", IMAGES["py3"], "--host", remote.ssh_url)
    assert result.code == 1
    assert result.err.splitlines()[-1] == "dockerkernel: " + errors.SSH_UNREACHABLE.format(
        host=remote.ssh_url, reason="its host key is not in known_hosts"
    )


async def test_a_server_wide_docker_host_runs_kernels_of_kernelspecs_that_name_none(
    on_remote: RemoteHost, dockerkernel: Callable[..., CliResult], notebook_dir: Path
) -> None:
    """c.DockerProvisioner.docker_host in the server's config; a kernelspec's own would win."""
    assert dockerkernel("install", "--image", IMAGES["py3"], "--name", "plain", "--no-pull").code == 0
    config = Config({"DockerProvisioner": {"docker_host": on_remote.ssh_url}})
    kernel = Kernel(AsyncKernelManager(kernel_name="plain", config=config))
    try:
        await kernel.start(cwd=str(notebook_dir))
        assert [c.id for c in remote_containers(on_remote, kernel)] == [kernel.container_id]
        assert (await kernel.execute("print(1 + 1)")).stdout == "2\n"
    finally:
        await kernel.shutdown()
    await wait_until(lambda: not remote_containers(on_remote, kernel), "the container's removal")


async def test_a_client_without_the_provisioner_runs_an_ssh_kernel_through_the_launcher(
    on_remote: RemoteHost, dockerkernel: Callable[..., CliResult], notebook_dir: Path
) -> None:
    """The argv's launcher forwards the kernel's ports over SSH too, and its signals."""
    assert (
        dockerkernel("install", "--image", IMAGES["py3"], "--name", "argv", "--host", on_remote.ssh_url).code
        == 0
    )
    kernel = Kernel(AsyncKernelManager(kernel_name="argv"))
    kernel.km.kernel_spec.metadata.pop("kernel_provisioner")  # as such a client would
    try:
        await kernel.start(cwd=str(notebook_dir))
        (container,) = on_remote.client.containers.list(filters={"label": f"{LABEL_KERNELSPEC}=argv"})
        launcher = psutil.Process(int(container.labels[LABEL_OWNER_PID]))
        assert launcher.cmdline()[1:4] == ["-m", "dockerkernel", "launch"]
        assert (await kernel.execute("import os; print(os.getcwd())")).stdout == f"{notebook_dir}\n"
        await interrupt_a_sleep(kernel)
    finally:
        await kernel.shutdown()

    def gone() -> bool:
        return not on_remote.client.containers.list(all=True, filters={"label": f"{LABEL_KERNELSPEC}=argv"})

    wait_until_sync(gone, "the launcher to remove its container")


def test_the_launcher_refuses_a_tls_host(
    on_remote: RemoteHost, dockerkernel: Callable[..., CliResult], jupyter_dirs: Path, tmp_path: Path
) -> None:
    args = ["--image", IMAGES["py3"], "--name", "tls", "--host", on_remote.tcp_url, *on_remote.tls_args()]
    assert dockerkernel("install", *args).code == 0
    connection_file = tmp_path / "kernel-1.json"
    connection_file.write_text("{}")
    spec_dir = jupyter_dirs / "data" / "kernels" / "tls"
    result = dockerkernel("launch", "--spec-dir", str(spec_dir), "-f", str(connection_file))
    assert result.code == 1
    assert result.err.splitlines()[-1] == "dockerkernel: " + errors.LAUNCHER_ON_TCP.format(
        kernel="tls", host=on_remote.tcp_url
    )
