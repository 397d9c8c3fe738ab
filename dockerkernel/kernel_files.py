"""A kernel's own files in its container: where each one goes, and how.

Over ipc, the kernel's folder (see channels.py) is mounted, and the
connection file and the start-up script are written there before the
container exists; the user's passwd and group entries are mounted read-only
from a store beside it. Otherwise every file is copied into the created
container, as a tar (files_archive), where it can belong to whichever user the
kernel runs as without opening a folder on the host. Pure functions: the
launch writes what they say (see launch.act).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import provenance
from .channels import CONTAINER_IPC_DIR, Channels
from .identity import merge_group, merge_passwd

if TYPE_CHECKING:
    from .plan import ContainerPlan

# Where a kernel's own files live inside its container. Over ipc they are in the
# kernel's folder, which is mounted; otherwise they are copied into the container's
# own filesystem. ipykernel may rewrite its connection file after binding: both
# places are the kernel's to write.
CONTAINER_DIR = "/dockerkernel"
CONTAINER_CONNECTION_FILE = f"{CONTAINER_DIR}/run/kernel.json"
CONTAINER_HOME = f"{CONTAINER_DIR}/home"
# Run by IPython at start-up, through PYTHONSTARTUP: the kernel's record, and its
# notice (provenance.startup_script). Outside the home, which may be a volume
# that outlives this container.
STARTUP_FILE = f"{CONTAINER_DIR}/startup.py"
ACCOUNT_FILES = ("/etc/passwd", "/etc/group")


@dataclass(frozen=True)
class KernelFile:
    """A file that a kernel needs in its container, at ``path``; a folder where ``data`` is None."""

    path: str
    mode: int
    data: bytes | None = None
    root_owned: bool = False  # else it belongs to the kernel's user
    source: str = ""  # for a file mounted read-only: where this machine keeps it (channels.account_path)


@dataclass(frozen=True)
class FilesInPlace:
    """Where a kernel's files go before its start (see place_files)."""

    in_folder: tuple[KernelFile, ...] = ()  # written into the kernel's folder, which is mounted
    mounted: tuple[KernelFile, ...] = ()  # stored on this machine and mounted read-only at their paths
    copied: tuple[KernelFile, ...] = ()  # copied into the created container


def within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or inside it (both absolute and normalised)."""
    return os.path.commonpath([path, folder]) == folder


def connection_file_in(channels: Channels) -> str:
    """The kernel's connection file as its container sees it."""
    return f"{CONTAINER_IPC_DIR}/kernel.json" if channels.carries_files else CONTAINER_CONNECTION_FILE


def startup_file_in(channels: Channels) -> str:
    """The kernel's start-up script as its container sees it."""
    return f"{CONTAINER_IPC_DIR}/startup.py" if channels.carries_files else STARTUP_FILE


def host_path(channels: Channels, file: KernelFile) -> str:
    """Where a file that goes in through the kernel's folder is written on this machine."""
    return os.path.join(channels.folder, os.path.relpath(file.path, CONTAINER_IPC_DIR))


def kernel_files(
    plan: ContainerPlan, passwd: str | None = None, group: str | None = None
) -> list[KernelFile]:
    """The files a kernel needs besides its home: its connection file, its start-up script, its accounts.

    ``passwd`` and ``group`` are the image's /etc/passwd and /etc/group: with the
    plan's identity, the container gets copies with the kernel's user in them,
    where that adds anything.
    """
    connection = json.dumps(plan.connection, indent=1).encode()
    files = [KernelFile(connection_file_in(plan.channels), 0o600, connection)]
    if plan.environment.get("PYTHONSTARTUP") == startup_file_in(plan.channels):
        script = provenance.startup_script(plan.notice, plan.notice_stream, plan.startup_chain)
        files.append(KernelFile(startup_file_in(plan.channels), 0o644, script.encode(), root_owned=True))
    if plan.identity is not None and passwd is not None and group is not None:
        for path, image_file, merged in (
            ("/etc/passwd", passwd, merge_passwd(passwd, plan.identity, CONTAINER_HOME)),
            ("/etc/group", group, merge_group(group, plan.identity)),
        ):
            if merged != image_file:
                files.append(KernelFile(path, 0o644, merged.encode(), root_owned=True))
    return files


def home_folder(plan: ContainerPlan) -> KernelFile | None:
    """The kernel's HOME, where dockerkernel gives it one: the kernel's user must own it."""
    if plan.environment.get("HOME") != CONTAINER_HOME:
        return None
    return KernelFile(CONTAINER_HOME, 0o700)


def place_files(plan: ContainerPlan, files: Sequence[KernelFile], home: KernelFile | None) -> FilesInPlace:
    """Where each of a kernel's files goes; ``home`` is its home folder where that needs an owner.

    Where the kernel's folder carries its files (ipc on this machine), the
    connection file and the start-up script go there, and the container is created and
    started with no copy. A user's passwd and group entries are mounted
    read-only, as that user could not change them anyway; root's are copied,
    so that root can still add users and groups (a package's install does). A
    home that needs its owner set is copied as a folder. Elsewhere, every file
    is copied.
    """
    extra = (home,) if home is not None else ()
    if not plan.channels.carries_files:
        return FilesInPlace(copied=(*files, *extra))
    in_folder = tuple(f for f in files if within(f.path, CONTAINER_IPC_DIR))
    accounts = tuple(f for f in files if f.path in ACCOUNT_FILES)
    as_root = plan.identity is not None and plan.identity.uid == 0
    return FilesInPlace(in_folder, () if as_root else accounts, (*(accounts if as_root else ()), *extra))


def files_archive(plan: ContainerPlan, files: Sequence[KernelFile]) -> bytes:
    """A tar of ``files``, for ``put_archive`` at ``/``, with dockerkernel's folders that hold them.

    They belong to the kernel's user and only it can read them; when that user
    is unknown (the image's own USER) they are open to every user of the
    container.
    """
    buf = io.BytesIO()
    uid, gid = plan.file_owner or (0, 0)
    private = plan.file_owner is not None
    now = time.time()

    def add(file: KernelFile) -> None:
        info = tarfile.TarInfo(file.path.lstrip("/"))
        (info.uid, info.gid), info.mtime = (0, 0) if file.root_owned else (uid, gid), now
        if file.data is None:
            info.type, info.mode = tarfile.DIRTYPE, file.mode if private or file.root_owned else 0o777
            tar.addfile(info)
        else:
            info.mode, info.size = file.mode if private or file.root_owned else 0o666, len(file.data)
            tar.addfile(info, io.BytesIO(file.data))

    folders = {os.path.dirname(f.path) for f in files if within(f.path, CONTAINER_DIR)} - {CONTAINER_DIR}
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if folders or any(within(f.path, CONTAINER_DIR) for f in files):
            add(KernelFile(CONTAINER_DIR, 0o755, root_owned=True))
        for folder in sorted(folders):
            add(KernelFile(folder, 0o700))
        for file in files:
            add(file)
    return buf.getvalue()
