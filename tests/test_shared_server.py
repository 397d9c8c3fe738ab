"""Many users on one engine: homes that persist, the project mounted, odd folder names, kernels fenced off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import pytest

from dockerkernel import errors
from dockerkernel.engine.connect import state_of
from dockerkernel.engine.networks import ICC_OPTION, ensure_isolated_network
from dockerkernel.engine.owners import this_process_owner
from dockerkernel.labels import LABEL_KERNEL_ID, LABEL_KERNELSPEC, LABEL_NETWORK_OF, isolated_network_name
from dockerkernel.plan import PORT_NAMES

from conftest import IMAGES, PUBLIC_TMP, as_user, user_env

pytestmark = pytest.mark.docker

WRITE_CACHE = (
    "import os\nos.makedirs(os.path.expanduser('~/.cache/torch'))\n"
    "open(os.path.expanduser('~/.cache/torch/weights.bin'), 'w').write('weights')"
)
READ_CACHE = "import os\nprint(os.path.exists(os.path.expanduser('~/.cache/torch/weights.bin')))"


async def test_the_home_persists_per_user_and_kernelspec(
    install_test_kernel: Any,
    start_kernel: Any,
    notebook_dir: Path,
    dockerkernel: Any,
    docker_client: docker.DockerClient,
) -> None:
    envs = {name: install_test_kernel("py3", name=name) for name in ("env-a", "env-b")}
    home_a = f"dockerkernel-home-{os.getuid()}-env-a"
    kernel = await start_kernel(envs["env-a"], cwd=str(notebook_dir))
    assert (await kernel.execute(WRITE_CACHE)).status == "ok"

    await kernel.km.restart_kernel()
    await kernel.kc.wait_for_ready(timeout=60)
    assert (await kernel.execute(READ_CACHE)).stdout == "True\n"  # survives a restart
    await kernel.shutdown()
    later = await start_kernel(envs["env-a"], cwd=str(notebook_dir))
    assert (await later.execute(READ_CACHE)).stdout == "True\n"  # and a later start
    other = await start_kernel(envs["env-b"], cwd=str(notebook_dir))
    assert (await other.execute(READ_CACHE)).stdout == "False\n"  # another environment: its own home

    listed = {k["name"]: k["home"] for k in json.loads(dockerkernel("list", "--json").out)}
    assert listed == {"env-a": home_a, "env-b": f"dockerkernel-home-{os.getuid()}-env-b"}
    assert home_a in dockerkernel("list").out

    # In use by a running kernel: refused, and nothing is removed.
    result = dockerkernel("uninstall", "env-a", "--purge")
    assert (result.code, result.err) == (1, f"dockerkernel: {errors.HOME_IN_USE.format(volume=home_a)}\n")
    assert "env-a" in dockerkernel("list").out
    await later.shutdown()
    assert dockerkernel("uninstall", "env-a", "--purge").out == (
        f"Removed kernel home {home_a}\nRemoved kernelspec env-a from "
        f"{Path(os.environ['JUPYTER_DATA_DIR']) / 'kernels' / 'env-a'}\n"
    )
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(home_a)
    await other.shutdown()
    assert dockerkernel("uninstall", "env-b", "--purge").code == 0


async def test_a_home_in_the_container_is_forgotten_at_restart(
    install_test_kernel: Any, start_kernel: Any, notebook_dir: Path, dockerkernel: Any
) -> None:
    name = install_test_kernel("py3", name="no-home")
    spec_file = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / name / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec["metadata"]["kernel_provisioner"]["config"]["home"] = "container"
    spec_file.write_text(json.dumps(spec))
    kernel = await start_kernel(name, cwd=str(notebook_dir))
    assert (await kernel.execute(WRITE_CACHE)).status == "ok"
    await kernel.km.restart_kernel()
    await kernel.kc.wait_for_ready(timeout=60)
    assert (await kernel.execute(READ_CACHE)).stdout == "False\n"
    assert json.loads(dockerkernel("list", "--json").out)[0]["home"] == ""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A deep-learning project as people lay it out: notebooks next to their data."""
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "train.csv").write_text("x,y\n")
    return root


CLIMB_OUT = "import os\nprint(os.getcwd())\nprint(open('../data/train.csv').read().strip())"


async def test_in_a_server_the_root_is_mounted_so_parent_paths_work(
    install_test_kernel: Any, jupyter_server: Any, project: Path, docker_client: docker.DockerClient
) -> None:
    name = install_test_kernel("py3")
    server = await jupyter_server(project)
    session = await server.api(
        "POST",
        "/api/sessions",
        {"path": "notebooks/train.ipynb", "type": "notebook", "kernel": {"name": name}},
    )
    ws = await server.kernel_websocket(session["kernel"]["id"], session["id"])
    try:
        run = await ws.execute(CLIMB_OUT)
        assert (run.status, run.stdout.splitlines()) == ("ok", [str(project / "notebooks"), "x,y"])
    finally:
        ws.close()
    await server.api("DELETE", f"/api/sessions/{session['id']}")


