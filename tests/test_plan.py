"""The container plan: what Docker is asked for, checked without Docker."""

from __future__ import annotations

import datetime
import io
import json
import tarfile
from dataclasses import replace
from typing import Any

import pytest
from docker.types import SecretReference

from dockerkernel import errors, provenance, swarm, warm_pool
from dockerkernel.channels import CONTAINER_IPC_DIR, Channels
from dockerkernel.engine.containers import create_args
from dockerkernel.errors import DockerKernelError
from dockerkernel.gpus import CDI, NVIDIA, Gpu, GpuSupport, Holding
from dockerkernel.identity import Identity, merge_group, merge_passwd
from dockerkernel.kernel_files import (
    CONTAINER_CONNECTION_FILE,
    CONTAINER_HOME,
    STARTUP_FILE,
    KernelFile,
    files_archive,
    home_folder,
    kernel_files,
    place_files,
)
from dockerkernel.labels import (
    LABEL_GPUS,
    LABEL_KERNEL_ID,
    LABEL_KERNELSPEC,
    LABEL_OWNER_PID,
    LABEL_OWNER_UID,
    LABEL_POOL,
    Owner,
)
from dockerkernel.plan import (
    GPUS_AUTO_ON_CPU,
    GPUS_GIVEN,
    PORT_NAMES,
    ContainerPlan,
    Engine,
    Facts,
    draft,
    finish,
    for_engine,
    kernel_command,
    mounted_folders,
    place_gpus,
    with_read_only_files,
    with_startup,
)
from dockerkernel.settings import DockerSettings
from dockerkernel.swarm import SECRET_FILE, service_args
from dockerkernel.validation import check_swarm

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
OWNER = Owner(host="host", pid=123, started="1.00", uid=1000)
ME = Identity(1000, 100, "me", groups=(27, 2000), group_names=((100, "users"), (2000, "datasets")))


def plan(settings: DockerSettings | None = None, **kwargs: Any) -> ContainerPlan:
    args: dict[str, Any] = dict(
        kernel_id="kid",
        kernel_name="spec",
        connection_info=CONNECTION,
        cwd="/home/me/notebooks",
        spec_env={},
        launch_env={},
        owner=OWNER,
        identity=ME,
    )
    args.update(kwargs)
    return draft(settings or DockerSettings(image="img"), **args)


def kernel_files_archive(p: ContainerPlan, passwd: str | None = None, group: str | None = None) -> bytes:
    """What is copied into a created container of ``p``, whose home needs its owner set."""
    return files_archive(p, place_files(p, kernel_files(p, passwd, group), home_folder(p)).copied)


def test_command_fills_in_the_container_connection_file_and_appends_client_arguments() -> None:
    cmd = kernel_command(["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"], ["--debug"])
    assert cmd == ["python", "-m", "ipykernel_launcher", "-f", CONTAINER_CONNECTION_FILE, "--debug"]


IPC = Channels("ipc", folder="/run/user/1000/dockerkernel/0a1b2c3d")


def test_ipc_channels_publish_no_ports_and_mount_the_kernels_own_folder() -> None:
    planned = plan(channels=IPC)
    kwargs = create_args(planned)
    assert "ports" not in kwargs
    assert kwargs["network"] == "dockerkernel-u1000"  # the kernel keeps its outbound network
    sockets = [m for m in kwargs["mounts"] if m["Target"] == CONTAINER_IPC_DIR]
    assert [(m["Source"], m["Type"]) for m in sockets] == [(IPC.folder, "bind")]
    assert planned.connection["transport"] == "ipc"
    assert planned.connection["ip"] == f"{CONTAINER_IPC_DIR}/k"
    assert IPC.host_ip == f"{IPC.folder}/k"


PASSWD, GROUP = "root:x:0:0::/root:/bin/sh\n", "root:x:0:\n"
RECORD = {"kernelspec": "spec", "image": "img", "image_id": "sha256:abc", "repo_digest": ""}


