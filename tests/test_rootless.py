"""Rootless engines: the same kernel lifecycle, as an ordinary user, on rootless Podman and rootless Docker.

Each runs as the user, with its socket in a runtime directory of the user's:
Podman's `podman system service` serves the Docker API, and Debian's
`dockerd-rootless.sh` runs dockerd under rootlesskit. dockerkernel reaches
them through DOCKER_HOST. In a rootless engine the user's uid is not the
container's, so this checks that files the kernel writes still belong to the
user on the host.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import pytest

from dockerkernel.engine.connect import engine_key, get_client
from dockerkernel.engine.kind import engine_of
from dockerkernel.labels import LABEL_KERNEL_ID
from dockerkernel.plan import GPUS_AUTO_ON_CPU, Engine

from conftest import IMAGES, PYTHONS, as_user, public_tempdir
from waiting import wait_until_sync

pytestmark = pytest.mark.docker

FLAVOURS = ["py3", "py2"]


@pytest.fixture(scope="module")
def podman(docker_client: docker.DockerClient, ordinary_user: pwd.struct_passwd) -> Iterator[str]:
    """The ordinary user's rootless Podman service, with the test images loaded; its DOCKER_HOST."""
    for binary in ("podman", "catatonit"):
        if shutil.which(binary) is None and not os.path.exists(f"/usr/libexec/podman/{binary}"):
            pytest.fail(f"these tests need Debian's {binary}; tests/run.sh installs it")
    with user_engine(
        ordinary_user,
        docker_client,
        "podman.sock",
        ["podman", "system", "service", "--time=0"],
        socket_arg=True,
        # Podman keeps a pause process that holds the user's namespace: this stops it.
        after=["podman", "system", "migrate"],
    ) as url:
        yield url


@pytest.fixture(scope="module")
def rootless_docker(docker_client: docker.DockerClient, ordinary_user: pwd.struct_passwd) -> Iterator[str]:
    """The ordinary user's rootless Docker daemon (Debian's dockerd-rootless.sh and rootlesskit).

    It runs in a user and network namespace of its own that rootlesskit makes,
    so it leaves the host's network, and its main daemon, alone.
    """
    script = shutil.which("dockerd-rootless.sh") or "/usr/share/docker.io/contrib/dockerd-rootless.sh"
    if not os.path.exists(script) or shutil.which("rootlesskit") is None:
        pytest.fail(
            "these tests need docker.io's dockerd-rootless.sh and rootlesskit; tests/run.sh installs them"
        )
    with user_engine(ordinary_user, docker_client, "docker.sock", ["sh", script]) as url:
        yield url


