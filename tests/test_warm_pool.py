"""The warm pool: a start that takes a pooled kernel gets exactly what a cold start gets, faster.

Real kernels on the test engine. A kernelspec with a pool of two: its first
start is cold and fills the pool; the next start in the same folder takes a
pooled kernel. Both kernels then report what a notebook can see of itself.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from dockerkernel import errors, warm_pool
from dockerkernel.labels import LABEL_OWNER_PID, LABEL_POOL, POOL_NAME_PREFIX

from conftest import IMAGES, CliResult, Kernel
from waiting import wait_until

pytestmark = pytest.mark.docker

POOL_SIZE = 2

# What a notebook sees of its kernel, Python 2 and 3 alike. Mount sources that
# name the container itself (its hostname file, its cgroups) have its id masked,
# and the kernel's own sockets' folder is named by the folder that holds it.
PROBE = r"""
import json, os, pwd, re, sys
def _mounts():
    found = []
    for line in open('/proc/self/mountinfo'):
        fields = line.split()
        root = fields[3] if fields[4] != '/dockerkernel/ipc' else os.path.dirname(fields[3])
        found.append((re.sub('[0-9a-f]{64}', 'ID', root), fields[4]))
    return sorted(found)
_env = dict(os.environ)
_env.pop('HOSTNAME', None)
print(json.dumps({
    'cwd': os.getcwd(), 'env': _env, 'user': pwd.getpwuid(os.getuid()).pw_name,
    'ids': [os.getuid(), os.getgid(), sorted(os.getgroups())], 'home': os.path.expanduser('~'),
    'mounts': _mounts(), 'path': sys.path, 'session': globals().get('__session__'),
}))
"""


@pytest.fixture
def pool(start_kernel: Any) -> Iterator[warm_pool.WarmPool]:
    """This process's warm pool, emptied after the test, before its kernels are shut down."""
    yield warm_pool.POOL
    assert warm_pool.POOL.wait_filled(timeout=120)
    warm_pool.POOL.drain()


def waiting(client: docker.DockerClient) -> list[Any]:
    """The pooled kernels of this process that no start has taken."""
    mine = {"label": [f"{LABEL_OWNER_PID}={os.getpid()}", LABEL_POOL]}
    found = client.containers.list(all=True, sparse=True, filters=mine)
    return [c for c in found if c.attrs["Names"][0].startswith("/" + POOL_NAME_PREFIX)]


async def seen_from(kernel: Kernel) -> dict[str, Any]:
    reply = await kernel.execute(PROBE)
    assert reply.status == "ok", reply
    return dict(json.loads(reply.stdout))


@pytest.mark.parametrize("flavour", ["py3", "py2"])
async def test_a_kernel_taken_from_the_pool_is_a_cold_one_but_for_its_own_ports_and_key(
    flavour: str,
    install_test_kernel: Callable[..., str],
    start_kernel: Callable[..., Any],
    pool: warm_pool.WarmPool,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    dockerkernel: Callable[..., CliResult],
) -> None:
    name = install_test_kernel(flavour, "--warm-pool", str(POOL_SIZE), name=f"pooled-{flavour}")
    notebook = {n: str(notebook_dir / f"{n}.ipynb") for n in ("a", "b")}

    cold = await start_kernel(name, cwd=str(notebook_dir), env={"JPY_SESSION_NAME": notebook["a"]})
    assert LABEL_POOL not in docker_client.containers.get(cold.container_id).labels
    assert pool.wait_filled(timeout=120)
    assert pool.ready(name) == POOL_SIZE
    pooled = waiting(docker_client)
    assert len(pooled) == POOL_SIZE
    rows = [line for line in dockerkernel("ps").out.splitlines() if "(warm pool)" in line]
    assert len(rows) == POOL_SIZE and all(name in row for row in rows)

    warm = await start_kernel(name, cwd=str(notebook_dir), env={"JPY_SESSION_NAME": notebook["b"]})
    container = docker_client.containers.get(warm.container_id)
    assert container.id in {c.id for c in pooled}  # it was taken from the pool
    assert container.name == f"dockerkernel-{warm.km.kernel_id}"

    # What the notebook sees: the same as a cold start's, but for the notebook's own name.
    a, b = await seen_from(cold), await seen_from(warm)
    assert (a["env"].pop("JPY_SESSION_NAME"), b["env"].pop("JPY_SESSION_NAME")) == (
        notebook["a"],
        notebook["b"],
    )
    if flavour == "py3":  # ipykernel 7 also names the notebook in __session__, ipykernel 4 does not
        assert (a["session"], b["session"]) == (notebook["a"], notebook["b"])
    else:
        assert a["session"] is b["session"] is None
    del a["session"], b["session"]
    # Each kernel's record is its own start's; in all else they agree.
    cold_record, warm_record = (json.loads(seen["env"].pop("DOCKERKERNEL_PROVENANCE")) for seen in (a, b))
    assert cold_record.pop("started") <= warm_record.pop("started")  # the pool filled after the cold start
    assert cold_record == warm_record
    assert a == b
    assert a["cwd"] == str(notebook_dir)
    assert ["/dockerkernel/home", str(notebook_dir)] == sorted(
        point for _, point in a["mounts"] if point in ("/dockerkernel/home", str(notebook_dir))
    )

    # Its channels (its sockets' folder, over ipc) and key are its own: neither the cold kernel's nor a
    # pooled one's.
    assert warm.km.transport == "ipc"
    info = {k: warm.km.get_connection_info()[k] for k in ("ip", "key")}
    assert not set(info.values()) & {cold.km.get_connection_info()[k] for k in info}
    assert pool.wait_filled(timeout=120)
    for other in pool._pools[name].ready:
        assert not set(info.values()) & {other.connection[k] for k in info}

    # A restart is cold, on the same sockets and key, and forgets the state.
    assert (await warm.execute("x = 1")).status == "ok"
    await warm.km.restart_kernel()
    await warm.kc.wait_for_ready(timeout=60)
    assert (await warm.execute("x")).ename == "NameError"
    assert LABEL_POOL not in docker_client.containers.get(warm.container_id).labels
    assert {k: warm.km.get_connection_info()[k] for k in info} == info