def test_over_ipc_the_kernels_folder_carries_its_files_and_nothing_is_copied() -> None:
    on_cpu = place_gpus(plan(DockerSettings(image="img", gpus="auto"), channels=IPC), GpuSupport(""), [])
    on_cpu = with_startup(on_cpu, RECORD, [])
    assert create_args(on_cpu)["command"][-1] == f"{CONTAINER_IPC_DIR}/kernel.json"
    assert create_args(on_cpu)["environment"]["PYTHONSTARTUP"] == f"{CONTAINER_IPC_DIR}/startup.py"
    placed = place_files(on_cpu, kernel_files(on_cpu, PASSWD, GROUP), None)
    assert [(f.path, f.mode) for f in placed.in_folder] == [
        (f"{CONTAINER_IPC_DIR}/kernel.json", 0o600),
        (f"{CONTAINER_IPC_DIR}/startup.py", 0o644),
    ]
    # The user's accounts are mounted read-only, never in the folder that the kernel can write.
    assert [f.path for f in placed.mounted] == ["/etc/passwd", "/etc/group"]
    assert placed.copied == ()
    # A home volume made by this start has its owner set by a copy of its folder.
    home = home_folder(on_cpu)
    assert home == KernelFile(CONTAINER_HOME, 0o700)
    assert place_files(on_cpu, [], home).copied == (home,)


def test_root_gets_its_accounts_copied_so_that_packages_can_still_add_users() -> None:
    root = Identity(0, 0, "root", groups=(2000,), group_names=((2000, "datasets"),))
    as_root = plan(channels=IPC, identity=root)
    files = kernel_files(as_root, PASSWD, GROUP)
    assert [f.path for f in files if f.path.startswith("/etc")] == ["/etc/group"]  # root has its passwd entry
    placed = place_files(as_root, files, None)
    assert ([f.path for f in placed.copied], placed.mounted) == (["/etc/group"], ())


def test_a_clients_own_socket_folder_carries_no_files() -> None:
    """The launcher's: a client may keep several kernels' sockets in one folder."""
    shared = Channels("ipc", folder="/run/user/1000/jupyter", prefix="kernel-1-ipc", own_folder=False)
    planned = plan(channels=shared)
    assert create_args(planned)["command"][-1] == CONTAINER_CONNECTION_FILE
    placed = place_files(planned, kernel_files(planned, PASSWD, GROUP), home_folder(planned))
    assert placed.in_folder == placed.mounted == ()
    assert [f.path for f in placed.copied] == [
        CONTAINER_CONNECTION_FILE,
        "/etc/passwd",
        "/etc/group",
        CONTAINER_HOME,
    ]


def test_read_only_files_are_bind_mounts_or_shared_selinux_volumes() -> None:
    sources = {"/etc/passwd": "/run/user/1000/dockerkernel/accounts/ab12"}
    [mount] = [
        m for m in create_args(with_read_only_files(plan(), sources, False))["mounts"] if m["ReadOnly"]
    ]
    assert (mount["Target"], mount["Source"], mount["Type"]) == (
        "/etc/passwd",
        sources["/etc/passwd"],
        "bind",
    )
    relabelled = create_args(with_read_only_files(plan(), sources, True))
    assert relabelled["volumes"] == ["/run/user/1000/dockerkernel/accounts/ab12:/etc/passwd:ro,z"]
    assert with_read_only_files(plan(), {}, True) == plan()


def test_network_none_is_for_ipc_channels_only() -> None:
    offline = DockerSettings(image="img", network="none")
    assert create_args(plan(offline, channels=IPC))["network_mode"] == "none"
    with pytest.raises(DockerKernelError) as info:
        plan(offline, channels=Channels("tcp", reason="channels is 'tcp'"))
    assert str(info.value) == errors.NETWORK_NONE_NEEDS_IPC.format(kernel="spec", reason="channels is 'tcp'")


def test_on_selinux_the_socket_folder_is_relabelled_for_its_container_alone() -> None:
    adapted = for_engine(plan(channels=IPC), Engine(selinux=True))
    assert all(m["Target"] != CONTAINER_IPC_DIR for m in create_args(adapted)["mounts"])
    assert create_args(adapted)["volumes"] == [f"{IPC.folder}:{CONTAINER_IPC_DIR}:Z"]
    assert "volumes" not in create_args(for_engine(plan(channels=IPC), Engine()))


