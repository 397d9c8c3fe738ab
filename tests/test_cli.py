"""The `dockerkernel` CLI: kernelspecs written through jupyter_client, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from dockerkernel import errors, kernelspec
from dockerkernel.cli import build_parser
from dockerkernel.settings import DockerSettings

ROOT = Path(__file__).resolve().parent.parent


def read_spec(path: Path) -> dict[str, Any]:
    return dict(json.loads((path / "kernel.json").read_text()))


def test_install_any_image(dockerkernel: Any, jupyter_dirs: Path) -> None:
    result = dockerkernel(
        "install",
        "--image",
        "my/img:1",
        "--name",
        "foo",
        "--display-name",
        "Foo",
        "--gpus",
        "all",
        "--volume",
        "/data:/data:ro",
        "--env",
        "A=1",
        "--python",
        "python2",
        "--no-pull",
    )
    assert result.code == 0, result.err
    path = jupyter_dirs / "data" / "kernels" / "foo"
    assert result.out == f"Installed kernelspec foo in {path}\n"
    spec = read_spec(path)
    assert spec["display_name"] == "Foo"
    assert spec["interrupt_mode"] == "signal"
    assert spec["env"] == {"A": "1"}
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "docker-provisioner",
        "config": {
            "image": "my/img:1",
            "gpus": "all",
            "volumes": ["/data:/data:ro"],
            "kernel_cmd": ["python2", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        },
    }
    assert spec["argv"][:4] == [sys.executable, "-m", "dockerkernel", "launch"]


def test_installed_kernel_shows_in_jupyter_kernelspec_list(dockerkernel: Any) -> None:
    assert dockerkernel("install", "--image", "my/img", "--name", "foo", "--no-pull").code == 0
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter_client.kernelspecapp", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "foo" in json.loads(listed.stdout)["kernelspecs"]


def test_argv_is_understood_by_our_own_launcher(dockerkernel: Any, jupyter_dirs: Path) -> None:
    dockerkernel("install", "--image", "my/img", "--name", "foo", "--no-pull")
    argv = read_spec(jupyter_dirs / "data" / "kernels" / "foo")["argv"]
    args = build_parser().parse_args(argv[3:] + ["--", "--some-client-arg"])
    assert (args.command, args.spec_dir, args.connection_file) == (
        "launch",
        "{resource_dir}",
        "{connection_file}",
    )


@pytest.mark.parametrize("preset", ["scipy", "dl-pytorch", "dl-keras"])
def test_install_preset(dockerkernel: Any, jupyter_dirs: Path, preset: str) -> None:
    assert dockerkernel("install", preset, "--no-pull").code == 0
    config = read_spec(jupyter_dirs / "data" / "kernels" / preset)["metadata"]["kernel_provisioner"]["config"]
    assert config == kernelspec.presets()[preset].config


def test_deep_learning_presets_use_the_gpus_where_there_are_any() -> None:
    presets = kernelspec.presets()
    assert {"python3", "dl-pytorch", "dl-keras"} <= set(presets)
    for name in ("dl-pytorch", "dl-keras"):
        assert presets[name].config["gpus"] == "auto"
        assert presets[name].config["shm_size"] == "2g"  # DataLoader workers
        assert "cuda" in presets[name].config["image"]


def test_preset_settings_can_be_overridden(dockerkernel: Any, jupyter_dirs: Path) -> None:
    assert (
        dockerkernel("install", "dl-pytorch", "--gpus", "none", "--name", "torch-cpu", "--no-pull").code == 0
    )
    config = read_spec(jupyter_dirs / "data" / "kernels" / "torch-cpu")["metadata"]["kernel_provisioner"][
        "config"
    ]
    assert config["gpus"] == "none"
    assert config["image"] == kernelspec.presets()["dl-pytorch"].config["image"]


def test_existing_name_needs_replace(dockerkernel: Any, jupyter_dirs: Path) -> None:
    assert dockerkernel("install", "--image", "a/b", "--name", "foo", "--no-pull").code == 0
    again = dockerkernel("install", "--image", "c/d", "--name", "foo", "--no-pull")
    path = jupyter_dirs / "data" / "kernels" / "foo"
    assert (again.code, again.err) == (
        1,
        "dockerkernel: " + errors.KERNELSPEC_EXISTS.format(name="foo", path=path) + "\n",
    )
    assert dockerkernel("install", "--image", "c/d", "--name", "foo", "--no-pull", "--replace").code == 0
    assert read_spec(path)["metadata"]["kernel_provisioner"]["config"]["image"] == "c/d"


def test_prefix_and_sys_prefix(dockerkernel: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        dockerkernel(
            "install", "--image", "a/b", "--name", "foo", "--prefix", str(tmp_path / "p"), "--no-pull"
        ).code
        == 0
    )
    assert (tmp_path / "p" / "share" / "jupyter" / "kernels" / "foo" / "kernel.json").exists()
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert dockerkernel("install", "--image", "a/b", "--name", "bar", "--sys-prefix", "--no-pull").code == 0
    assert (tmp_path / "venv" / "share" / "jupyter" / "kernels" / "bar" / "kernel.json").exists()
    both = dockerkernel("install", "--image", "a/b", "--user", "--sys-prefix", "--no-pull")
    assert both.code == 2 and "not allowed with argument" in both.err


def test_list_and_uninstall(dockerkernel: Any, jupyter_dirs: Path) -> None:
    assert dockerkernel("list").out.startswith("No dockerkernel kernelspecs are installed")
    dockerkernel("install", "--image", "a/b:1", "--name", "foo", "--gpus", "2", "--no-pull")
    lines = dockerkernel("list").out.splitlines()
    assert lines[0].split() == ["NAME", "IMAGE", "PINNED", "GPUS", "HOME", "VOLUME", "LOCATION", "CHANNELS"]
    home = f"dockerkernel-home-{os.getuid()}-foo"
    folder = str(jupyter_dirs / "data" / "kernels" / "foo")
    assert lines[1].split()[:6] == ["foo", "a/b:1", "-", "2", home, folder]
    assert lines[1].split(maxsplit=6)[6] == "ipc (private sockets)"  # an engine of this machine
    assert json.loads(dockerkernel("list", "--json").out)[0]["image"] == "a/b:1"
    dockerkernel("install", "--image", "a/b:1", "--name", "far", "--host", "ssh://me@gpu-3", "--no-pull")
    far = json.loads(dockerkernel("list", "--json").out)[0]
    assert (far["name"], far["channels"]) == ("far", "tcp (the engine is on another host (ssh://me@gpu-3))")
    assert dockerkernel("uninstall", "far").code == 0
    assert dockerkernel("uninstall", "foo").code == 0
    assert not (jupyter_dirs / "data" / "kernels" / "foo").exists()
    gone = dockerkernel("uninstall", "foo")
    assert (gone.code, gone.err.strip()) == (
        1,
        "dockerkernel: " + errors.KERNELSPEC_NOT_FOUND.format(name="foo"),
    )


def test_presets_command_lists_every_preset(dockerkernel: Any) -> None:
    out = dockerkernel("presets").out
    for name, preset in kernelspec.presets().items():
        assert name in out and preset.config["image"] in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["install"], errors.INSTALL_NEEDS_IMAGE),
        (["install", "no-such-preset"], "Unknown preset 'no-such-preset': choose one of"),
        (
            ["install", "--image", "a/b", "--name", "my kernel"],
            errors.INVALID_KERNEL_NAME.format(name="my kernel"),
        ),
        (["install", "--image", "a/b", "--name", "ünï"], errors.INVALID_KERNEL_NAME.format(name="ünï")),
        (
            ["install", "--image", "a/b", "--gpus", "lots"],
            "Invalid dockerkernel setting in kernelspec 'a-b': invalid gpus value",
        ),
        (["install", "--image", "a/b", "--env", "NOVALUE"], errors.INVALID_ENV.format(value="NOVALUE")),
        (["install", "--image", "Bad Image"], "invalid image name 'Bad Image'"),
        (["install", "--image", "a/b", "--volume", "relative:/x"], "invalid volume 'relative:/x'"),
        (
            ["install", "--image", "a/b", "--swarm", "--gpus", "all"],
            "Kernel 'a-b' sets gpus to 'all', which a Docker Swarm service cannot honour",
        ),
        (
            ["install", "--image", "a/b", "--swarm", "--home", "volume"],
            "Kernel 'a-b' sets home to 'volume', which a Docker Swarm service cannot honour",
        ),
    ],
)
def test_user_errors_are_one_line(dockerkernel: Any, args: list[str], message: str) -> None:
    result = dockerkernel(*args, "--no-pull")
    assert result.code == 1
    assert result.err.startswith("dockerkernel: ") and message in result.err
    assert result.err.count("\n") == 1


def test_errors_are_not_tracebacks_in_a_real_process(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = subprocess.run(
        [sys.executable, "-m", "dockerkernel", "install", "--image", "a/b", "--name", "x"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "dockerkernel: " + errors.DOCKER_UNREACHABLE.format(
        reason="no Docker socket was found"
    )
    assert "Traceback" not in result.stderr


def test_wheel_ships_every_preset_and_the_python2_pins(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("dockerkernel-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for preset in (ROOT / "kernelspecs").iterdir():
        if preset.is_dir() and (preset / "kernel.json").exists():
            assert f"dockerkernel/presets/{preset.name}/kernel.json" in names
    for pinned in (ROOT / "dockerkernel" / "kernel_ready" / "python2").iterdir():
        assert f"dockerkernel/kernel_ready/python2/{pinned.name}" in names  # for --add-ipykernel
    entry_points = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    )
    assert "docker-provisioner = dockerkernel.provisioner:DockerProvisioner" in entry_points


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in DockerSettings.setting_names():
        assert f"| `{name}` |" in readme, f"README's configuration table lacks {name}"