def test_gpu_kernels_and_other_hosts_are_never_pooled(dockerkernel: Callable[..., CliResult]) -> None:
    gpus = dockerkernel(
        "install", "--image", IMAGES["py3"], "--name", "gpu", "--gpus", "1", "--warm-pool", "2", "--no-pull"
    )
    assert gpus.code != 0
    assert gpus.err.strip().endswith(errors.WARM_POOL_WITH_GPUS.format(kernel="gpu", gpus="1", size=2)), (
        gpus.err
    )
    remote = dockerkernel(
        "install",
        "--image",
        IMAGES["py3"],
        "--name",
        "far",
        "--host",
        "ssh://gpu-3",
        "--warm-pool",
        "1",
        "--no-pull",
    )
    assert remote.code != 0
    assert remote.err.strip().endswith(
        errors.WARM_POOL_NOT_LOCAL.format(kernel="far", size=1, where="ssh://gpu-3")
    ), remote.err


async def test_a_server_takes_pooled_kernels_and_leaves_none_when_it_stops_or_to_prune_when_killed(
    install_test_kernel: Callable[..., str],
    jupyter_server: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    dockerkernel: Callable[..., CliResult],
) -> None:
    name = install_test_kernel("py3", "--warm-pool", "1", name="pooled")

    def body(notebook: str) -> dict[str, Any]:
        path = f"project/{notebook}"
        return {"path": path, "name": notebook, "type": "notebook", "kernel": {"name": name}}

    def started_by(server: Any) -> list[Any]:
        owner = {"label": f"{LABEL_OWNER_PID}={server.process.pid}"}
        return docker_client.containers.list(all=True, sparse=True, filters=owner)

    def pooled_by(server: Any) -> list[Any]:
        return [c for c in started_by(server) if c.attrs["Names"][0].startswith("/" + POOL_NAME_PREFIX)]

    for stop in (signal.SIGTERM, signal.SIGKILL):
        server = await jupyter_server(notebook_dir.parent)
        session = await server.api("POST", "/api/sessions", body("a.ipynb"))
        await wait_until(lambda server=server: pooled_by(server), "the server to fill its warm pool")
        if stop == signal.SIGTERM:
            # The next notebook takes the pooled kernel, and the server drives it with its key.
            taken = await server.api("POST", "/api/sessions", body("b.ipynb"))
            kernel_id = taken["kernel"]["id"]
            (container,) = docker_client.containers.list(filters={"name": f"dockerkernel-{kernel_id}"})
            assert LABEL_POOL in container.labels
            ws = await server.kernel_websocket(kernel_id, taken["id"])
            try:
                run = await ws.execute("import os\nprint(os.environ['JPY_SESSION_NAME'])")
                assert run.stdout == f"{notebook_dir / 'b.ipynb'}\n"
            finally:
                ws.close()
            await wait_until(lambda server=server: pooled_by(server), "the server to fill its pool again")
        await server.api("DELETE", f"/api/sessions/{session['id']}")
        server.process.send_signal(stop)
        server.process.wait(60)
        if stop == signal.SIGKILL:
            # Its kernels are orphans: the next server's reaper, or prune, removes them.
            assert pooled_by(server)
            result = dockerkernel("prune")
            assert result.code == 0, result.err
        assert not started_by(server)