def test_pooled_kernels_with_sockets_of_their_own_match_a_start() -> None:
    other = Channels("ipc", folder="/run/user/1000/dockerkernel/99999999")
    assert warm_pool.fingerprint(plan(channels=IPC)) == warm_pool.fingerprint(plan(channels=other))
    assert warm_pool.fingerprint(plan(channels=IPC)) != warm_pool.fingerprint(plan())


def test_ports_are_published_on_loopback_only() -> None:
    kwargs = create_args(plan())
    assert kwargs["ports"] == {f"{p}/tcp": ("127.0.0.1", p) for p in range(50001, 50006)}
    assert kwargs["network"] == "dockerkernel-u1000"  # the user's isolated network


def test_host_network_publishes_nothing_and_binds_loopback() -> None:
    p = plan(DockerSettings(image="img", network="host"))
    assert create_args(p)["network_mode"] == "host"
    assert "ports" not in create_args(p)
    assert p.connection["ip"] == "127.0.0.1"


def test_container_connection_file_listens_inside_the_container_with_the_same_key() -> None:
    conn = plan().connection
    assert conn["ip"] == "0.0.0.0"
    assert conn["key"] == "secret-key"
    assert conn["shell_port"] == 50001


def mounts(p: ContainerPlan) -> list[tuple[str, str, str, bool]]:
    return [(m["Type"], m["Source"], m["Target"], m["ReadOnly"]) for m in create_args(p)["mounts"]]


def test_notebook_directory_is_mounted_at_its_own_path_and_is_the_working_directory() -> None:
    p = plan(DockerSettings(image="img", volumes=["/data:/data:ro"], home="container"))
    assert create_args(p)["working_dir"] == "/home/me/notebooks"
    assert mounts(p) == [
        ("bind", "/home/me/notebooks", "/home/me/notebooks", False),
        ("bind", "/data", "/data", True),
    ]


def test_the_home_is_a_volume_per_user_and_kernelspec() -> None:
    p = plan(DockerSettings(image="img"))
    assert mounts(p)[-1] == ("volume", "dockerkernel-home-1000-spec", CONTAINER_HOME, False)
    assert (
        mounts(plan(DockerSettings(image="img"), kernel_name="other"))[-1][1]
        == "dockerkernel-home-1000-other"
    )
    assert all(m[0] == "bind" for m in mounts(plan(DockerSettings(image="img", user="image"))))


@pytest.mark.parametrize(
    ("mount", "server_root", "client_cwd", "expected"),
    [
        ("auto", "/home/me", "/", ["/home/me"]),  # the server's root, what its file browser shows
        ("auto", None, "/home/me", ["/home/me"]),  # outside a server: the client's working directory
        ("auto", "/srv/other", "/home/me", ["/home/me/notebooks"]),  # a root that does not hold it
        ("auto", "/", None, ["/home/me/notebooks"]),  # never over the image's system
        ("auto", None, "/home/me/notebooks", ["/home/me/notebooks"]),
        ("notebook", "/home/me", None, ["/home/me/notebooks"]),
        ("/home/me", None, None, ["/home/me"]),
        ("/data/project", None, None, ["/data/project", "/home/me/notebooks"]),
    ],
)
def test_mounted_folders(
    mount: str, server_root: str | None, client_cwd: str | None, expected: list[str]
) -> None:
    assert (
        mounted_folders(mount, "/home/me/notebooks", server_root=server_root, client_cwd=client_cwd)
        == expected
    )


def test_a_mount_over_the_image_system_is_refused() -> None:
    with pytest.raises(DockerKernelError, match="would hide the image's own system folders"):
        mounted_folders("/usr", "/home/me/notebooks", server_root=None, client_cwd=None)


@pytest.mark.parametrize("volumes", [["/x:/home/me/notebooks"], ["/x:/data", "/y:/data:ro"]])
def test_two_mounts_at_one_target_are_refused(volumes: list[str]) -> None:
    with pytest.raises(DockerKernelError) as info:
        plan(DockerSettings(image="img", volumes=volumes))
    target = volumes[-1].split(":")[1]
    assert str(info.value).startswith(errors.MOUNT_TARGET_TWICE.split("'{target}'")[0] + f"'{target}'")


