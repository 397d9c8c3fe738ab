"""GPUs on a simulated NVIDIA host (tests/gpu_host.py): found, shared out fairly, shown, freed.

The host's daemon serves `--gpus` through its NVIDIA device driver, with no
'nvidia' runtime entry, as dockerd does wherever the NVIDIA hook is on its
PATH. Its four GPUs are listed by the stand-in nvidia-smi that the stand-in
hook puts into GPU containers. Kernels are started by processes of two users,
each in the host's network namespace, where the kernels' ports are.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from dockerkernel import errors
from dockerkernel.engine.containers import kernel_containers
from dockerkernel.engine.gpus import GPU_LOCK_NAME
from dockerkernel.labels import (
    LABEL_GPU_LOCK,
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_STARTED,
    LABEL_OWNER_UID,
)
from dockerkernel.plan import GPUS_GIVEN, GPUS_SHARED

from conftest import IMAGES, UserSession, as_user, public_tempdir, spawn_session, user_env
from gpu_host import GPUS, GpuHost, simulated_gpu_host
from waiting import wait_until_sync

pytestmark = pytest.mark.docker

NAME = "NVIDIA Simulated H200, 140 GiB"
VISIBLE = "import os; print(os.environ.get('NVIDIA_VISIBLE_DEVICES'))"
LISTED = "import subprocess; print(subprocess.check_output(['nvidia-smi', '-L']).decode().strip())"


@pytest.fixture(scope="module")
def gpu_host(docker_client: docker.DockerClient) -> Iterator[GpuHost]:
    if os.geteuid() != 0:
        pytest.fail("the simulated GPU host needs root (a network namespace and a dockerd): run as root")
    with simulated_gpu_host(docker_client, [IMAGES["py3"]]) as host:
        yield host


@pytest.fixture
def start(
    gpu_host: GpuHost, ordinary_user: pwd.struct_passwd, public_scripts: Path
) -> Iterator[Callable[..., UserSession]]:
    """Start a kernel on the GPU host, in a process of its own, as the ordinary user or as root.

    The session runs its cells and keeps the kernel until closed; every one
    still open is closed after the test, and the host must then have no
    kernel container left.
    """
    sessions: list[UserSession] = []
    folders: list[Path] = []

    def run(gpus: str, *install: str, user: str = "ordinary", cells: list[str] | None = None) -> UserSession:
        workdir = public_tempdir("dockerkernel-gpu-")
        folders.append(workdir)
        who = ordinary_user if user == "ordinary" else None
        if who is not None:
            os.chown(workdir, who.pw_uid, who.pw_gid)
        args = {
            "install": ["--image", IMAGES["py3"], "--gpus", gpus, "--no-pull", *install],
            "cells": cells if cells is not None else ["pass", VISIBLE],
            "cwd": str(workdir),
            "keep": True,
            "name": f"gpu-{gpus.replace('=', '-').replace(',', '-')}",
        }
        session = spawn_session(
            public_scripts, who, workdir, args, wrap=gpu_host.enter, env={"DOCKER_HOST": gpu_host.docker_host}
        )
        sessions.append(session)
        return session

    yield run
    for session in sessions:
        session.close()
    for folder in folders:
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    # A shutdown ends at the kernel's exit; its container is removed just after.
    wait_until_sync(lambda: not kernel_containers(gpu_host.client), "the GPU host's kernels to go")
    for volume in gpu_host.client.volumes.list(filters={"name": "dockerkernel-home-"}):
        volume.remove(force=True)


def cli(gpu_host: GpuHost, *args: str, user: pwd.struct_passwd | None = None, workdir: Path) -> str:
    """The dockerkernel CLI against the GPU host's daemon, as ``user`` (None: root), with ``workdir``'s
    kernelspecs."""
    command = [sys.executable, "-m", "dockerkernel", *args]
    env = {**user_env(workdir), "DOCKER_HOST": gpu_host.docker_host}
    done = subprocess.run(
        as_user(user, command) if user else command, env=env, capture_output=True, text=True, timeout=120
    )
    return done.stdout + done.stderr


def given(*ids: str) -> str:
    return GPUS_GIVEN.format(gpus=", ".join(f"GPU {i} ({NAME})" for i in ids))


def test_auto_takes_the_gpus_of_a_daemon_that_has_no_nvidia_runtime_entry(
    gpu_host: GpuHost, start: Callable[..., UserSession]
) -> None:
    assert "nvidia" not in (gpu_host.client.info().get("Runtimes") or {})
    session = start("auto", cells=["pass", VISIBLE, LISTED]).result()
    assert not session.error, session.error
    notice, visible, listed = session.outputs
    assert notice == given("0", "1", "2", "3") + "\n"
    assert visible == "all\n"
    assert listed.splitlines() == [f"GPU {i}: NVIDIA Simulated H200 (UUID: {uuid})" for i, uuid, *_ in GPUS]


def test_kernels_started_at_once_get_gpus_of_their_own_and_free_them_at_shutdown(
    gpu_host: GpuHost, start: Callable[..., UserSession], ordinary_user: pwd.struct_passwd
) -> None:
    # Four kernels of two users, each started by a process of its own, all at once.
    sessions = [start("1", user=user) for user in ("ordinary", "root", "ordinary", "root")]
    for session in sessions:
        session.result()
        assert not session.error, session.error
    got = {session.outputs[1].strip(): session for session in sessions}
    assert sorted(got) == ["0", "1", "2", "3"]
    for gpu, session in got.items():
        assert session.outputs[0] == given(gpu) + "\n"

    ps = cli(gpu_host, "ps", "--all", workdir=sessions[1].workdir)
    rows = [line.split() for line in ps.splitlines()[1:]]
    assert sorted(row[6] for row in rows) == ["0", "1", "2", "3"], ps
    assert sorted(row[3] for row in rows) == sorted([ordinary_user.pw_name] * 2 + ["root"] * 2), ps
    doctor = cli(gpu_host, "doctor", user=ordinary_user, workdir=sessions[0].workdir)
    assert "ok    GPUs: 4 through Docker's NVIDIA device driver" in doctor, doctor
    for i, uuid, *_ in GPUS:
        assert f"ok    GPU {i}: NVIDIA Simulated H200, 143771 MiB, {uuid}; held by " in doctor, doctor

    # None is free: a kernel that refuses to share says who holds what.
    refused = start("1", "--when-gpus-busy", "refuse").result()
    holders = "; ".join(
        f"GPU {i}: {'root' if got[i] in sessions[1::2] else ordinary_user.pw_name} (gpu-1)" for i in "0123"
    )
    assert refused.error == errors.GPUS_BUSY.format(count=1, free=0, total=4, holders=holders)
    # One that shares (the default) gets the least held GPU, and the notebook says with whom.
    shared = start("1").result()
    assert not shared.error, shared.error
    notice = GPUS_SHARED.format(gpus=f"GPU 0 ({NAME})", free=0, total=4, holders=holders.split("; ")[0])
    assert shared.outputs == [notice + "\n", "0\n"]

    # A kernel that shuts down frees its GPU for the next.
    got["2"].close()
    after = start("1").result()
    assert after.outputs == [given("2") + "\n", "2\n"]


def test_a_count_larger_than_the_host_and_an_unknown_device_are_refused(
    start: Callable[..., UserSession],
) -> None:
    assert start("5").result().error == errors.GPUS_MORE_THAN_HOST.format(count=5, total=4)
    assert start("device=7").result().error == errors.GPU_UNKNOWN_DEVICE.format(
        unknown="7", gpus="device=7", known="0,1,2,3", first="0"
    )


def test_explicit_devices_and_all_keep_their_meaning(start: Callable[..., UserSession]) -> None:
    two = start("device=1,3").result()
    assert two.outputs == [given("1", "3") + "\n", "1,3\n"]
    every = start("all").result()
    assert every.outputs == [given("0", "1", "2", "3") + "\n", "all\n"]


def test_a_lock_left_by_a_process_that_died_is_taken_over(
    gpu_host: GpuHost, start: Callable[..., UserSession]
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = gpu_host.client.api.create_container(
        IMAGES["py3"],
        name=GPU_LOCK_NAME,
        labels={
            LABEL_GPU_LOCK: "1",
            LABEL_OWNER_HOST: os.uname().nodename,
            LABEL_OWNER_PID: str(dead.pid),
            LABEL_OWNER_STARTED: "0",
            LABEL_OWNER_UID: "0",
        },
    )
    session = start("1", user="root").result()
    assert session.outputs == [given("0") + "\n", "0\n"]
    with pytest.raises(docker.errors.NotFound):
        gpu_host.client.api.inspect_container(lock["Id"])