# What tells a kernel's folder, Python 2 and 3 alike: its working directory, a module and a
# script beside the notebook, IPython's directory history and the notebook's name.
FOLDER_CELLS = [
    "import os, sys\nprint(os.getcwd())\nprint('' in sys.path)",
    "import helper\nprint(helper.VALUE)",
    "%run script.py",
    "print(_dh)\nprint(os.environ.get('JPY_SESSION_NAME'))\nprint(globals().get('__session__'))",
]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project of two notebook folders, run from its root as `papermill a/nb.ipynb` would be."""
    root = tmp_path / "project"
    for folder in ("a", "b"):
        (root / folder).mkdir(parents=True)
        (root / folder / "helper.py").write_text(f"VALUE = 'the helper beside {folder}'\n")
        (root / folder / "script.py").write_text(f"print('the script beside {folder}')\n")
    monkeypatch.chdir(root)  # the client's folder: the mount that holds both
    return root


async def outputs_of(kernel: Kernel) -> list[str]:
    found = []
    for cell in FOLDER_CELLS:
        reply = await kernel.execute(cell)
        assert reply.status == "ok", reply
        found.append(reply.stdout)
    return found


@pytest.mark.parametrize("flavour", ["py3", "py2"])
async def test_a_pooled_kernel_taken_in_another_folder_is_what_a_cold_start_there_is(
    flavour: str,
    install_test_kernel: Callable[..., str],
    start_kernel: Callable[..., Any],
    pool: warm_pool.WarmPool,
    project: Path,
    docker_client: docker.DockerClient,
) -> None:
    name = install_test_kernel(flavour, "--warm-pool", "1", name=f"anywhere-{flavour}")
    notebook = str(project / "b" / "nb.ipynb")
    first = await start_kernel(name, cwd=str(project / "a"))  # cold: fills the pool, in folder a
    assert LABEL_POOL not in docker_client.containers.get(first.container_id).labels
    assert pool.wait_filled(timeout=120) and pool.ready(name) == 1

    warm = await start_kernel(name, cwd=str(project / "b"), env={"JPY_SESSION_NAME": notebook})
    assert LABEL_POOL in docker_client.containers.get(warm.container_id).labels  # taken, made for a
    from_the_pool = await outputs_of(warm)

    assert pool.wait_filled(timeout=120)
    pool.drain()  # so that the next start is cold
    cold = await start_kernel(name, cwd=str(project / "b"), env={"JPY_SESSION_NAME": notebook})
    assert LABEL_POOL not in docker_client.containers.get(cold.container_id).labels
    assert from_the_pool == await outputs_of(cold)
    session = notebook if flavour == "py3" else "None"  # ipykernel 4.10 sets no __session__
    dh = f"[PosixPath('{project / 'b'}')]" if flavour == "py3" else f"[u'{project / 'b'}']"
    assert from_the_pool == [
        f"{project / 'b'}\nTrue\n",
        "the helper beside b\n",
        "the script beside b\n",
        f"{dh}\n{notebook}\n{session}\n",
    ]


async def test_a_notebook_outside_the_pools_project_starts_cold_and_the_pool_stays(
    install_test_kernel: Callable[..., str],
    start_kernel: Callable[..., Any],
    pool: warm_pool.WarmPool,
    project: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    """The rule: the first start elsewhere leaves the pool; a second in a row there moves it."""
    name = install_test_kernel("py3", "--warm-pool", "1", name="two-projects")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def pooled_for(folder: Path) -> bool:
        """Whether the pool holds one kernel, and it mounts ``folder``."""
        found = waiting(docker_client)
        mounts = [docker_client.api.inspect_container(c.id)["Mounts"] for c in found]
        return len(found) == 1 and str(folder) in {m["Destination"] for m in mounts[0]}

    await start_kernel(name, cwd=str(project / "a"))
    assert pool.wait_filled(timeout=120) and pooled_for(project)

    outside = await start_kernel(name, cwd=str(elsewhere))
    assert LABEL_POOL not in docker_client.containers.get(outside.container_id).labels  # cold
    await wait_until(lambda: outside.km.provisioner._state.value == "ready", "the kernel's heartbeat")
    assert pool.wait_filled(timeout=120) and pooled_for(project)  # the pool stayed

    again = await start_kernel(name, cwd=str(elsewhere))
    assert LABEL_POOL not in docker_client.containers.get(again.container_id).labels
    await wait_until(lambda: again.km.provisioner._state.value == "ready", "the kernel's heartbeat")
    assert pool.wait_filled(timeout=120)
    await wait_until(lambda: pooled_for(elsewhere), "the pool to move to the other project")


async def test_an_unused_pool_shrinks_to_nothing_and_fills_again_at_the_next_start(
    install_test_kernel: Callable[..., str],
    start_kernel: Callable[..., Any],
    pool: warm_pool.WarmPool,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
) -> None:
    name = install_test_kernel("py3", "--warm-pool", "1", "--warm-pool-idle", "3", name="idle")
    await start_kernel(name, cwd=str(notebook_dir))
    assert pool.wait_filled(timeout=120) and len(waiting(docker_client)) == 1
    await wait_until(lambda: not waiting(docker_client), "the unused pool to shrink", timeout=60)
    assert pool.ready(name) == 0

    later = await start_kernel(name, cwd=str(notebook_dir))
    assert LABEL_POOL not in docker_client.containers.get(later.container_id).labels  # cold
    await wait_until(lambda: len(waiting(docker_client)) == 1, "the pool to fill again", timeout=120)