@pytest.mark.parametrize(
    "target", ["/dockerkernel", CONTAINER_HOME, CONTAINER_IPC_DIR, "/dockerkernel/run/x"]
)
def test_no_mount_lands_in_dockerkernels_own_folder(target: str) -> None:
    with pytest.raises(DockerKernelError) as info:
        plan(DockerSettings(image="img", volumes=[f"/x:{target}"]))
    assert str(info.value) == errors.MOUNT_TARGET_OURS.format(target=target, dir="/dockerkernel")


def test_any_folder_name_can_be_mounted() -> None:
    odd = "/home/me/a:b c/ünïcødé"
    p = plan(
        DockerSettings(image="img", volumes=[{"source": odd, "target": "/data", "read_only": True}]), cwd=odd
    )
    assert mounts(p)[:2] == [("bind", odd, odd, False), ("bind", odd, "/data", True)]


@pytest.mark.parametrize(
    ("user", "expected", "owner"),
    [
        ("host", "1000:100", (1000, 100)),  # the invoking user's ids
        ("2000", "2000:2000", (2000, 2000)),
        ("2000:3", "2000:3", (2000, 3)),
        ("image", None, None),
    ],
)
def test_user(user: str, expected: str | None, owner: tuple[int, int] | None) -> None:
    p = plan(DockerSettings(image="img", user=user))
    assert create_args(p).get("user") == expected
    assert p.file_owner == owner


def test_the_kernel_user_has_a_name_and_the_user_groups() -> None:
    p = plan()
    assert create_args(p)["group_add"] == ["27", "2000"]
    env = create_args(p)["environment"]
    assert (env["USER"], env["LOGNAME"], env["HOME"]) == ("me", "me", CONTAINER_HOME)
    assert create_args(p)["labels"][LABEL_OWNER_UID] == "1000"


def test_passwd_and_group_entries_are_added_to_the_image_files() -> None:
    passwd = "root:x:0:0:root:/root:/bin/bash\nme:x:1:1::/:/bin/sh\n"
    merged = merge_passwd(passwd, ME, CONTAINER_HOME)
    assert merged.startswith(passwd)
    assert merged.splitlines()[-1] == f"me2:x:1000:100:me:{CONTAINER_HOME}:/bin/sh"  # 'me' is taken
    assert merge_passwd(merged, ME, CONTAINER_HOME) == merged  # the uid has an entry: left alone
    group = "root:x:0:\nusers:x:100:\ndocker:x:27:"
    assert merge_group(group, ME).splitlines()[3:] == ["datasets:x:2000:me"]
    assert merge_group("", ME).splitlines() == ["users:x:100:", "group27:x:27:me", "datasets:x:2000:me"]


def test_passwd_and_group_go_into_the_container_as_root_owned_files() -> None:
    archive = kernel_files_archive(plan(), "root:x:0:0::/root:/bin/sh\n", "root:x:0:\n")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        passwd = tar.getmember("etc/passwd")
        assert (passwd.uid, passwd.mode) == (0, 0o644)
        assert b"me:x:1000:100" in tar.extractfile(passwd).read()  # type: ignore[union-attr]
        assert b"datasets:x:2000:me" in tar.extractfile("etc/group").read()  # type: ignore[union-attr]
    with tarfile.open(
        fileobj=io.BytesIO(kernel_files_archive(plan(DockerSettings(image="i", user="image"))))
    ) as tar:
        assert "etc/passwd" not in tar.getnames()


def test_rootless_engines_map_the_user_back_to_the_host_user() -> None:
    p = plan()
    assert for_engine(p, Engine()) is p
    podman = for_engine(p, Engine(podman=True, rootless=True))
    assert create_args(podman)["userns_mode"] == "keep-id"
    assert create_args(podman)["user"] == "1000:100"
    assert create_args(podman)["network"] == "slirp4netns" and not podman.isolated
    docker_rootless = for_engine(p, Engine(rootless=True))
    assert create_args(docker_rootless)["user"] == "0:0"  # the engine's root is the user on the host
    assert docker_rootless.file_owner == (0, 0)
    assert create_args(docker_rootless)["environment"]["USER"] == "me"


