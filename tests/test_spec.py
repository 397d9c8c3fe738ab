"""The container plan: what Docker is asked for, checked without Docker."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import pytest

from dockerkernel.settings import DockerSettings
from dockerkernel.spec import (
    CONTAINER_CONNECTION_FILE,
    GPUS_AUTO_ON_CPU,
    LABEL_KERNEL_ID,
    LABEL_KERNELSPEC,
    LABEL_OWNER_PID,
    NOTICE_STARTUP_FILE,
    ContainerPlan,
    Owner,
    kernel_command,
    kernel_files_archive,
    plan_container,
    resolve_auto_gpus,
)

CONNECTION = {
    "transport": "tcp",
    "ip": "127.0.0.1",
    "key": b"secret-key",
    "signature_scheme": "hmac-sha256",
    "shell_port": 50001,
    "iopub_port": 50002,
    "stdin_port": 50003,
    "hb_port": 50004,
    "control_port": 50005,
}
OWNER = Owner(host="host", pid=123, started="1.00")


def plan(settings: DockerSettings | None = None, **kwargs: Any) -> ContainerPlan:
    args: dict[str, Any] = dict(
        kernel_id="kid",
        kernel_name="spec",
        connection_info=CONNECTION,
        cwd="/home/me/notebooks",
        spec_env={},
        launch_env={},
        owner=OWNER,
        host_ids=(1000, 100),
    )
    args.update(kwargs)
    return plan_container(settings or DockerSettings(image="img"), **args)


def test_command_fills_in_the_container_connection_file_and_appends_client_arguments() -> None:
    cmd = kernel_command(["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"], ["--debug"])
    assert cmd == ["python", "-m", "ipykernel_launcher", "-f", CONTAINER_CONNECTION_FILE, "--debug"]


def test_ports_are_published_on_loopback_only() -> None:
    kwargs = plan().create_kwargs
    assert kwargs["ports"] == {f"{p}/tcp": ("127.0.0.1", p) for p in range(50001, 50006)}
    assert kwargs["network"] == "bridge"


def test_host_network_publishes_nothing_and_binds_loopback() -> None:
    p = plan(DockerSettings(image="img", network="host"))
    assert p.create_kwargs["network_mode"] == "host"
    assert "ports" not in p.create_kwargs
    assert p.connection["ip"] == "127.0.0.1"


def test_container_connection_file_listens_inside_the_container_with_the_same_key() -> None:
    conn = plan().connection
    assert conn["ip"] == "0.0.0.0"
    assert conn["key"] == "secret-key"
    assert conn["shell_port"] == 50001


def test_notebook_directory_is_mounted_at_its_own_path_and_is_the_working_directory() -> None:
    kwargs = plan(DockerSettings(image="img", volumes=["/data:/data:ro"])).create_kwargs
    assert kwargs["working_dir"] == "/home/me/notebooks"
    assert kwargs["volumes"] == {
        "/home/me/notebooks": {"bind": "/home/me/notebooks", "mode": "rw"},
        "/data": {"bind": "/data", "mode": "ro"},
    }


@pytest.mark.parametrize(
    ("user", "expected", "owner"),
    [
        ("host", "1000:100", (1000, 100)),
        ("2000", "2000:2000", (2000, 2000)),
        ("2000:3", "2000:3", (2000, 3)),
        ("image", None, None),
    ],
)
def test_user(user: str, expected: str | None, owner: tuple[int, int] | None) -> None:
    p = plan(DockerSettings(image="img", user=user))
    assert p.create_kwargs.get("user") == expected
    assert p.file_owner == owner


def test_environment_is_an_allow_list() -> None:
    launch_env = {
        "JPY_SESSION_NAME": "/nb/a.ipynb",
        "JPY_PARENT_PID": "1",
        "PATH": "/host/bin",
        "AWS_SECRET": "x",
    }
    kwargs = plan(
        DockerSettings(image="img", environment={"FROM_CONFIG": "1"}),
        spec_env={"FROM_SPEC": "2"},
        launch_env=launch_env,
    ).create_kwargs
    assert kwargs["environment"] == {
        "JPY_SESSION_NAME": "/nb/a.ipynb",
        "HOME": "/dockerkernel/home",
        "FROM_SPEC": "2",
        "FROM_CONFIG": "1",
    }


def test_image_user_keeps_the_image_home() -> None:
    assert "HOME" not in plan(DockerSettings(image="img", user="image")).create_kwargs["environment"]


@pytest.mark.parametrize(
    ("gpus", "request_"),
    [
        ("all", {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}),
        ("2", {"Driver": "", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}),
        (
            "device=0,3",
            {"Driver": "", "Count": 0, "DeviceIDs": ["0", "3"], "Capabilities": [["gpu"]], "Options": {}},
        ),
    ],
)
def test_gpus_become_device_requests(gpus: str, request_: dict[str, Any]) -> None:
    requests = plan(DockerSettings(image="img", gpus=gpus)).create_kwargs["device_requests"]
    assert [dict(r) for r in requests] == [request_]


def test_no_gpus_no_device_requests() -> None:
    assert "device_requests" not in plan().create_kwargs


def test_auto_gpus_take_all_gpus_where_the_daemon_has_the_nvidia_runtime() -> None:
    auto = plan(DockerSettings(image="img", gpus="auto"))
    assert "device_requests" not in auto.create_kwargs
    with_gpus = resolve_auto_gpus(auto, nvidia_runtime=True)
    assert [r["Count"] for r in with_gpus.create_kwargs["device_requests"]] == [-1]
    assert with_gpus.notice == ""
    assert "device_requests" not in auto.create_kwargs  # plans are values


def test_auto_gpus_without_the_runtime_run_on_the_cpu_with_a_notice_in_the_notebook() -> None:
    on_cpu = resolve_auto_gpus(plan(DockerSettings(image="img", gpus="auto")), nvidia_runtime=False)
    assert "device_requests" not in on_cpu.create_kwargs
    assert on_cpu.notice == GPUS_AUTO_ON_CPU
    with tarfile.open(fileobj=io.BytesIO(kernel_files_archive(on_cpu))) as tar:
        startup = tar.getmember(NOTICE_STARTUP_FILE.lstrip("/"))
        assert (startup.uid, startup.mode) == (1000, 0o600)
        script = tar.extractfile(startup).read().decode()  # type: ignore[union-attr]
    compile(script, "startup", "exec")
    assert repr(GPUS_AUTO_ON_CPU) in script
    # Other settings are left alone, and get no startup file.
    assert resolve_auto_gpus(plan(), nvidia_runtime=False).notice == ""
    with tarfile.open(fileobj=io.BytesIO(kernel_files_archive(plan()))) as tar:
        assert NOTICE_STARTUP_FILE.lstrip("/") not in tar.getnames()


def test_limits_labels_init_and_privileges() -> None:
    kwargs = plan(DockerSettings(image="img", shm_size="2g", mem_limit="8g", cpus=1.5)).create_kwargs
    assert (kwargs["shm_size"], kwargs["mem_limit"], kwargs["nano_cpus"]) == ("2g", "8g", 1_500_000_000)
    assert kwargs["init"] is True
    assert kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["labels"][LABEL_KERNEL_ID] == "kid"
    assert kwargs["labels"][LABEL_KERNELSPEC] == "spec"
    assert kwargs["labels"][LABEL_OWNER_PID] == "123"
    for risky in ("privileged", "cap_add", "pid_mode"):
        assert risky not in kwargs


def test_container_options_are_the_escape_hatch() -> None:
    kwargs = plan(DockerSettings(image="img", container_options={"ipc_mode": "host"})).create_kwargs
    assert kwargs["ipc_mode"] == "host"


def test_kernel_files_belong_to_the_kernel_user_and_are_private() -> None:
    with tarfile.open(fileobj=io.BytesIO(kernel_files_archive(plan()))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        conn = members[CONTAINER_CONNECTION_FILE.lstrip("/")]
        assert (conn.uid, conn.gid, conn.mode) == (1000, 100, 0o600)
        assert members["dockerkernel/run"].mode == 0o700
        assert members["dockerkernel/home"].mode == 0o700
        data = json.loads(tar.extractfile(conn).read())  # type: ignore[union-attr]
    assert data["ip"] == "0.0.0.0" and data["key"] == "secret-key"
