"""Switching environments from the clients people use: nbclient, nbconvert, papermill, a Jupyter server.

Three genuinely different test images: py2 (Python 2.7, ipykernel 4.10), py3
(Python 3.11, ipykernel 7) and torch (py3 plus a CPU build of PyTorch).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import nbformat
import pytest
from nbclient import NotebookClient

from dockerkernel import errors
from dockerkernel.labels import LABEL_KERNEL_ID

from conftest import FLAVOURS
from waiting import wait_until

pytestmark = pytest.mark.docker


# The same cells in every environment; each prints what tells the environments apart.
ENVIRONMENT_CELLS = [
    "import sys\nprint('python %d.%d' % sys.version_info[:2])",
    "print(open('data.txt').read().strip())",  # next to the notebook, by relative path
    "try:\n    import torch\n    print('torch ' + torch.__version__)\nexcept ImportError as e:\n"
    "    print(type(e).__name__)",
]
EXPECTED = {
    "py2": ["python 2.7", "data from the host", "ImportError"],
    "py3": ["python 3.11", "data from the host", "ModuleNotFoundError"],
    "torch": ["python 3.11", "data from the host", "torch 2.13.0+cpu"],
}


def write_notebook(path: Path, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(nb, path)
    return path


def stdout_of(nb: Any) -> list[str]:
    return [
        "".join(o["text"] for o in cell.outputs if o.get("name") == "stdout").strip() for cell in nb.cells
    ]


def run_client(client: str, notebook: Path, kernel: str) -> Any:
    """Execute ``notebook`` with ``client``; the executed notebook."""
    if client == "nbclient":
        nb = nbformat.read(notebook, as_version=4)
        resources = {"metadata": {"path": str(notebook.parent)}}
        NotebookClient(nb, kernel_name=kernel, timeout=120, resources=resources).execute()
        return nb
    out = notebook.with_name(f"{notebook.stem}-{client}.ipynb")
    if client == "nbconvert":
        argv = [
            "nbconvert", "--to", "notebook", "--execute", f"--ExecutePreprocessor.kernel_name={kernel}",
            f"--output={out.name}", str(notebook),
        ]  # fmt: skip
    else:
        argv = ["papermill", "--kernel", kernel, "--cwd", str(notebook.parent), str(notebook), str(out)]
    # From another directory: the kernel's directory must come from the client, not from inheritance.
    result = subprocess.run(
        [sys.executable, "-m", *argv], cwd=notebook.parents[1], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return nbformat.read(out, as_version=4)


@pytest.mark.parametrize("client", ["nbclient", "nbconvert", "papermill"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_same_notebook_shows_each_environment(
    client: str, flavour: str, kernels: dict[str, str], notebook_dir: Path, no_leftovers: None
) -> None:
    notebook = write_notebook(notebook_dir / "environment.ipynb", ENVIRONMENT_CELLS)
    assert stdout_of(run_client(client, notebook, kernels[flavour])) == EXPECTED[flavour]


@pytest.mark.parametrize("flavour", ["py2", "py3"])
def test_nbclient_extra_arguments_reach_the_kernel(
    flavour: str, kernels: dict[str, str], notebook_dir: Path, no_leftovers: None
) -> None:
    notebook = write_notebook(notebook_dir / "extra.ipynb", ["print(get_ipython().autocall)"])
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb, kernel_name=kernels[flavour], extra_arguments=["--InteractiveShell.autocall=2"]
    )
    client.execute(cwd=str(notebook_dir))
    assert stdout_of(nb) == ["2"]


def test_python2_syntax_runs_in_the_python2_kernel(
    kernels: dict[str, str], notebook_dir: Path, no_leftovers: None
) -> None:
    notebook = write_notebook(notebook_dir / "py2.ipynb", ['print "x", 1 / 2'])
    assert stdout_of(run_client("nbclient", notebook, kernels["py2"])) == ["x 0"]


def test_torch_is_missing_from_the_python3_kernel(
    kernels: dict[str, str], notebook_dir: Path, no_leftovers: None
) -> None:
    notebook = write_notebook(notebook_dir / "py3.ipynb", ["import torch"])
    nb = nbformat.read(notebook, as_version=4)
    resources = {"metadata": {"path": str(notebook_dir)}}
    NotebookClient(nb, kernel_name=kernels["py3"], resources=resources, allow_errors=True).execute()
    [error] = nb.cells[0].outputs
    assert (error["output_type"], error["ename"]) == ("error", "ModuleNotFoundError")


TRAINING = """\
import torch
torch.manual_seed(0)
x = torch.randn(256, 4)
y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(256)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(20):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
    loss.backward()
    optimizer.step()
    print(loss.item())
