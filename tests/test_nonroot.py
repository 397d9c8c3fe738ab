"""A kernel started by an ordinary user in the docker group runs as that user."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Run by the non-root user: install a kernelspec with the CLI, start a kernel
# in the current directory, write a file there, report the kernel's ids.
SCRIPT = """
import json, os, subprocess, sys
from jupyter_client.manager import KernelManager
subprocess.run(
    [sys.executable, "-m", "dockerkernel", "install", "--image", IMAGE, "--name", "nonroot"], check=True
)
km = KernelManager(kernel_name="nonroot")
km.start_kernel(cwd=os.getcwd())
kc = km.client()
kc.start_channels()
try:
    kc.wait_for_ready(timeout=60)
    out = []
    kc.execute_interactive(
        "import os; open('owned.txt', 'w').write('x'); print(os.getuid(), os.getgid())",
        timeout=60, output_hook=lambda m: out.append(m["content"].get("text", "")),
    )
finally:
    kc.stop_channels()
    km.shutdown_kernel()
print(json.dumps({"ids": "".join(out).split()}))
"""


@pytest.fixture
def ordinary_user() -> pwd.struct_passwd:
    """The user to run as: this one if not root, else the one tests/run.sh made."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    name = os.environ.get("DOCKERKERNEL_TEST_USER")
    if not name:
        pytest.fail(
            "running as root: set DOCKERKERNEL_TEST_USER to a non-root user "
            "in the docker group (tests/run.sh does)"
        )
    user = pwd.getpwnam(name)
    assert name in grp.getgrnam("docker").gr_mem, f"{name} must be in the docker group"
    return user


@pytest.fixture
def user_workdir(ordinary_user: pwd.struct_passwd) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dockerkernel-nonroot-"))
    os.chmod(path, 0o755)
    if os.geteuid() == 0:
        os.chown(path, ordinary_user.pw_uid, ordinary_user.pw_gid)
    yield path
    shutil.rmtree(path)


@pytest.mark.docker
def test_kernel_runs_as_the_invoking_non_root_user(
    ordinary_user: pwd.struct_passwd,
    user_workdir: Path,
    docker_client: Any,
    no_leftovers: None,
    test_images: dict[str, str],
) -> None:
    assert ordinary_user.pw_uid != 0
    env = {
        "HOME": str(user_workdir),
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "JUPYTER_DATA_DIR": str(user_workdir / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(user_workdir / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    if "DOCKER_HOST" in os.environ:
        env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    command = [sys.executable, "-c", f"IMAGE = {test_images['py3']!r}\n{SCRIPT}"]
    if os.geteuid() == 0:
        command = [
            "setpriv",
            f"--reuid={ordinary_user.pw_uid}",
            f"--regid={ordinary_user.pw_gid}",
            "--init-groups",
            *command,
        ]
    result = subprocess.run(command, cwd=user_workdir, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    ids = json.loads(result.stdout.splitlines()[-1])["ids"]
    assert ids == [str(ordinary_user.pw_uid), str(ordinary_user.pw_gid)]
    owned = (user_workdir / "owned.txt").stat()
    assert (owned.st_uid, owned.st_gid) == (ordinary_user.pw_uid, ordinary_user.pw_gid)