@pytest.mark.parametrize(("mount", "climbs"), [("auto", True), ("notebook", False), ("project", True)])
async def test_standalone_clients_mount_their_working_directory(
    mount: str,
    climbs: bool,
    install_test_kernel: Any,
    start_kernel: Any,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    jupyter_dirs: Path,
) -> None:
    """nbclient and papermill run where the user is: from the project's folder, with the notebook's as cwd."""
    name = install_test_kernel("py3")
    spec_file = jupyter_dirs / "data" / "kernels" / name / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec["metadata"]["kernel_provisioner"]["config"]["mount"] = str(project) if mount == "project" else mount
    spec_file.write_text(json.dumps(spec))
    monkeypatch.chdir(project if mount != "project" else project / "data")
    kernel = await start_kernel(name, cwd=str(project / "notebooks"))
    run = await kernel.execute(CLIMB_OUT)
    if climbs:
        assert run.stdout.splitlines() == [str(project / "notebooks"), "x,y"]
    else:
        assert run.ename in ("FileNotFoundError", "IOError")


@pytest.mark.parametrize("flavour", ["py3", "py2"])
async def test_any_folder_name_works(
    flavour: str, install_test_kernel: Any, start_kernel: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "run: 1 ünïcødé"
    data = tmp_path / "data:v2"
    folder.mkdir()
    data.mkdir()
    (data / "x.txt").write_text("from a folder with a colon\n")
    name = install_test_kernel(flavour)
    spec_file = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / name / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec["metadata"]["kernel_provisioner"]["config"]["volumes"] = [
        {"source": str(data), "target": "/data", "read_only": True}
    ]
    spec_file.write_text(json.dumps(spec))
    kernel = await start_kernel(name, cwd=str(folder))
    run = await kernel.execute("open('out.txt', 'w').write(open('/data/x.txt').read())")
    assert run.status == "ok"
    assert (folder / "out.txt").read_text() == "from a folder with a colon\n"


PROBE = """
import socket
result = []
for port in {ports}:
    try:
        socket.create_connection(({ip!r}, port), timeout=1.5).close()
        result.append('open')
    except (socket.timeout, socket.error):
        result.append('closed')
print(' '.join(result))
"""


def container_address(docker_client: docker.DockerClient, container_id: str) -> str:
    networks = docker_client.api.inspect_container(container_id)["NetworkSettings"]["Networks"]
    [address] = [n["IPAddress"] for n in networks.values()]
    return str(address)


async def test_kernel_ports_are_unreachable_from_other_containers(
    install_test_kernel: Any,
    start_kernel: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    user_session: Any,
) -> None:
    """A plain container on Docker's default bridge, and another user's kernel, try each of the five ports."""
    # With tcp channels: over ipc (the default here) a kernel has no ports at all.
    kernel = await start_kernel(install_test_kernel("py3", "--channels", "tcp"), cwd=str(notebook_dir))
    networks = docker_client.api.inspect_container(kernel.container_id)["NetworkSettings"]["Networks"]
    assert list(networks) == [isolated_network_name(os.getuid())]
    ports = [int(kernel.km.get_connection_info()[name]) for name in PORT_NAMES]
    probe = PROBE.format(ports=ports, ip=container_address(docker_client, kernel.container_id))

    def from_default_bridge(code: str) -> str:
        out = docker_client.containers.run(
            IMAGES["py3"], ["python3", "-c", code], network="bridge", remove=True
        )
        return str(out.decode().strip())

    assert from_default_bridge(probe) == " ".join(["closed"] * 5)
    other_user = user_session(["--image", IMAGES["py3"]], [probe])
    assert other_user.outputs == [" ".join(["closed"] * 5) + "\n"]
    # The probe can see open ports: a kernel on the default bridge is reachable from it.
    exposed = await start_kernel(
        install_test_kernel("py3", "--network", "bridge", "--channels", "tcp", name="exposed"),
        cwd=str(notebook_dir),
    )
    ports = [int(exposed.km.get_connection_info()[name]) for name in PORT_NAMES]
    address = container_address(docker_client, exposed.container_id)
    assert from_default_bridge(PROBE.format(ports=ports, ip=address)) == " ".join(["open"] * 5)


def test_prune_and_ps_touch_only_the_users_own_kernels_where_proc_hides_other_users(
    install_test_kernel: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    ordinary_user: Any,
    user_workdir: Path,
    user_session: Any,
    no_leftovers: None,
) -> None:
    """With /proc mounted hidepid=2 the user cannot see root's server: its kernel is unknown, not gone."""
    mine = docker_client.containers.run(
        IMAGES["py3"], ["sleep", "600"], detach=True, labels=_labels_of_this_process("root-live")
    )
    live = user_session(["--image", IMAGES["py3"]], ["print(1)"], keep=True)
    orphaned = user_session(["--image", IMAGES["py3"]], ["print(1)"], keep=True)
    orphaned.process.kill()  # a server killed with SIGKILL: its container stays
    orphaned.process.wait()

    def as_user_where_proc_hides_others(*args: str) -> str:
        command = as_user(ordinary_user, [sys.executable, "-m", "dockerkernel", *args])
        mount_proc = 'mount -t proc -o hidepid=2 proc /proc && exec "$@"'
        result = subprocess.run(
            ["unshare", "--mount", "sh", "-c", mount_proc, "sh", *command],
            env=user_env(user_workdir), cwd=user_workdir, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    try:
        rows = json.loads(as_user_where_proc_hides_others("ps", "--json"))
        assert {r["container"] for r in rows} == {live.container[:12], orphaned.container[:12]}
        every = {
            r["container"]: r for r in json.loads(as_user_where_proc_hides_others("ps", "--all", "--json"))
        }
        assert every[mine.short_id]["owner"] == "unknown"  # hidden from this user: never "gone"
        assert every[mine.short_id]["user"] == "root"
        live_sockets, orphaned_sockets = (Path(s.ip).parent for s in (live, orphaned))
        assert live_sockets.is_dir() and orphaned_sockets.is_dir()
        assert as_user_where_proc_hides_others("prune") == "Removed 1 kernel container whose owner is gone.\n"
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(orphaned.container)
        # The sockets' folder of the killed server's kernel goes with it; the live one's stays.
        assert (live_sockets.is_dir(), orphaned_sockets.exists()) == (True, False)
        assert docker_client.containers.get(live.container).status == "running"
        assert docker_client.containers.get(mine.id).status == "running"
    finally:
        mine.remove(force=True)
        live.close()


def _labels_of_this_process(kernel_id: str) -> dict[str, str]:
    """The labels a kernel container of this process gets."""
    return {LABEL_KERNEL_ID: kernel_id, LABEL_KERNELSPEC: "test", **this_process_owner().labels()}


def test_processes_that_make_a_users_network_at_once_end_up_on_one(
    docker_client: docker.DockerClient,
) -> None:
    """Docker does not keep network names unique: two servers of one user that start a kernel at
    the same moment both create the network, and a container on an ambiguous name cannot start."""
    name, racers = "dockerkernel-race-test", 6
    barrier = threading.Barrier(racers)

    def race() -> str:
        barrier.wait()
        return ensure_isolated_network(docker_client, name, os.getuid())

    state_of(docker_client).networks.clear()  # as in processes of their own, which know no network yet
    try:
        with ThreadPoolExecutor(racers) as pool:
            chosen = set(pool.map(lambda _: race(), range(racers)))
        assert len(chosen) == 1
        assert [n["Id"] for n in docker_client.api.networks(names=[name])] == list(chosen)
    finally:
        for network in docker_client.api.networks(names=[name]):
            docker_client.api.remove_network(network["Id"])
        state_of(docker_client).networks.clear()


@pytest.mark.parametrize(
    "impostor",
    [
        {"labels": {}, "options": {ICC_OPTION: "false"}},  # not the user's
        {"labels": {LABEL_NETWORK_OF: str(os.getuid())}, "options": {}},  # inter-container traffic on
    ],
)
def test_a_users_network_made_by_someone_else_is_never_adopted(
    docker_client: docker.DockerClient, impostor: dict[str, Any]
) -> None:
    """On a shared engine anyone in the docker group can make a network of the user's network's name."""
    name = "dockerkernel-impostor-test"
    planted = docker_client.api.create_network(name, driver="bridge", **impostor)["Id"]
    state_of(docker_client).networks.clear()
    try:
        chosen = ensure_isolated_network(docker_client, name, os.getuid())
        assert chosen != planted
        network = docker_client.api.inspect_network(chosen)
        assert network["Labels"][LABEL_NETWORK_OF] == str(os.getuid())
        assert network["Options"][ICC_OPTION] == "false"
        docker_client.api.inspect_network(planted)  # left alone: not the user's to remove
    finally:
        for network in docker_client.api.networks(names=[name]):
            docker_client.api.remove_network(network["Id"])
        state_of(docker_client).networks.clear()


def test_a_user_outside_the_docker_group_is_told_how_to_get_access(
    docker_client: docker.DockerClient,
) -> None:
    if os.geteuid() != 0:
        pytest.fail("running as another user needs root: run the suite with tests/run.sh as root")
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    with tempfile.TemporaryDirectory(prefix="dockerkernel-nobody-", dir=PUBLIC_TMP) as home:  # nobody's
        os.chmod(home, 0o777)
        env = {"PATH": os.environ["PATH"], "HOME": home, "LANG": "C.UTF-8"}
        done = subprocess.run(
            [*nobody, sys.executable, "-m", "dockerkernel", "ps"],
            env=env, cwd=home, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    sentence = errors.DOCKER_UNREACHABLE.format(reason="permission denied on the Docker socket")
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"dockerkernel: {sentence}\n")