def test_environment_is_an_allow_list() -> None:
    launch_env = {
        "JPY_SESSION_NAME": "/nb/a.ipynb",
        "JPY_PARENT_PID": "1",
        "PATH": "/host/bin",
        "AWS_SECRET": "x",
    }
    kwargs = create_args(
        plan(
            DockerSettings(image="img", environment={"FROM_CONFIG": "1"}),
            spec_env={"FROM_SPEC": "2"},
            launch_env=launch_env,
        )
    )
    assert kwargs["environment"] == {
        "JPY_SESSION_NAME": "/nb/a.ipynb",
        "HOME": "/dockerkernel/home",
        "USER": "me",
        "LOGNAME": "me",
        "LC_CTYPE": "C.UTF-8",
        "FROM_SPEC": "2",
        "FROM_CONFIG": "1",
    }


def test_image_user_keeps_the_image_home() -> None:
    assert "HOME" not in create_args(plan(DockerSettings(image="img", user="image")))["environment"]


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
    requests = create_args(plan(DockerSettings(image="img", gpus=gpus)))["device_requests"]
    assert [dict(r) for r in requests] == [request_]


def test_no_gpus_no_device_requests() -> None:
    assert "device_requests" not in create_args(plan())


def test_auto_gpus_take_all_gpus_where_the_daemon_gives_them() -> None:
    auto = plan(DockerSettings(image="img", gpus="auto"))
    assert "device_requests" not in create_args(auto)
    with_gpus = place_gpus(auto, GpuSupport(NVIDIA, (Gpu("0"), Gpu("1"))), [])
    assert [r["Count"] for r in create_args(with_gpus)["device_requests"]] == [-1]
    assert with_gpus.notice == GPUS_GIVEN.format(gpus="GPU 0, GPU 1")
    assert "device_requests" not in create_args(auto)  # plans are values


def test_auto_gpus_without_gpus_run_on_the_cpu_with_a_notice_in_the_notebook() -> None:
    on_cpu = place_gpus(plan(DockerSettings(image="img", gpus="auto")), GpuSupport(""), [])
    assert "device_requests" not in create_args(on_cpu)
    assert (on_cpu.notice, on_cpu.notice_stream) == (GPUS_AUTO_ON_CPU, "stderr")
    started = with_startup(on_cpu, RECORD, [])
    with tarfile.open(fileobj=io.BytesIO(kernel_files_archive(started))) as tar:
        startup = tar.getmember(STARTUP_FILE.lstrip("/"))
        assert (startup.uid, startup.mode) == (0, 0o644)  # outside the home, which may be kept
        script = tar.extractfile(startup).read().decode()  # type: ignore[union-attr]
    assert create_args(started)["environment"]["PYTHONSTARTUP"] == STARTUP_FILE
    compile(script, "startup", "exec")
    assert repr(GPUS_AUTO_ON_CPU) in script and "'stderr'" in script
    # Other settings have no notice.
    assert place_gpus(plan(), GpuSupport(""), []).notice == ""
    assert repr(GPUS_AUTO_ON_CPU) not in provenance.startup_script()


def test_the_record_goes_into_the_environment_and_a_start_up_file_of_the_image_runs_after() -> None:
    started = with_startup(plan(), RECORD, ["PATH=/usr/bin", "PYTHONSTARTUP=/opt/image-startup.py"])
    env = create_args(started)["environment"]
    assert json.loads(env[provenance.ENVIRONMENT]) == RECORD
    assert (env["DOCKERKERNEL_IMAGE"], env["DOCKERKERNEL_IMAGE_ID"]) == ("img", "sha256:abc")
    assert started.startup_chain == "/opt/image-startup.py"
    # The kernelspec's own comes first; ours is never chained to itself.
    own = plan(spec_env={"PYTHONSTARTUP": "/home/me/s.py"})
    assert with_startup(own, RECORD, ["PYTHONSTARTUP=/opt/x.py"]).startup_chain == "/home/me/s.py"
    assert with_startup(started, RECORD, []).startup_chain == ""


