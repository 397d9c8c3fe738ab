"""`dockerkernel doctor` on this machine: a daemon without GPUs, and kernels good and bad."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from dockerkernel import channels, errors

from conftest import BARE


@pytest.mark.docker
def test_doctor_checks_everything_and_says_how_to_fix_what_fails(
    dockerkernel: Any, install_test_kernel: Any, docker_client: Any
) -> None:
    install_test_kernel("py3")
    assert dockerkernel("install", "--image", "nosuch/img:1", "--name", "missing", "--no-pull").code == 0
    assert dockerkernel("install", "--image", BARE["py3"], "--name", "bare", "--no-pull").code == 0

    result = dockerkernel("doctor")
    assert result.code == 1
    lines = result.out.splitlines()
    version = docker_client.version()
    assert (
        lines[0]
        == f"ok    Docker daemon: reachable, Docker {version['Version']} (API {version['ApiVersion']})"
    )
    assert lines[1] == (
        "FAIL  GPUs: the Docker daemon cannot give containers GPUs (nvidia: could not select device "
        'driver "" with capabilities: [[gpu]]; cdi: could not select device driver "cdi" with '
        "capabilities: []), so kernels cannot use GPUs (gpus 'auto' runs them on the CPU): install "
        "the NVIDIA Container Toolkit and restart Docker."
    )
    kernels = sorted(lines[2:5])
    assert kernels[0] == (
        "FAIL  kernel bare: image dockerkernel-test/bare-py3 has Python 3.11.2 but no ipykernel: "
        "reinstall with `dockerkernel install --image dockerkernel-test/bare-py3 --name bare "
        "--add-ipykernel --replace`."
    )
    assert (
        kernels[1]
        == "FAIL  kernel missing: image nosuch/img:1 is not present: run `dockerkernel pull missing`."
    )
    assert kernels[2].startswith("ok    kernel test-py3: image dockerkernel-test/py3: Python 3.11.")
    assert kernels[2].endswith(", ipykernel 7.4.0; channels ipc (private sockets)")
    base = channels.base_folder()
    assert lines[5] == f"ok    Private channels: kernel sockets in {base}, yours alone (mode 0700)"
    assert (
        lines[6] == "ok    Server extension: enabled: servers remove the containers of servers that are gone"
    )
    assert lines[7] == "3 checks failed."


def test_doctor_without_a_daemon(tmp_path: Any) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = subprocess.run(
        [sys.executable, "-m", "dockerkernel", "doctor"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "FAIL  Docker daemon: " + errors.DOCKER_UNREACHABLE.format(
        reason="no Docker socket was found"
    )
    assert lines[1].startswith("ok    Private channels: kernel sockets in ")
    assert lines[2].startswith("ok    Server extension: enabled")
    assert result.stderr == ""


@pytest.mark.docker
def test_each_engine_of_the_kernelspecs_is_checked_and_listed_on_its_own(
    dockerkernel: Any, install_test_kernel: Any, docker_client: Any, tmp_path: Any
) -> None:
    """A kernelspec on an engine that does not answer: its lines say so, the others still show."""
    install_test_kernel("py3")
    gone = f"unix://{tmp_path}/gone.sock"
    install = ["install", "--image", BARE["py3"], "--name", "away", "--host", gone, "--no-pull"]
    assert dockerkernel(*install).code == 0
    unreachable = errors.DOCKER_UNREACHABLE.format(reason="no Docker socket was found")

    lines = dockerkernel("doctor").out.splitlines()
    assert lines[0].startswith("ok    Docker daemon: reachable")
    assert f"FAIL  Docker daemon {gone}: {unreachable}" in lines
    assert not any(line.startswith("ok    kernel away") or "FAIL  kernel away" in line for line in lines)
    assert any(line.startswith("ok    kernel test-py3: ") for line in lines)

    ps = dockerkernel("ps")
    assert (ps.code, ps.err) == (1, f"dockerkernel: {gone}: {unreachable}\n")
    assert ps.out.startswith("No kernel containers of yours")
    listed = dockerkernel("list", "--json").out
    assert f'"docker_host": "{gone}"' in listed
