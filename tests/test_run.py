"""`dockerkernel run`, and the record of its image that every notebook a dockerkernel kernel runs keeps."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from dockerkernel import compare, errors
from dockerkernel.labels import LABEL_KERNELSPEC

from conftest import remove_images
from waiting import wait_until_sync

pytestmark = pytest.mark.docker

IMAGE_PY2, IMAGE_PY3 = "dockerkernel-test/py2", "dockerkernel-test/py3"

PORTING = [
    new_markdown_cell("# Porting to Python 3"),
    new_code_cell("alpha = 1", metadata={"tags": ["parameters"]}),
    new_code_cell("print(1/2)"),
    new_code_cell("d = {'a': 1}\nprint(d.keys())"),
    new_code_cell("print(alpha * 2)"),
    new_code_cell("import os\nprint(os.path.basename(os.getcwd()))"),
]


def notebook(folder: Path, name: str, cells: list[Any]) -> Path:
    path = folder / name
    nbformat.write(new_notebook(cells=cells), path)
    return path


def outputs(path: Path) -> list[str]:
    return [compare.cell_output(c) for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_a_notebook_on_python_2_and_3_with_parameters_and_the_cells_that_differ(
    dockerkernel: Callable[..., Any],
    install_test_kernel: Callable[..., str],
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_leftovers: None,
) -> None:
    py2, py3 = install_test_kernel("py2"), install_test_kernel("py3")
    source = notebook(notebook_dir, "porting.ipynb", PORTING)
    monkeypatch.chdir(notebook_dir)
    out = tmp_path / "runs"
    result = dockerkernel(
        "run", str(source), "-k", py2, "-k", py3, "-p", "alpha", "3", "-o", str(out), "--compare"
    )
    assert result.code == 0, result.out + result.err

    ids = {k: docker_client.images.get(f"dockerkernel-test/{k[5:]}").id for k in (py2, py3)}
    for kernel in (py2, py3):
        ran = out / f"porting.{kernel}.ipynb"
        nb = nbformat.read(ran, as_version=4)
        assert nb.metadata.papermill.parameters == {"alpha": 3}
        record = nb.metadata.dockerkernel
        assert record["kernelspec"] == kernel
        assert record["image"] == f"dockerkernel-test/{kernel[5:]}"
        assert record["image_id"] == ids[kernel]
        assert record["image_id_kind"] == "config digest"
        assert record["python"].startswith("2." if kernel == py2 else "3.")
        assert record["ipykernel"] and record["platform"] and record["docker_host"]
        assert record["gpus"] == []
        # The injected parameters cell comes after the tagged one.
        assert outputs(ran)[4:] == ["6\n", "project\n"]
    # Exactly the two cells that differ between Python 2 and 3, in the report and on the terminal.
    report = (out / "porting.compare.md").read_text()
    assert "2 of 6 code cells differ." in report
    assert "| 4 | `print(1/2)` | differs |" in report and "| 5 | `d = {'a': 1}` | differs |" in report
    assert "| 6 | `print(alpha * 2)` | same |" in report
    assert "-0\n+0.5" in report and "+dict_keys(['a'])" in report
    assert "porting.ipynb: 2 of 6 code cells differ" in result.out
    # The table: each run's image with its id, its status and duration.
    rows = [line.split() for line in result.out.splitlines() if line.startswith("porting.ipynb ")]
    assert [(r[1], r[4]) for r in rows] == [(py2, "ok"), (py3, "ok")]
    assert ids[py3].split(":")[1][:12] in result.out


def test_a_failing_cell_exits_1_with_its_cell_number_and_runs_go_two_at_once(
    dockerkernel: Callable[..., Any],
    install_test_kernel: Callable[..., str],
    notebook_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_leftovers: None,
) -> None:
    py3 = install_test_kernel("py3")
    good = notebook(notebook_dir, "good.ipynb", [new_code_cell("import time; time.sleep(1); print('fine')")])
    bad = notebook(
        notebook_dir, "bad.ipynb", [new_code_cell("x = 1"), new_code_cell("1/0"), new_code_cell("x")]
    )
    monkeypatch.chdir(notebook_dir)
    out = tmp_path / "runs"
    result = dockerkernel("run", str(good), str(bad), "-k", py3, "--parallel", "2", "-o", str(out))
    assert result.code == 1
    lines = {line.split()[0]: line for line in result.out.splitlines() if ".ipynb " in line}
    assert " ok " in lines["good.ipynb"]
    assert " failed " in lines["bad.ipynb"]
    assert "cell 2: ZeroDivisionError:" in lines["bad.ipynb"]
    assert outputs(out / f"good.{py3}.ipynb") == ["fine\n"]
    assert outputs(out / f"bad.{py3}.ipynb")[:2] == ["", "ZeroDivisionError: division by zero\n"]
    # Both ran at once: each started before the other ended.
    starts = [i for i, line in enumerate(result.err.splitlines()) if line.endswith(": starting")]
    done = [i for i, line in enumerate(result.err.splitlines()) if ": done in " in line or ": failed" in line]
    assert len(starts) == 2 and max(starts) < min(done)


def test_ctrl_c_stops_every_kernel_and_writes_what_ran(
    install_test_kernel: Callable[..., str],
    notebook_dir: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    no_leftovers: None,
) -> None:
    py3 = install_test_kernel("py3")
    slow = notebook(
        notebook_dir,
        "slow.ipynb",
        [new_code_cell("print('before')"), new_code_cell("import time; time.sleep(600)")],
    )
    out = tmp_path / "runs"
    run = subprocess.Popen(
        [sys.executable, "-m", "dockerkernel", "run", str(slow), "-k", py3, "-o", str(out)],
        cwd=notebook_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stderr is not None
    try:
        wait_until_sync(
            lambda: "cell 2 of 2" in run.stderr.readline(), "the run to reach the sleeping cell", 120
        )
        run.send_signal(signal.SIGINT)
        stdout, _ = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130
    assert " interrupted " in stdout
    assert outputs(out / f"slow.{py3}.ipynb")[0] == "before\n"
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL_KERNELSPEC}={py3}"}) == []


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown kernel", errors.RUN_UNKNOWN_KERNEL.format(kernel="nope", installed="test-py3")),
        ("missing notebook", errors.NOTEBOOK_MISSING.format(path="missing.ipynb")),
        ("not a notebook", "'plain.ipynb' is not a notebook that can be run"),
        ("bad parameters file", "The parameters file 'params.yaml' cannot be used"),
        ("bad parameter name", errors.PARAMETER_NAME.format(name="not-a-name")),
        ("unwritable output", "The output folder 'a-file/runs' cannot be written (Not a directory)"),
        ("no kernel", errors.RUN_NO_KERNELS),
        ("no record to reproduce", errors.NO_PROVENANCE.format(path="ok.ipynb")),
    ],
)
def test_bad_input_is_one_sentence_and_starts_nothing(
    case: str,
    expected: str,
    dockerkernel: Callable[..., Any],
    install_test_kernel: Callable[..., str],
    notebook_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_leftovers: None,
) -> None:
    py3 = install_test_kernel("py3")
    monkeypatch.chdir(notebook_dir)
    notebook(notebook_dir, "ok.ipynb", [new_code_cell("1")])
    (notebook_dir / "plain.ipynb").write_text("print('not json')\n")
    (notebook_dir / "params.yaml").write_text("- just\n- a list\n")
    (notebook_dir / "a-file").write_text("")
    args = {
        "unknown kernel": ["ok.ipynb", "-k", "nope"],
        "missing notebook": ["missing.ipynb", "-k", py3],
        "not a notebook": ["plain.ipynb", "-k", py3],
        "bad parameters file": ["ok.ipynb", "-k", py3, "-f", "params.yaml"],
        "bad parameter name": ["ok.ipynb", "-k", py3, "-p", "not-a-name", "1"],
        "unwritable output": ["ok.ipynb", "-k", py3, "-o", "a-file/runs"],
        "no kernel": ["ok.ipynb"],
        "no record to reproduce": ["--reproduce", "ok.ipynb"],
    }[case]
    result = dockerkernel("run", *args)
    assert result.code == 1
    assert result.err.startswith(f"dockerkernel: {expected}")
    assert len(result.err.strip().splitlines()) == 1
    assert not (notebook_dir / "dockerkernel-runs").exists()


async def test_nbclient_runs_keep_the_record_in_language_info(
    install_test_kernel: Callable[..., str],
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    no_leftovers: None,
) -> None:
    py3 = install_test_kernel("py3")
    nb = new_notebook(cells=[new_code_cell("import os; print(os.environ['DOCKERKERNEL_IMAGE_ID'])")])
    await NotebookClient(
        nb, kernel_name=py3, resources={"metadata": {"path": str(notebook_dir)}}
    ).async_execute()
    record = nb.metadata.language_info.dockerkernel
    image_id = docker_client.images.get("dockerkernel-test/py3").id
    assert record["image_id"] == image_id
    assert compare.cell_output(nb.cells[0]) == image_id + "\n"  # code can log it
    assert record["kernelspec"] == py3 and record["python"].startswith("3.")


async def test_a_save_in_a_jupyter_server_keeps_the_record_at_the_top(
    jupyter_server: Callable[..., Any],
    install_test_kernel: Callable[..., str],
    notebook_dir: Path,
    docker_client: docker.DockerClient,
) -> None:
    """As JupyterLab saves: language_info from the kernel's kernel_info reply, kept whole."""
    py3 = install_test_kernel("py3")
    server = await jupyter_server(notebook_dir)
    session = await server.api(
        "POST", "/api/sessions", {"path": "saved.ipynb", "type": "notebook", "kernel": {"name": py3}}
    )
    ws = await server.kernel_websocket(session["kernel"]["id"], "s1")
    try:
        msg_id = ws.send("kernel_info_request", {})
        reply = await ws.wait_for(msg_id, "shell", "kernel_info_reply", timeout=120)
    finally:
        ws.close()
    nb = new_notebook(
        cells=[new_code_cell("1")], metadata={"language_info": reply["content"]["language_info"]}
    )
    await server.api(
        "PUT", "/api/contents/saved.ipynb", {"type": "notebook", "content": json.loads(nbformat.writes(nb))}
    )
    saved = json.loads((notebook_dir / "saved.ipynb").read_text())
    assert (
        saved["metadata"]["dockerkernel"]["image_id"] == docker_client.images.get("dockerkernel-test/py3").id
    )
    assert saved["metadata"]["dockerkernel"]["kernelspec"] == py3
    await server.api("DELETE", f"/api/sessions/{session['id']}")


