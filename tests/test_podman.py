"""Rootless Podman, through its Docker-compatible socket: the same kernel lifecycle, as an ordinary user.

The user's own `podman system service` serves the Docker API on a socket in
its runtime directory; dockerkernel reaches it through DOCKER_HOST. In a
rootless engine the user's uid is not the container's, so this checks that
files the kernel writes still belong to the user on the host.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from dockerkernel.spec import LABEL_KERNEL_ID

from conftest import IMAGES, PYTHONS, as_user
from waiting import wait_until_sync

pytestmark = pytest.mark.docker

FLAVOURS = ["py3", "py2"]


@pytest.fixture(scope="module")
def podman(docker_client: docker.DockerClient, ordinary_user: pwd.struct_passwd) -> Iterator[str]:
    """The ordinary user's rootless Podman service, with the test images loaded; its DOCKER_HOST."""
    for binary in ("podman", "catatonit"):
        if shutil.which(binary) is None and not os.path.exists(f"/usr/libexec/podman/{binary}"):
            pytest.fail(f"these tests need Debian's {binary}; tests/run.sh installs it")
    runtime_dir = Path(tempfile.mkdtemp(prefix="dockerkernel-podman-"))
    os.chown(runtime_dir, ordinary_user.pw_uid, ordinary_user.pw_gid)
    os.chmod(runtime_dir, 0o700)
    sock = runtime_dir / "podman.sock"
    env = {
        "HOME": ordinary_user.pw_dir,  # its image store stays there between runs
        "PATH": os.environ["PATH"],
        "XDG_RUNTIME_DIR": str(runtime_dir),
    }
    log = open(runtime_dir.with_suffix(".log"), "wb")
    service = subprocess.Popen(
        as_user(ordinary_user, ["podman", "system", "service", "--time=0", f"unix://{sock}"]),
        env=env, cwd=ordinary_user.pw_dir, stdout=log, stderr=log,
    )  # fmt: skip
    url = f"unix://{sock}"
    client = docker.DockerClient(base_url=url, version="1.41", timeout=300)  # asks nothing yet
    try:
        wait_until_sync(lambda: listening(sock, service), what="the Podman service", timeout=60)
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
        service.terminate()
        service.wait(timeout=30)
        log.close()
        shutil.rmtree(runtime_dir, ignore_errors=True)
        runtime_dir.with_suffix(".log").unlink()


def listening(path: Path, service: subprocess.Popen[bytes]) -> bool:
    assert service.poll() is None, "the Podman service exited"
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_kernel_lifecycle_on_rootless_podman(
    flavour: str,
    podman: str,
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
        "%interrupt",
        "print('still here')",
        "%restart",
        "x",
    ]
    install = ["--image", IMAGES[flavour], "--python", PYTHONS[flavour]]
    session = user_session(install, cells, cwd=notebooks, DOCKER_HOST=podman)

    first, written, interrupted, after, restarted, forgotten = session.outputs
    assert first.splitlines() == [str(notebooks), "data from the host", ordinary_user.pw_name]
    assert written == ""
    assert interrupted == "ERROR KeyboardInterrupt"
    assert after == "still here\n"
    assert (restarted, forgotten) == ("restarted", "ERROR NameError")
    owned = (notebooks / "from-kernel.txt").stat()
    assert (owned.st_uid, owned.st_gid) == (ordinary_user.pw_uid, ordinary_user.pw_gid)  # not a subuid

    client = docker.DockerClient(base_url=podman)
    try:
        assert client.containers.list(all=True, filters={"label": LABEL_KERNEL_ID}) == []  # nothing left
    finally:
        client.close()
