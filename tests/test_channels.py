"""The choice of a kernel's channels, and the private folders its sockets live in (no engine needed)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockerkernel import channels, errors
from dockerkernel.channels import SOCKET_PATH_MAX, Channels, channel_url, choose
from dockerkernel.engine.kind import shares_this_kernel
from dockerkernel.errors import DockerKernelError


def test_ipc_where_the_engine_is_this_machines_and_the_kernel_runs_as_you() -> None:
    assert choose("auto", where="", engine_local=True, user_can_use=True) == Channels("ipc")


@pytest.mark.parametrize(
    ("where", "local", "user", "reason"),
    [
        (
            "the engine is on another host (ssh://gpu-3)",
            False,
            True,
            "the engine is on another host (ssh://gpu-3)",
        ),
        ("", False, True, "the engine runs in a VM or on another kernel"),
        ("", True, False, "the kernel runs as another user than you"),
    ],
)
def test_tcp_elsewhere_with_the_reason_and_ipc_refused_there(
    where: str, local: bool, user: bool, reason: str
) -> None:
    chosen = choose("auto", where=where, engine_local=local, user_can_use=user)
    assert chosen.transport == "tcp"
    assert chosen.reason.startswith(reason)
    assert chosen.describe() == f"tcp ({chosen.reason})"
    with pytest.raises(DockerKernelError) as info:
        choose("ipc", where=where, engine_local=local, user_can_use=user)
    assert str(info.value) == errors.IPC_IMPOSSIBLE.format(reason=chosen.reason)


def test_tcp_when_asked() -> None:
    assert choose("tcp", where="", engine_local=True, user_can_use=True).transport == "tcp"


def test_urls_as_jupyter_client_makes_them() -> None:
    assert channel_url({"transport": "ipc", "ip": "/r/ab/k", "hb_port": 5}, "hb") == "ipc:///r/ab/k-5"
    assert channel_url({"transport": "tcp", "ip": "127.0.0.1", "hb_port": 5}, "hb") == "tcp://127.0.0.1:5"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A private folder with a short path: pytest's own may be too long for a socket's."""
    folder = Path(tempfile.mkdtemp(prefix="dk-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def runtime(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = short_tmp / "rt"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    return folder


def test_each_kernel_gets_a_private_folder_in_a_private_base(runtime: Path) -> None:
    owner = {"org.dockerkernel.owner-pid": "1"}
    first, second = channels.new_kernel_folder(owner), channels.new_kernel_folder(owner)
    assert first != second
    base = runtime / "dockerkernel"
    for folder in (base, Path(first), Path(second)):
        info = folder.stat()
        assert (info.st_mode & 0o777, info.st_uid) == (0o700, os.getuid())
    assert Path(first).parent == base
    assert json.loads((Path(first) / channels.OWNER_FILE).read_text()) == owner
    channels.remove_kernel_folder(first)
    assert not Path(first).exists()


def test_account_files_are_stored_once_by_content_beside_the_kernel_folders(
    runtime: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(short_tmp))  # so that the kernels of other tests are not looked at
    monkeypatch.setattr("tempfile.tempdir", None)
    passwd = b"root:x:0:0::/root:/bin/sh\nme:x:1000:100::/dockerkernel/home:/bin/sh\n"

    def account_file(data: bytes) -> str:
        path = channels.account_path(os.path.join(channels.base_folder(), "0123abcd"), data)
        channels.store_account_file(path, data)
        return path

    path = account_file(passwd)
    assert account_file(passwd) == path  # another kernel of the same image and user
    assert account_file(b"root:x:0:\n") != path
    store = runtime / "dockerkernel" / channels.ACCOUNTS
    assert Path(path).parent == store
    assert (store.stat().st_mode & 0o777, Path(path).stat().st_mode & 0o777) == (0o700, 0o644)
    assert Path(path).read_bytes() == passwd
    assert sorted(os.listdir(store)) == sorted([Path(path).name, Path(account_file(b"root:x:0:\n")).name])
    # The store is no kernel's folder: pruning leaves it.
    assert channels.prune(lambda owner: False) == []
    assert Path(path).exists()


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o711])
def test_a_base_open_to_others_is_refused_and_left_alone(runtime: Path, mode: int) -> None:
    base = runtime / "dockerkernel"
    base.mkdir()
    base.chmod(mode)
    with pytest.raises(DockerKernelError) as info:
        channels.new_kernel_folder({})
    reason = f"its mode is {mode:04o}, not 0700"
    assert str(info.value) == errors.IPC_FOLDER_UNSAFE.format(path=base, reason=reason)
    assert base.stat().st_mode & 0o777 == mode  # never changed behind the user's back
    assert not list(base.iterdir())