def test_a_record_names_the_digest_of_the_repository_it_was_run_from() -> None:
    digests = ["other/img@sha256:1", "reg:5000/team/torch@sha256:2"]
    assert provenance.repo_digest("reg:5000/team/torch:2.3", digests) == "reg:5000/team/torch@sha256:2"
    assert provenance.repo_digest("reg:5000/team/torch", digests) == "reg:5000/team/torch@sha256:2"
    assert provenance.repo_digest("local/build:1", []) == ""
    assert provenance.repo_digest("team/torch@sha256:9", digests) == "team/torch@sha256:9"


def test_limits_labels_init_and_privileges() -> None:
    kwargs = create_args(plan(DockerSettings(image="img", shm_size="2g", mem_limit="8g", cpus=1.5)))
    assert (kwargs["shm_size"], kwargs["mem_limit"], kwargs["nano_cpus"]) == ("2g", "8g", 1_500_000_000)
    assert kwargs["init"] is True
    assert kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["labels"][LABEL_KERNEL_ID] == "kid"
    assert kwargs["labels"][LABEL_KERNELSPEC] == "spec"
    assert kwargs["labels"][LABEL_OWNER_PID] == "123"
    for risky in ("privileged", "cap_add", "pid_mode"):
        assert risky not in kwargs


def test_container_options_are_the_escape_hatch() -> None:
    kwargs = create_args(plan(DockerSettings(image="img", container_options={"ipc_mode": "host"})))
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


def test_a_swarm_service_keeps_the_plan_and_never_restarts() -> None:
    settings = DockerSettings(image="img", gpus="2", mem_limit="4g", volumes=["/data:/data:ro"])
    the_plan = plan(settings)
    secret = SecretReference("sid", "sname", filename=SECRET_FILE, uid="1000", gid="100", mode=0o400)
    kwargs = service_args(the_plan, secret, ["node.labels.gpu==h200"], "NVIDIA-GPU")
    assert kwargs["args"][:2] == ["sh", "-c"] and kwargs["args"][3:] == [
        "sh",
        *create_args(the_plan)["command"],
    ]
    assert kwargs["restart_policy"]["Condition"] == "none"
    assert kwargs["endpoint_spec"]["Mode"] == "dnsrr"
    assert {
        (p["PublishedPort"], p["TargetPort"], p["PublishMode"]) for p in kwargs["endpoint_spec"]["Ports"]
    } == {(p, p, "host") for p in range(50001, 50006)}
    assert kwargs["constraints"] == ["node.labels.gpu==h200"]
    assert kwargs["resources"]["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}
    ]
    assert kwargs["labels"] == kwargs["container_labels"] == create_args(the_plan)["labels"]
    assert (kwargs["user"], kwargs["workdir"]) == ("1000:100", "/home/me/notebooks")
    # The folders, and a tmpfs for the connection file and home; no home volume, which is one node's.
    assert [(m["Type"], m["Target"]) for m in kwargs["mounts"]] == [
        ("bind", "/home/me/notebooks"),
        ("bind", "/data"),
        ("tmpfs", "/dockerkernel/run"),
    ]
    assert "HOME=/dockerkernel/run/home" in kwargs["env"]


def test_a_pooled_kernel_matches_a_start_only_where_nothing_but_its_own_parts_differ() -> None:
    """Its kernel id, ports, key and the notebook's name are its own; anything else tells them apart."""
    start = plan(launch_env={"JPY_SESSION_NAME": "/home/me/notebooks/a.ipynb"})
    other = {**CONNECTION, **{p: CONNECTION[p] + 100 for p in PORT_NAMES}, "key": "another"}
    pooled = plan(kernel_id="pool-1", connection_info=other)
    labelled = replace(pooled, labels={**pooled.labels, LABEL_POOL: "1"})
    assert warm_pool.fingerprint(labelled) == warm_pool.fingerprint(start)
    # Another notebook folder under the same mount (the server's root): the pooled kernel moves there.
    in_a_server = {"server_root": "/home/me", "client_cwd": "/"}
    assert warm_pool.fingerprint(plan(cwd="/home/me/a", **in_a_server)) == warm_pool.fingerprint(
        plan(cwd="/home/me/b/c", **in_a_server)
    )
    for different in (
        plan(cwd="/home/me/elsewhere"),  # mounted alone: another mount
        plan(cwd="/srv/x", **in_a_server),  # outside the server's root: another mount
        plan(spec_env={"MODE": "debug"}),
        plan(DockerSettings(image="img", volumes=["/data:/data:ro"])),
        plan(DockerSettings(image="img", mem_limit="2g")),
        plan(DockerSettings(image="img", user="1234")),
        plan(kernel_name="another"),
    ):
        assert warm_pool.fingerprint(different) != warm_pool.fingerprint(start)