def test_compare_leaves_out_dockerkernels_own_notices() -> None:
    cell = {
        "cell_type": "code",
        "source": "x",
        "outputs": [
            {
                "output_type": "stream",
                "name": "stdout",
                "text": "dockerkernel: this kernel has GPU 0.\nresult\n",
            },
            {"output_type": "execute_result", "data": {"text/plain": "42"}},
        ],
    }
    assert compare.cell_output(cell) == "result\n42\n"
    plain = {
        **cell,
        "outputs": [{"output_type": "stream", "name": "stdout", "text": "result\n"}, cell["outputs"][1]],
    }
    [same] = compare.compare({"a": {"cells": [cell]}, "b": {"cells": [plain]}})
    assert not same.differs


def test_the_start_up_script_does_nothing_outside_ipython() -> None:
    """The start-up script does nothing outside IPython: a plain `python` run with the variables."""
    from dockerkernel import provenance

    script = provenance.startup_script("a notice")
    env = {**os.environ, provenance.ENVIRONMENT: "{}", "PYTHONSTARTUP": ""}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_reproduce_runs_again_on_the_recorded_image_after_its_kernelspec_is_gone(
    dockerkernel: Callable[..., Any],
    install_test_kernel: Callable[..., str],
    notebook_dir: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
    no_leftovers: None,
) -> None:
    py2 = install_test_kernel("py2")
    monkeypatch.chdir(notebook_dir)
    source = notebook(notebook_dir, "old.ipynb", [new_code_cell("import sys; print(sys.version_info[0])")])
    assert dockerkernel("run", str(source), "-k", py2, "-o", str(tmp_path / "first")).code == 0
    assert dockerkernel("uninstall", py2).code == 0
    executed = tmp_path / "first" / f"old.{py2}.ipynb"
    result = dockerkernel("run", "--reproduce", str(executed), "-o", str(tmp_path / "again"))
    assert result.code == 0, result.out + result.err
    [again] = (tmp_path / "again").glob("*.ipynb")
    assert outputs(again) == ["2\n"]
    first, second = (nbformat.read(p, as_version=4).metadata.dockerkernel for p in (executed, again))
    assert second["image_id"] == first["image_id"] == docker_client.images.get(IMAGE_PY2).id
    assert second["image_run"] == first["image_id"]  # a local build: pinned by its id
    assert second["settings"] == first["settings"] and first["settings"]["kernel_cmd"][0] == "python"