def test_a_link_in_place_of_the_base_is_refused(runtime: Path, short_tmp: Path) -> None:
    elsewhere = short_tmp / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (runtime / "dockerkernel").symlink_to(elsewhere)
    with pytest.raises(DockerKernelError) as info:
        channels.new_kernel_folder({})
    path = runtime / "dockerkernel"
    assert str(info.value) == errors.IPC_FOLDER_UNSAFE.format(path=path, reason="it is not a folder")
    assert not list(elsewhere.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder of another user's needs root")
def test_a_base_of_another_users_is_refused(runtime: Path) -> None:
    base = runtime / "dockerkernel"
    base.mkdir(mode=0o700)
    os.chown(base, 12345, 12345)
    with pytest.raises(DockerKernelError) as info:
        channels.new_kernel_folder({})
    reason = "it belongs to uid 12345, not to you"
    assert str(info.value) == errors.IPC_FOLDER_UNSAFE.format(path=base, reason=reason)


def test_without_a_runtime_folder_a_private_one_in_tmp(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(short_tmp))
    monkeypatch.setattr("tempfile.tempdir", None)
    folder = Path(channels.new_kernel_folder({}))
    assert folder.parent == short_tmp / f"dockerkernel-{os.getuid()}"
    assert folder.parent.stat().st_mode & 0o777 == 0o700


def test_paths_too_long_for_a_socket_are_a_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr("tempfile.tempdir", None)
    with pytest.raises(DockerKernelError) as info:
        channels.new_kernel_folder({})
    tried = f"{deep}/dockerkernel and {deep}/dockerkernel-{os.getuid()}"
    assert str(info.value) == errors.IPC_PATH_TOO_LONG.format(tried=tried, max=SOCKET_PATH_MAX)
    assert not list(deep.iterdir())  # nothing made


def test_prune_removes_only_the_folders_of_owners_that_are_gone(
    runtime: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(short_tmp))  # so that the kernels of other tests are not looked at
    monkeypatch.setattr("tempfile.tempdir", None)
    gone = channels.new_kernel_folder({"pid": "gone"})
    alive = channels.new_kernel_folder({"pid": "alive"})
    unknown = channels.new_kernel_folder({"pid": "elsewhere"})
    verdicts = {"gone": False, "alive": True, "elsewhere": None}
    removed = channels.prune(lambda owner: verdicts.get(owner.get("pid", "")))
    assert removed == [gone]
    assert not Path(gone).exists() and Path(alive).exists() and Path(unknown).exists()


@pytest.mark.parametrize(
    ("info", "local"),
    [
        (
            {
                "OSType": "linux",
                "KernelVersion": platform.release(),
                "OperatingSystem": "Debian GNU/Linux 12",
            },
            True,
        ),
        (
            {"OSType": "linux", "KernelVersion": "6.10.14-linuxkit", "OperatingSystem": "Docker Desktop"},
            False,
        ),
        (
            {"OSType": "linux", "KernelVersion": platform.release(), "OperatingSystem": "Docker Desktop"},
            False,
        ),
        ({"OSType": "linux", "KernelVersion": "5.15.0-1-other", "OperatingSystem": "Fedora CoreOS"}, False),
        ({"OSType": "windows", "KernelVersion": platform.release(), "OperatingSystem": "Windows"}, False),
    ],
)
def test_an_engine_carries_sockets_only_on_this_machines_kernel(info: dict[str, str], local: bool) -> None:
    """Docker Desktop and Podman machines run their engine in a VM: its bind mounts carry no sockets."""
    assert shares_this_kernel(info) is local