# finish(): the plan's last step, from the facts that a start gathers of its engine (launch.gather).
IMAGE = {"Id": "sha256:" + "1" * 64, "RepoDigests": ["img@sha256:" + "2" * 64], "Config": {"Env": []}}
STARTED = datetime.datetime(2026, 12, 4, tzinfo=datetime.timezone.utc)
FOUR_GPUS = GpuSupport(NVIDIA, tuple(Gpu(str(i), f"GPU-{i}", "H200") for i in range(4)))


LOCAL = Engine()


def facts(engine: Engine = LOCAL, **kwargs: Any) -> Facts:
    known = {"image": IMAGE, "started": STARTED, "docker_host": "local", "accounts": (PASSWD, GROUP)}
    return Facts(engine, **{**known, **kwargs})


def test_a_finished_plan_over_ipc_carries_its_files_its_record_and_read_only_accounts() -> None:
    final = finish(plan(channels=IPC), facts())
    env = final.environment
    assert env["PYTHONSTARTUP"] == f"{CONTAINER_IPC_DIR}/startup.py"
    assert json.loads(env[provenance.ENVIRONMENT])["image_id"] == IMAGE["Id"]
    assert [f.path for f in final.files.in_folder] == [
        f"{CONTAINER_IPC_DIR}/kernel.json",
        f"{CONTAINER_IPC_DIR}/startup.py",
    ]
    # A new home volume: its folder is copied once, so that it gets its owner.
    assert [f.path for f in final.files.copied] == [CONTAINER_HOME]
    accounts = {m["Target"]: m for m in create_args(final)["mounts"] if m["Target"].startswith("/etc/")}
    assert set(accounts) == {"/etc/passwd", "/etc/group"}
    assert all(
        m["ReadOnly"] and m["Source"].startswith("/run/user/1000/dockerkernel/accounts/")
        for m in accounts.values()
    )
    # A home volume that exists had its owner set: nothing is copied.
    assert finish(plan(channels=IPC), facts(home_exists=True)).files.copied == ()
    # A home in the container: its folder is copied into every new container.
    in_container = plan(DockerSettings(image="img", home="container"), channels=IPC)
    assert in_container.home is None
    assert [f.path for f in finish(in_container, facts(home_exists=True)).files.copied] == [CONTAINER_HOME]


def test_a_finished_plan_over_tcp_copies_every_file_in() -> None:
    final = finish(plan(), facts())
    assert final.files.in_folder == final.files.mounted == ()
    assert [f.path for f in final.files.copied] == [
        CONTAINER_CONNECTION_FILE,
        STARTUP_FILE,
        "/etc/passwd",
        "/etc/group",
        CONTAINER_HOME,
    ]


def test_a_finished_plan_on_rootless_engines() -> None:
    on_docker = finish(plan(channels=IPC), facts(Engine(rootless=True), accounts=None))
    kwargs = create_args(on_docker)
    assert (kwargs["user"], on_docker.identity, "group_add" in kwargs) == ("0:0", None, False)
    assert not [
        m for m in kwargs["mounts"] if m["Target"].startswith("/etc/")
    ]  # root's accounts are the image's
    on_podman = finish(plan(channels=IPC), facts(Engine(podman=True, rootless=True)))
    kwargs = create_args(on_podman)
    assert (kwargs["userns_mode"], kwargs["user"], kwargs["network"]) == (
        "keep-id",
        "1000:100",
        "slirp4netns",
    )