def test_a_pinned_kernel_starts_its_image_after_the_tag_moves(
    dockerkernel: Callable[..., Any],
    notebook_dir: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
    no_leftovers: None,
) -> None:
    tag = "dockerkernel-test/pinme:1"

    def build(version: str) -> str:
        dockerfile = f"FROM {IMAGE_PY3}\nRUN echo {version} > /opt/version\n"
        image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
        return str(image.id)

    monkeypatch.chdir(notebook_dir)
    source = notebook(
        notebook_dir, "which.ipynb", [new_code_cell("print(open('/opt/version').read().strip())")]
    )
    built = [build("one")]
    try:
        result = dockerkernel("install", "--image", tag, "--name", "pinned", "--pin")
        assert result.code == 0, result.err
        assert f"Pinned to {built[0]}." in result.err
        built.append(build("two"))  # the tag moves
        listed = [line for line in dockerkernel("list").out.splitlines() if line.startswith("pinned ")]
        assert f"{built[0][:19]} (tag moved)" in listed[0]

        def run_once(out: str) -> tuple[int, list[str], dict[str, Any]]:
            result = dockerkernel("run", str(source), "-k", "pinned", "-o", str(tmp_path / out))
            ran = tmp_path / out / "which.pinned.ipynb"
            record = nbformat.read(ran, as_version=4).metadata.get("dockerkernel", {})
            return result.code, outputs(ran), record

        code, printed, record = run_once("pinned")
        assert (code, printed) == (0, ["one\n"])
        assert (record["image"], record["image_run"], record["image_id"]) == (tag, built[0], built[0])
        assert dockerkernel("unpin", "pinned").code == 0
        assert run_once("unpinned")[:2] == (0, ["two\n"])
        assert dockerkernel("pin", "pinned").code == 0  # to the image the tag names now
        docker_client.images.remove(tag)  # a local build that is gone: no registry has it
        result = dockerkernel("run", str(source), "-k", "pinned", "-o", str(tmp_path / "gone"))
        assert result.code == 1
        assert errors.PINNED_IMAGE_GONE.format(kernel="pinned", image=built[1]) in result.out
    finally:
        remove_images(docker_client, *built)


