"""Kernels in real containers, driven through jupyter_client like any local kernel.

Each lifecycle test runs against a Python 3 image (ipykernel 7) and a
Python 2.7 image (ipykernel 4.10), both installed with the CLI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest
from jupyter_client.connect import write_connection_file
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from dockerkernel import channels, errors
from dockerkernel.engine.containers import create_args
from dockerkernel.engine.networks import ensure_isolated_network
from dockerkernel.engine.owners import this_process_owner
from dockerkernel.errors import DockerKernelError
from dockerkernel.identity import host_identity
from dockerkernel.labels import LABEL_KERNEL_ID, LABEL_KERNELSPEC, LABEL_OWNER_PID
from dockerkernel.plan import GPUS_AUTO_ON_CPU, draft
from dockerkernel.settings import DockerSettings
from dockerkernel.validation import make_settings

from conftest import IMAGES, interrupt_a_sleep
from waiting import wait_until

pytestmark = pytest.mark.docker


@pytest.fixture(params=["py3", "py2"])
def kernel_name(request: pytest.FixtureRequest, install_test_kernel: Any, docker_client: Any) -> str:
    return str(install_test_kernel(request.param))


async def test_executes_code(kernel_name: str, start_kernel: Any, notebook_dir: Path) -> None:
    kernel = await start_kernel(kernel_name, cwd=str(notebook_dir))
    reply = await kernel.execute("print(6 * 7)")
    assert (reply.status, reply.stdout) == ("ok", "42\n")


async def test_runs_in_the_notebook_directory(
    kernel_name: str, start_kernel: Any, notebook_dir: Path
) -> None:
    # cwd arrives as a pathlib.Path from some clients.
    kernel = await start_kernel(kernel_name, cwd=notebook_dir)
    reply = await kernel.execute("import os\nprint(os.getcwd())\nprint(open('data.txt').read().strip())")
    assert reply.status == "ok"
    assert reply.stdout.splitlines() == [str(notebook_dir), "data from the host"]


async def test_written_file_belongs_to_the_invoking_user(
    kernel_name: str, start_kernel: Any, notebook_dir: Path
) -> None:
    kernel = await start_kernel(kernel_name, cwd=str(notebook_dir))
    reply = await kernel.execute("open('from-kernel.txt', 'w').write('written in the container')")
    assert reply.status == "ok"
    written = notebook_dir / "from-kernel.txt"
    assert written.read_text() == "written in the container"
    assert (written.stat().st_uid, written.stat().st_gid) == (os.getuid(), os.getgid())


async def test_interrupt_raises_keyboard_interrupt(
    kernel_name: str, start_kernel: Any, notebook_dir: Path
) -> None:
    kernel = await start_kernel(kernel_name, cwd=str(notebook_dir))
    msg_id = kernel.kc.execute("import time; time.sleep(60)")
    # Interrupt once the kernel is busy with the cell.
    while True:
        msg = await kernel.kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id and msg["content"].get("execution_state") == "busy":
            break
    # The bound, 2 s, counts from the interrupt's request, the Docker call included.
    deadline = time.monotonic() + 2
    await kernel.km.interrupt_kernel()
    reply = await kernel.kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.001))
    assert reply["parent_header"]["msg_id"] == msg_id
    assert (reply["content"]["status"], reply["content"]["ename"]) == ("error", "KeyboardInterrupt")
    # The kernel survives the interrupt.
    assert (await kernel.execute("print('still here')")).stdout == "still here\n"


async def test_restart_forgets_state_in_a_new_container(
    kernel_name: str, start_kernel: Any, notebook_dir: Path, docker_client: docker.DockerClient
) -> None:
    kernel = await start_kernel(kernel_name, cwd=str(notebook_dir))
    assert (await kernel.execute("x = 1")).status == "ok"
    old_container, old_ports = kernel.container_id, kernel.km.get_connection_info()

    await kernel.km.restart_kernel()
    await kernel.kc.wait_for_ready(timeout=60)

    assert (await kernel.execute("x")).ename == "NameError"
    assert kernel.container_id not in (None, old_container)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(old_container)
    assert kernel.km.get_connection_info() == old_ports


async def test_a_request_sent_right_after_a_restart_is_heard_whole(
    kernel_name: str, start_kernel: Any, notebook_dir: Path
) -> None:
    """The clients' sockets reconnect to the new kernel's; the first cell after a restart loses nothing.

    Over ipc a kernel binds fast: a request queued during the restart once reached it before the
    clients' IOPub subscription did, and its status and outputs were lost (a cell busy for ever).
    """
    kernel = await start_kernel(kernel_name, cwd=str(notebook_dir))
    for _ in range(3):
        await kernel.km.restart_kernel()
        msg_id = kernel.kc.execute("1/0")  # right away, as a notebook's queued cell
        heard = []
        while "idle" not in heard:
            msg = await kernel.kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id:
                heard.append(msg["content"].get("execution_state", msg["msg_type"]))
        assert heard == ["busy", "execute_input", "error", "idle"]
        reply = await kernel.kc.get_shell_msg(timeout=30)
        assert (reply["parent_header"]["msg_id"], reply["content"]["ename"]) == (msg_id, "ZeroDivisionError")


async def test_shutdown_leaves_no_container(
    kernel_name: str, start_kernel: Any, notebook_dir: Path, docker_client: docker.DockerClient
) -> None:
    kernel = await start_kernel(kernel_name, cwd=str(notebook_dir))
    container_id = kernel.container_id
    assert docker_client.containers.get(container_id).status == "running"
    sockets = Path(kernel.km.ip).parent
    assert kernel.km.transport == "ipc" and sockets.is_dir()
    await kernel.shutdown()
    assert not sockets.exists()  # the kernel's sockets' folder goes with it
    this_kernel = {"label": f"{LABEL_KERNEL_ID}={kernel.km.kernel_id}"}
    # The shutdown ends at the kernel's exit; the container is removed just after.
    await wait_until(lambda: not docker_client.containers.list(all=True, filters=this_kernel), "the removal")


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_kernel_without_the_provisioner_runs_in_the_same_container(
    kernel_name: str,
    transport: str,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    no_leftovers: None,
) -> None:
    """A client that ignores kernel_provisioner runs the kernelspec's argv: the launcher.

    It honours the transport of the connection file the client wrote. Start,
    interrupt, restart and shutdown behave as with the provisioner.
    """
    sockets = notebook_dir.parent / "sockets"  # a client's own folder for ipc, given as an absolute path
    sockets.mkdir(mode=0o700)
    ip = str(sockets / "kernel") if transport == "ipc" else "127.0.0.1"
    km = AsyncKernelManager(kernel_name=kernel_name, transport=transport, ip=ip)
    km.kernel_spec.metadata.pop("kernel_provisioner")  # as such a client would
    await km.start_kernel(cwd=str(notebook_dir))
    this_kernel = f"{LABEL_KERNELSPEC}={kernel_name}"  # the only kernel of this kernelspec
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        reply = await kc.execute_interactive(
            "import os; print(os.path.exists('/dockerkernel/run/kernel.json'))", timeout=30
        )
        assert reply["content"]["status"] == "ok"
        [container] = docker_client.containers.list(filters={"label": this_kernel})
        published = docker_client.api.inspect_container(container.id)["HostConfig"]["PortBindings"]
        assert bool(published) == (transport == "tcp")
        # Started by the argv's launcher, a process of its own, not by a provisioner in this one.
        launcher = psutil.Process(int(container.labels[LABEL_OWNER_PID]))
        assert launcher.pid != os.getpid()
        assert launcher.cmdline()[1:4] == ["-m", "dockerkernel", "launch"]

        msg_id = kc.execute("import time; time.sleep(60)")
        while (await kc.get_iopub_msg(timeout=30))["content"].get("execution_state") != "busy":
            pass
        await km.interrupt_kernel()
        reply = await kc.get_shell_msg(timeout=5)
        assert (reply["parent_header"]["msg_id"], reply["content"]["ename"]) == (msg_id, "KeyboardInterrupt")

        # Restart: a new launcher, a new container, the old one removed, the state gone.
        assert (await kc.execute_interactive("x = 1", timeout=30))["content"]["status"] == "ok"
        [before] = docker_client.containers.list(filters={"label": this_kernel})
        await km.restart_kernel()
        await kc.wait_for_ready(timeout=60)
        reply = await kc.execute_interactive("x", timeout=30)
        assert reply["content"]["ename"] == "NameError"
        [after] = docker_client.containers.list(all=True, filters={"label": this_kernel})
        assert after.id != before.id
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    # The launcher removes its container when the kernel exits.
    await wait_until(
        lambda: not docker_client.containers.list(all=True, filters={"label": this_kernel}),
        what="the launcher to remove its container",
    )


async def test_the_launcher_stops_its_kernel_when_its_client_dies(
    install_test_kernel: Any, notebook_dir: Path, docker_client: docker.DockerClient, no_leftovers: None
) -> None:
    """A client that is killed never shuts its kernel down: the launcher notices and removes it."""
    name = install_test_kernel("py3")
    connection_file, _ = write_connection_file(str(notebook_dir.parent / "kernel-client-dies.json"))
    spec_dir = KernelSpecManager().get_kernel_spec(name).resource_dir
    argv = [sys.executable, "-m", "dockerkernel", "launch", "--spec-dir", spec_dir, "-f", connection_file]
    # The client: a process that starts the launcher, and is then killed.
    client = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])", *argv],
        cwd=notebook_dir,
    )
    this_kernel = {"label": f"{LABEL_KERNELSPEC}={name}"}
    try:
        [container] = await wait_until(
            lambda: docker_client.containers.list(filters=this_kernel), "the kernel's container"
        )
        launcher = psutil.Process(int(container.labels[LABEL_OWNER_PID]))
        assert launcher.ppid() == client.pid
        client.kill()
        client.wait()
        await wait_until(lambda: exited(launcher), "the launcher to exit")
        assert not docker_client.containers.list(all=True, filters=this_kernel)
    finally:
        client.kill()
        client.wait()


def exited(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_gpu_request_without_nvidia_runtime_is_a_clear_error(
    install_test_kernel: Any, docker_client: docker.DockerClient, no_leftovers: None, notebook_dir: Path
) -> None:
    name = install_test_kernel("py3", "--gpus", "all")
    km = AsyncKernelManager(kernel_name=name)
    with pytest.raises(DockerKernelError) as info:
        await km.start_kernel(cwd=str(notebook_dir))
    assert str(info.value) == errors.GPUS_UNAVAILABLE.format(gpus="all")


@pytest.mark.parametrize("flavour", ["py3", "py2"])
async def test_auto_gpus_fall_back_to_the_cpu_with_a_notice(
    flavour: str,
    install_test_kernel: Any,
    start_kernel: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """This daemon has no NVIDIA runtime: 'auto' runs on the CPU and says so, in the log and the notebook."""
    caplog.set_level(logging.WARNING)
    kernel = await start_kernel(install_test_kernel(flavour, "--gpus", "auto"), cwd=str(notebook_dir))
    assert not docker_client.api.inspect_container(kernel.container_id)["HostConfig"]["DeviceRequests"]
    assert [r.getMessage() for r in caplog.records].count(GPUS_AUTO_ON_CPU) == 1

    def stderr(reply: Any) -> str:
        return "".join(
            m["content"]["text"]
            for m in reply.messages
            if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
        )

    first = await kernel.execute("print(1)")
    assert (first.stdout, stderr(first)) == ("1\n", GPUS_AUTO_ON_CPU + "\n")
    second = await kernel.execute("print(2)")
    assert (second.stdout, stderr(second)) == ("2\n", "")


async def test_container_gets_the_shared_memory_and_limits_the_kernelspec_asks_for(
    install_test_kernel: Any, start_kernel: Any, notebook_dir: Path, docker_client: docker.DockerClient
) -> None:
    name = install_test_kernel("py3", "--shm-size", "1g", "--mem-limit", "768m", "--cpus", "1.5")
    kernel = await start_kernel(name, cwd=str(notebook_dir))
    host_config = docker_client.api.inspect_container(kernel.container_id)["HostConfig"]
    assert host_config["ShmSize"] == 1024**3
    assert host_config["Memory"] == 768 * 1024**2
    assert host_config["NanoCpus"] == 1_500_000_000
    reply = await kernel.execute("import os; s = os.statvfs('/dev/shm'); print(s.f_blocks * s.f_frsize)")
    assert int(reply.stdout) == 1024**3  # what DataLoader workers get


@pytest.mark.parametrize(
    ("gpus", "request_"),
    [("all", (-1, [])), ("2", (2, [])), ("device=0,3", (0, ["0", "3"]))],
)
def test_daemon_records_the_device_requests_the_kernelspec_asks_for(
    gpus: str,
    request_: tuple[int, list[str]],
    test_images: dict[str, str],
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    no_leftovers: None,
) -> None:
    """Without the NVIDIA runtime such a container cannot start here, but it can be created and inspected."""
    plan = draft(
        make_settings(DockerSettings, {"image": test_images["py3"], "gpus": gpus}, "gpu-kernel"),
        kernel_id="gpu-plan-check",
        kernel_name="gpu-kernel",
        connection_info=write_connection_file(str(notebook_dir.parent / "c.json"))[1],
        cwd=str(notebook_dir),
        spec_env={},
        launch_env={},
        owner=this_process_owner(),
        identity=host_identity(),
    )
    assert plan.network is not None
    ensure_isolated_network(docker_client, plan.network, plan.owner_uid)
    container = docker_client.containers.create(**create_args(plan))
    try:
        [recorded] = docker_client.api.inspect_container(container.id)["HostConfig"]["DeviceRequests"]
        assert (recorded["Count"], recorded["DeviceIDs"] or []) == request_
        assert recorded["Capabilities"] == [["gpu"]]
    finally:
        container.remove(force=True)


async def test_unknown_image_is_a_clear_error(
    install_test_kernel: Any,
    dockerkernel: Any,
    docker_client: docker.DockerClient,
    no_leftovers: None,
    notebook_dir: Path,
) -> None:
    # A registry on a closed local port fails at once; Docker Hub is not reachable here either.
    image = "127.0.0.1:9/no/such-image:1"
    assert dockerkernel("install", "--image", image, "--name", "missing", "--no-pull").code == 0
    km = AsyncKernelManager(kernel_name="missing")
    with pytest.raises(DockerKernelError) as info:
        await km.start_kernel(cwd=str(notebook_dir))
    message = str(info.value)
    assert message.startswith(f"Docker image '{image}' could not be pulled (")
    assert "\n" not in message


async def test_install_refuses_an_image_that_cannot_be_pulled(dockerkernel: Any, docker_client: Any) -> None:
    result = dockerkernel("install", "--image", "127.0.0.1:9/no/such-image:1", "--name", "missing")
    assert result.code == 1
    assert "Docker image '127.0.0.1:9/no/such-image:1' could not be pulled" in result.err
    assert dockerkernel("list").out.startswith("No dockerkernel kernelspecs")


async def test_environment_is_an_allow_list(
    install_test_kernel: Any, start_kernel: Any, notebook_dir: Path, docker_client: docker.DockerClient
) -> None:
    name = install_test_kernel("py3", "--env", "FROM_SPEC=yes")
    server_env = {**os.environ, "JPY_SESSION_NAME": "/nb/a.ipynb", "AWS_SECRET_ACCESS_KEY": "hunter2"}
    kernel = await start_kernel(name, cwd=str(notebook_dir), env=server_env)
    reply = await kernel.execute("import os, json; print(json.dumps(dict(os.environ)))")
    env = json.loads(reply.stdout)
    assert env["JPY_SESSION_NAME"] == "/nb/a.ipynb"
    assert env["FROM_SPEC"] == "yes"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "JPY_PARENT_PID" not in env
    assert "hunter2" not in json.dumps(docker_client.api.inspect_container(kernel.container_id))


async def test_an_offline_kernel_has_no_network_and_works_over_ipc(
    install_test_kernel: Any, start_kernel: Any, notebook_dir: Path, dockerkernel: Any
) -> None:
    kernel = await start_kernel(install_test_kernel("py3", "--network", "none"), cwd=str(notebook_dir))
    assert kernel.km.transport == "ipc"
    reply = await kernel.execute("import os; print(sorted(os.listdir('/sys/class/net')))")
    assert reply.stdout == "['lo']\n"
    await interrupt_a_sleep(kernel)
    refused = dockerkernel("install", "--image", IMAGES["py3"], "--name", "x", "--network", "none",
                           "--channels", "tcp", "--no-pull")  # fmt: skip
    sentence = errors.NETWORK_NONE_NEEDS_IPC.format(kernel="x", reason="channels is 'tcp'")
    assert (refused.code, refused.err.splitlines()[-1]) == (1, f"dockerkernel: {sentence}")


async def test_host_network_where_the_policy_allows_it(
    install_test_kernel: Any,
    start_kernel: Any,
    notebook_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"KernelPolicy": {"allow_host_network": True}}))
    monkeypatch.setenv("DOCKERKERNEL_POLICY_FILE", str(policy))
    name = install_test_kernel("py3", "--network", "host")
    kernel = await start_kernel(name, cwd=str(notebook_dir))
    assert (await kernel.execute("print('on the host network')")).status == "ok"


async def test_prune_removes_only_containers_whose_owner_is_gone(
    install_test_kernel: Any,
    start_kernel: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    dockerkernel: Any,
    jupyter_dirs: Path,
    tmp_path: Path,
) -> None:
    name = install_test_kernel("py3")
    live = await start_kernel(name, cwd=str(notebook_dir))

    # An orphan: a launcher killed with SIGKILL cannot remove its container.
    connection_file = str(tmp_path / "kernel-orphan.json")
    write_connection_file(connection_file, ip="127.0.0.1", key=b"orphan-key")
    spec_dir = str(jupyter_dirs / "data" / "kernels" / name)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "dockerkernel", "launch", "--spec-dir", spec_dir, "-f", connection_file],
        cwd=notebook_dir,
    )

    def orphans() -> list[Any]:
        return docker_client.containers.list(filters={"label": f"{LABEL_OWNER_PID}={launcher.pid}"})

    await wait_until(lambda: orphans(), what="the launcher's container")
    launcher.kill()
    launcher.wait()
    orphan = orphans()[0]

    rows = {row["container"]: row for row in json.loads(dockerkernel("ps", "--json").out)}
    assert rows[orphan.short_id]["owner"] == "gone"
    assert rows[docker_client.containers.get(live.container_id).short_id]["owner"] == "running"

    assert dockerkernel("prune").out == "Removed 1 kernel container whose owner is gone.\n"
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(orphan.id)
    assert (await live.execute("print('untouched')")).stdout == "untouched\n"


async def test_a_failed_start_leaves_no_sockets_folder_behind(
    install_test_kernel: Any, notebook_dir: Path, no_leftovers: None
) -> None:
    """Outside a server (nbclient, papermill) a start that fails raises, and leaves nothing behind."""
    name = install_test_kernel("py3", "--pull-policy", "never")
    spec_file = Path(KernelSpecManager().get_kernel_spec(name).resource_dir) / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec["metadata"]["kernel_provisioner"]["config"]["image"] = "dockerkernel-test/no-such-image:1"
    spec_file.write_text(json.dumps(spec))
    before = set(os.listdir(channels.base_folder()))
    with pytest.raises(DockerKernelError, match="is not present and pull_policy is 'never'"):
        await AsyncKernelManager(kernel_name=name).start_kernel(cwd=str(notebook_dir))
    assert set(os.listdir(channels.base_folder())) == before


async def test_unknown_kernelspec_key_is_an_error_naming_it(dockerkernel: Any, jupyter_dirs: Path) -> None:
    assert dockerkernel("install", "--image", "a/b", "--name", "typo", "--no-pull").code == 0
    spec_file = jupyter_dirs / "data" / "kernels" / "typo" / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec["metadata"]["kernel_provisioner"]["config"]["gpu"] = "all"
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(DockerKernelError, match="Unknown dockerkernel setting 'gpu' in kernelspec 'typo'"):
        await AsyncKernelManager(kernel_name="typo").start_kernel()


async def test_signals_to_an_exited_or_removed_container_are_harmless(
    install_test_kernel: Any, start_kernel: Any, notebook_dir: Path, docker_client: docker.DockerClient
) -> None:
    """KernelManager interrupts before every shutdown, also after a crash: Docker's 409 and 404 are fine."""
    kernel = await start_kernel(install_test_kernel("py3"), cwd=str(notebook_dir))
    kernel.kc.execute("import os; os._exit(1)")
    exit_status = kernel.km.provisioner._exit
    await asyncio.wait_for(asyncio.wrap_future(exit_status), timeout=30)
    assert exit_status.result() == 1
    assert not await kernel.km.is_alive()
    await kernel.km.interrupt_kernel()  # 409: the container is not running
    docker_client.containers.get(kernel.container_id).remove()
    await kernel.km.provisioner.terminate()  # 404: the container is gone
    await kernel.km.shutdown_kernel(now=True)
    assert kernel.container_id is None