"""


def test_a_tiny_model_trains_in_the_torch_kernel(
    kernels: dict[str, str], notebook_dir: Path, no_leftovers: None
) -> None:
    notebook = write_notebook(notebook_dir / "train.ipynb", [TRAINING])
    losses = [
        float(line) for line in stdout_of(run_client("nbclient", notebook, kernels["torch"]))[0].split()
    ]
    assert len(losses) == 20
    assert losses[-1] < losses[0] / 10, losses


# A real Jupyter server: sessions over REST, code over the kernel websocket.


def containers_of(client: docker.DockerClient, kernel_id: str) -> list[Any]:
    return client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_KERNEL_ID}={kernel_id}"})


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_server_session_lifecycle(
    flavour: str,
    kernels: dict[str, str],
    notebook_dir: Path,
    jupyter_server: Any,
    docker_client: docker.DockerClient,
) -> None:
    server = await jupyter_server(notebook_dir.parent)
    session = await server.api(
        "POST",
        "/api/sessions",
        {"path": "project/analysis.ipynb", "name": "analysis.ipynb", "type": "notebook",
         "kernel": {"name": kernels[flavour]}},
    )  # fmt: skip
    kernel_id = session["kernel"]["id"]
    [container] = containers_of(docker_client, kernel_id)
    ws = await server.kernel_websocket(kernel_id, session["id"])
    try:
        run = await ws.execute(
            "import os, sys\nprint(os.getcwd())\nprint(os.environ['JPY_SESSION_NAME'])\n"
            "print(sys.version_info[0])"
        )
        assert run.status == "ok"
        assert run.stdout.split() == [
            str(notebook_dir),
            str(notebook_dir / "analysis.ipynb"),
            EXPECTED[flavour][0][7],
        ]

        # Interrupt through the REST API, while the kernel is busy with a cell.
        msg_id = ws.send("execute_request", {"code": "import time\ntime.sleep(60)", "silent": False})
        busy = await ws.wait_for(msg_id, "iopub", "status")
        assert busy["content"]["execution_state"] == "busy"
        await server.api("POST", f"/api/kernels/{kernel_id}/interrupt")
        reply = await ws.wait_for(msg_id, "shell", "execute_reply", timeout=10)
        assert reply["content"]["ename"] == "KeyboardInterrupt"

        # Restart through the REST API: a new container, and the old state is gone.
        assert (await ws.execute("x = 1")).status == "ok"
        await server.api("POST", f"/api/kernels/{kernel_id}/restart")
        assert (await ws.execute("x")).ename == "NameError"
        [restarted] = containers_of(docker_client, kernel_id)
        assert restarted.id != container.id
    finally:
        ws.close()

    await server.api("DELETE", f"/api/sessions/{session['id']}")
    await wait_until(lambda: not containers_of(docker_client, kernel_id), "the container's removal")
    assert await server.api("GET", "/api/kernels") == []


class Blackhole:
    """A registry that accepts connections and never answers, until released: a pull that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.listener.setblocking(False)

    def accepted(self) -> bool:
        try:
            self.connections.append(self.listener.accept()[0])
        except BlockingIOError:
            pass
        return bool(self.connections)

    def release(self) -> None:
        for connection in [*self.connections, self.listener]:
            connection.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    registry = Blackhole()
    yield registry
    registry.release()


async def test_server_keeps_answering_while_a_kernel_container_starts(
    dockerkernel: Any, notebook_dir: Path, jupyter_server: Any, blackhole: Blackhole, docker_client: Any
) -> None:
    """A kernel start that hangs in Docker (pulling from a registry that never answers) blocks no one."""
    image = f"127.0.0.1:{blackhole.port}/slow/image:1"
    assert dockerkernel("install", "--image", image, "--name", "slow", "--no-pull").code == 0
    server = await jupyter_server(notebook_dir.parent)
    body = {"path": "project/slow.ipynb", "type": "notebook", "kernel": {"name": "slow"}}
    start = asyncio.ensure_future(server.api("POST", "/api/sessions", body))

    def pulling() -> bool:  # Docker is pulling, inside the kernel start
        assert not start.done(), start.exception()
        return blackhole.accepted()

    await wait_until(pulling, "Docker to contact the registry")
    for _ in range(20):
        assert (await server.api("GET", "/api/status", timeout=10))["kernels"] == 0
        assert await server.api("GET", "/api/contents/project", timeout=10)
    assert not start.done(), "the kernel start ended before the registry answered"

    blackhole.release()
    session = await start  # the pull failed: the fallback kernel says why in the notebook
    ws = await server.kernel_websocket(session["kernel"]["id"], session["id"])
    try:
        run = await ws.execute("print('hello')")
    finally:
        ws.close()
    [shown] = [m["content"]["evalue"] for m in run.messages if m["msg_type"] == "error"]
    assert shown.startswith(errors.IMAGE_UNAVAILABLE.split("{")[0] + image), shown