@contextmanager
def user_engine(
    user: pwd.struct_passwd,
    docker_client: docker.DockerClient,
    socket_name: str,
    command: list[str],
    socket_arg: bool = False,
    after: list[str] | None = None,
) -> Iterator[str]:
    """Run a rootless engine as ``user`` with a runtime directory of its own, the test images loaded."""
    runtime_dir = public_tempdir("dockerkernel-rootless-")
    os.chown(runtime_dir, user.pw_uid, user.pw_gid)
    os.chmod(runtime_dir, 0o700)
    sock = runtime_dir / socket_name
    env = {
        "HOME": user.pw_dir,  # its image store stays there between runs
        "PATH": f"/usr/share/docker.io/contrib:/usr/sbin:/sbin:{os.environ['PATH']}",
        "XDG_RUNTIME_DIR": str(runtime_dir),
    }
    log_path = runtime_dir.with_suffix(".log")
    url = f"unix://{sock}"
    with open(log_path, "wb") as log:
        service = subprocess.Popen(
            as_user(user, [*command, *([url] if socket_arg else [])]),
            env=env, cwd=user.pw_dir, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    client = docker.DockerClient(base_url=url, version="1.41", timeout=300)  # asks nothing yet
    try:
        wait_until_sync(
            lambda: listening(sock, service, log_path), what=f"the {socket_name} engine", timeout=120
        )
        for flavour in FLAVOURS:
            image = docker_client.images.get(IMAGES[flavour])
            try:
                if client.images.get(IMAGES[flavour]).id == image.id:
                    continue
            except docker.errors.ImageNotFound:
                pass
            client.images.load(b"".join(image.save(named=True)))
        client.images.prune()  # the images these replaced
        yield url
    finally:
        for container in client.containers.list(all=True, filters={"label": LABEL_KERNEL_ID}):
            container.remove(force=True)
        for volume in client.volumes.list(filters={"name": "dockerkernel-home-"}):
            volume.remove(force=True)
        client.close()
        os.killpg(service.pid, signal.SIGTERM)  # the engine and the processes it started
        service.wait(timeout=60)
        if after:
            subprocess.run(as_user(user, after), env=env, cwd=user.pw_dir, capture_output=True, timeout=60)
        shutil.rmtree(runtime_dir, ignore_errors=True)
        log_path.unlink()


def listening(path: Path, service: subprocess.Popen[bytes], log: Path) -> bool:
    assert service.poll() is None, f"the engine exited:\n{log.read_text(errors='replace')[-3000:]}"
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


@pytest.mark.parametrize("engine", ["podman", "rootless_docker"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_kernel_lifecycle_on_a_rootless_engine(
    flavour: str,
    engine: str,
    request: pytest.FixtureRequest,
    ordinary_user: pwd.struct_passwd,
    user_workdir: Path,
    user_session: Any,
) -> None:
    notebooks = user_workdir / "notebooks"
    notebooks.mkdir()
    (notebooks / "data.txt").write_text("data from the host\n")
    os.chown(notebooks, ordinary_user.pw_uid, ordinary_user.pw_gid)
    cells = [
        "import os, getpass\nprint(os.getcwd())\nprint(open('data.txt').read().strip())\n"
        "print(getpass.getuser())",
        "open('from-kernel.txt', 'w').write('written in the container')\nx = 1",
        "home = os.path.expanduser('~')\nopen(os.path.join(home, 'kept.txt'), 'w').write('x')\nprint(home)",
        "%interrupt",
        "print('still here')",
        "%restart",
        "x",
    ]
    install = ["--image", IMAGES[flavour], "--python", PYTHONS[flavour]]
    url = request.getfixturevalue(engine)
    if engine == "podman":  # the kernelspec names its engine
        session = user_session([*install, "--host", url], cells, cwd=notebooks)
    else:  # the environment does
        session = user_session(install, cells, cwd=notebooks, DOCKER_HOST=url)

    # Over ipc: sockets in a private folder of the user's, bind-mounted by the rootless engine.
    assert session.ip.startswith(f"/tmp/dockerkernel-{ordinary_user.pw_uid}/")
    first, written, home, interrupted, after, restarted, forgotten = session.outputs
    assert first.splitlines() == [str(notebooks), "data from the host", ordinary_user.pw_name]
    assert written == ""
    assert home == "/dockerkernel/home\n"  # the home volume, writable by the kernel
    assert interrupted == "ERROR KeyboardInterrupt"
    assert after == "still here\n"
    assert (restarted, forgotten) == ("restarted", "ERROR NameError")
    owned = (notebooks / "from-kernel.txt").stat()
    assert (owned.st_uid, owned.st_gid) == (ordinary_user.pw_uid, ordinary_user.pw_gid)  # not a subuid

    client = docker.DockerClient(base_url=url)
    try:
        # Nothing left: the kernel's container is removed just after its shutdown.
        wait_until_sync(
            lambda: not client.containers.list(all=True, filters={"label": LABEL_KERNEL_ID}), "removal"
        )
    finally:
        client.close()


@pytest.mark.parametrize("engine", ["podman", "rootless_docker"])
def test_auto_gpus_run_on_the_cpu_of_a_rootless_engine_without_gpus(
    engine: str, request: pytest.FixtureRequest, user_session: Any
) -> None:
    """Podman is asked through CDI, rootless Docker through its device driver: neither has GPUs here."""
    url = request.getfixturevalue(engine)
    session = user_session(["--image", IMAGES["py3"], "--gpus", "auto"], ["pass"], DOCKER_HOST=url)
    assert session.outputs == [GPUS_AUTO_ON_CPU + "\n"]


def test_engines_on_unix_sockets_are_told_apart(podman: str) -> None:
    """The Docker SDK names every unix socket 'localhost': what is kept per engine must not mix them."""
    assert engine_of(get_client()) == Engine(podman=False, rootless=False)
    assert engine_of(get_client(podman)) == Engine(podman=True, rootless=True)
    assert engine_key(get_client(podman)) == podman