def test_a_finished_plan_with_selinux_relabels_its_folder_and_shares_its_accounts() -> None:
    kwargs = create_args(finish(plan(channels=IPC), facts(Engine(selinux=True))))
    assert kwargs["volumes"][0] == f"{IPC.folder}:{CONTAINER_IPC_DIR}:Z"
    assert [v.rsplit(":", 2)[1:] for v in kwargs["volumes"][1:]] == [
        ["/etc/passwd", "ro,z"],
        ["/etc/group", "ro,z"],
    ]


def test_a_finished_plan_gets_free_gpus_or_shares_them_with_a_notice() -> None:
    two = plan(DockerSettings(image="img", gpus="2"))
    held = (Holding(("0",), "alice", "dl"),)
    given = finish(two, facts(gpus=FOUR_GPUS, holdings=held))
    assert [r["DeviceIDs"] for r in create_args(given)["device_requests"]] == [["1", "2"]]
    assert given.labels[LABEL_GPUS] == "1,2" and given.notice_stream == "stdout"
    assert json.loads(given.environment[provenance.ENVIRONMENT])["gpus"] == [
        {"id": "1", "name": "H200"},
        {"id": "2", "name": "H200"},
    ]
    busy = tuple(Holding((str(i),), "bob", "dl") for i in range(3))
    shared = finish(two, facts(gpus=FOUR_GPUS, holdings=busy))
    assert shared.notice_stream == "stderr" and "shares" in shared.notice
    on_podman = finish(two, facts(Engine(podman=True), gpus=GpuSupport(CDI, FOUR_GPUS.gpus)))
    assert create_args(on_podman)["devices"] == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    with pytest.raises(DockerKernelError, match="cannot give containers GPUs"):
        finish(two, facts(gpus=GpuSupport("")))


def test_every_setting_is_honoured_on_a_swarm_or_refused() -> None:
    names = set(DockerSettings.setting_names())
    assert swarm.SWARM_HONOURS | swarm.SWARM_REFUSES == names
    assert not swarm.SWARM_HONOURS & swarm.SWARM_REFUSES
    on_swarm = {"image": "img", "backend": "swarm", "home": "container"}
    assert swarm.refusal(DockerSettings(**on_swarm)) is None
    assert swarm.refusal(DockerSettings(**on_swarm, gpus="2")) is None
    for name, value in [
        ("gpus", "all"),
        ("gpus", "device=0"),
        ("gpu_inventory", ["0"]),
        ("container_options", {"ipc_mode": "host"}),
        ("home", "volume"),
        ("network", "bridge"),
        ("pull_policy", "always"),
    ]:
        refused = swarm.refusal(DockerSettings(**{**on_swarm, name: value}))
        assert refused is not None and refused[0] == name
    # A kernelspec installed before the check, with the default home, still starts: its home was the task's.
    assert swarm.refusal(DockerSettings(image="img", backend="swarm"), installing=False) is None
    with pytest.raises(DockerKernelError) as error:
        check_swarm(DockerSettings(**{**on_swarm, "gpus": "all"}), "dl")
    assert str(error.value) == errors.SWARM_SETTING_REFUSED.format(
        kernel="dl",
        setting="gpus",
        value="'all'",
        instead=swarm.refusal(DockerSettings(**{**on_swarm, "gpus": "all"}))[1],  # type: ignore[index]
    )


def test_a_swarm_service_honours_the_limits_and_the_shared_memory() -> None:
    settings = DockerSettings(
        image="img", backend="swarm", home="container", shm_size="2g", cpus=1.5, mem_limit="4g"
    )
    secret = SecretReference("sid", "sname", filename=SECRET_FILE, uid="1000", gid="100", mode=0o400)
    kwargs = service_args(plan(settings), secret, [], "NVIDIA-GPU")
    assert kwargs["resources"]["Limits"] == {"NanoCPUs": 1_500_000_000, "MemoryBytes": 4 * 1024**3}
    (shm,) = [m for m in kwargs["mounts"] if m["Target"] == "/dev/shm"]
    assert (shm["Type"], shm["TmpfsOptions"]["SizeBytes"]) == ("tmpfs", 2 * 1024**3)
    assert kwargs["groups"] == ["27", "2000"]