def test_a_pinned_digest_is_pulled_by_its_digest(
    dockerkernel: Callable[..., Any],
    pulled_image: str,
    registry: Any,
    notebook_dir: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
    no_leftovers: None,
) -> None:
    monkeypatch.chdir(notebook_dir)
    result = dockerkernel("install", "--image", pulled_image, "--name", "by-digest", "--pin")
    assert result.code == 0, result.err
    digest = docker_client.images.get(pulled_image).attrs["RepoDigests"][0]
    assert f"Pinned to {digest}." in result.err
    docker_client.images.remove(pulled_image)  # only the registry has it now
    try:
        source = notebook(notebook_dir, "pull.ipynb", [new_code_cell("print(1)")])
        result = dockerkernel("run", str(source), "-k", "by-digest", "-o", str(tmp_path / "out"))
        assert result.code == 0, result.out + result.err
        record = nbformat.read(tmp_path / "out" / "pull.by-digest.ipynb", as_version=4).metadata.dockerkernel
        assert (record["image_run"], record["repo_digest"]) == (digest, digest)
    finally:
        remove_images(docker_client, digest)


def test_a_recorded_digest_that_the_registry_does_not_have_is_one_sentence(
    dockerkernel: Callable[..., Any],
    registry: Any,
    notebook_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_leftovers: None,
) -> None:
    monkeypatch.chdir(notebook_dir)
    missing = f"{registry.address}/dockerkernel-test/pullable@sha256:{'0' * 64}"
    record = {"image": f"{registry.address}/dockerkernel-test/pullable:1", "repo_digest": missing}
    notebook(notebook_dir, "lost.ipynb", [new_code_cell("1")])
    nb = nbformat.read(notebook_dir / "lost.ipynb", as_version=4)
    nb.metadata["dockerkernel"] = {**record, "image_id": "sha256:" + "1" * 64, "settings": {}}
    nbformat.write(nb, notebook_dir / "lost.ipynb")
    result = dockerkernel("run", "--reproduce", "lost.ipynb", "-o", str(tmp_path / "out"))
    assert result.code == 1
    expected = errors.REPRODUCE_IMAGE_GONE.format(path="lost.ipynb", image=missing, reason="", fix="")
    assert result.err.startswith(f"dockerkernel: {expected.split('(')[0]}")
    assert "manifest unknown" in result.err or "not found" in result.err
    assert len(result.err.strip().splitlines()) == 1
