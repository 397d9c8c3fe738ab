"""A kernel's channels: unix sockets in a folder only its owner can reach, or tcp ports.

On an engine of this machine, each kernel gets a folder of its own,
``<base>/<8 hex>/``, inside a per-user base folder of mode 0700
(``$XDG_RUNTIME_DIR/dockerkernel``, else ``<tmp>/dockerkernel-<uid>``). It is
bind-mounted into the container at CONTAINER_IPC_DIR, and the kernel binds its
five ZeroMQ sockets there (``ipc://.../k-1`` to ``k-5``). The server connects
to the same sockets through the host's path. Nobody but the owner (and root)
can traverse the base folder, so no other local user and no container can
reach the sockets; the container publishes no ports.

Where that cannot work, the channels stay on tcp ports published on the
loopback (see choose()): engines of other hosts and swarms, engines whose bind
mounts cannot carry sockets (a VM's, as with Docker Desktop), and kernels that
run as a user who could not use the folder.

Each kernel folder holds an ``owner`` file naming the process that made it, so
that the folders of a server that died are removed with its containers
(prune()). A kernel folder also carries the kernel's connection file and
start-up script into the container, which then needs no copy of files before
its start; the passwd and group entries of its user come read-only from a store
beside the kernel folders, ``<base>/accounts/``, named by their content
(account_path()).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import errors
from .errors import DockerKernelError

CONTAINER_IPC_DIR = "/dockerkernel/ipc"
SOCKET_PREFIX = "k"  # the sockets are <folder>/k-1 ... k-5
# One 'port' per channel: the socket's suffix.
IPC_PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
OWNER_FILE = "owner"
ACCOUNTS = "accounts"  # the base folder's store of passwd and group files
# sun_path is 108 bytes with its terminating NUL.
SOCKET_PATH_MAX = 107
_LONGEST_SOCKET = f"/{'0' * 8}/{SOCKET_PREFIX}-5"  # what a kernel folder adds to the base


@dataclass(frozen=True)
class Channels:
    """How a kernel's channels are carried: 'tcp', or 'ipc' in ``folder`` (a host path)."""

    transport: str = "tcp"
    folder: str = ""  # ipc: the kernel's own folder on this machine
    prefix: str = SOCKET_PREFIX  # ipc: the sockets' name before '-N'
    reason: str = ""  # why tcp, where ipc was possible in principle
    own_folder: bool = True  # ipc: the folder is the kernel's alone (new_kernel_folder), not a client's

    @property
    def carries_files(self) -> bool:
        """Whether the kernel's own files go in through its folder rather than by a copy."""
        return self.transport == "ipc" and self.own_folder

    @property
    def host_ip(self) -> str:
        """The connection info's 'ip' for this machine: a path prefix for ipc."""
        return os.path.join(self.folder, self.prefix) if self.transport == "ipc" else "127.0.0.1"

    @property
    def container_ip(self) -> str:
        return f"{CONTAINER_IPC_DIR}/{self.prefix}"

    def describe(self) -> str:
        if self.transport == "ipc":
            return "ipc (private sockets)"
        return f"tcp ({self.reason})" if self.reason else "tcp"


TCP = Channels()


def channel_url(connection: Mapping[str, Any], channel: str) -> str:
    """The ZeroMQ address of ``channel`` ('hb', 'shell'...) in a connection info, as jupyter_client
    makes it."""
    port = connection[f"{channel}_port"]
    if connection.get("transport", "tcp") == "ipc":
        return f"ipc://{connection['ip']}-{port}"
    return f"tcp://{connection['ip']}:{port}"


def choose(setting: str, *, where: str, engine_local: bool, user_can_use: bool) -> Channels:
    """The channels for a kernel (pure): ipc where it can work, else tcp with the reason.

    ``setting`` is 'auto', 'ipc' or 'tcp'; ``where`` says why the engine cannot
    carry sockets when it is not this machine's ('' where it is);
    ``engine_local`` whether the engine shares this machine's kernel and files;
    ``user_can_use`` whether the kernel runs as someone who can use the owner's
    private folder.
    """
    if setting == "tcp":
        return Channels("tcp", reason="channels is 'tcp'")
    reason = ""
    if where:
        reason = where
    elif not engine_local:
        reason = "the engine runs in a VM or on another kernel, whose bind mounts cannot carry sockets"
    elif not user_can_use:
        reason = "the kernel runs as another user than you, who cannot use your private folder"
    if not reason:
        return Channels("ipc")
    if setting == "ipc":
        raise DockerKernelError(errors.IPC_IMPOSSIBLE.format(reason=reason))
    return Channels("tcp", reason=reason)


def _candidates() -> list[str]:
    """Base folders to try, best first."""
    found = []
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        found.append(os.path.join(runtime, "dockerkernel"))
    found.append(os.path.join(tempfile.gettempdir(), f"dockerkernel-{os.getuid()}"))
    return found


def _private_folder(path: str) -> None:
    """Make ``path`` a folder of this user's with mode 0700, or check that it is one.

    An existing one that is a link, belongs to someone else or is open to
    others is refused, never used nor changed: someone may have put it there.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise DockerKernelError(errors.IPC_FOLDER_UNUSABLE.format(path=path, reason=e.strerror)) from None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise DockerKernelError(errors.IPC_FOLDER_UNSAFE.format(path=path, reason="it is not a folder"))
    if info.st_uid != os.getuid():
        reason = f"it belongs to uid {info.st_uid}, not to you"
        raise DockerKernelError(errors.IPC_FOLDER_UNSAFE.format(path=path, reason=reason))
    if stat.S_IMODE(info.st_mode) != 0o700:
        reason = f"its mode is {stat.S_IMODE(info.st_mode):04o}, not 0700"
        raise DockerKernelError(errors.IPC_FOLDER_UNSAFE.format(path=path, reason=reason))


def base_folder() -> str:
    """This user's private base folder for kernel sockets, made if need be.

    The first candidate whose sockets' paths fit in a unix socket address.
    """
    tried = []
    for candidate in _candidates():
        if len(os.fsencode(candidate + _LONGEST_SOCKET)) > SOCKET_PATH_MAX:
            tried.append(candidate)
            continue
        _private_folder(candidate)
        return candidate
    raise DockerKernelError(errors.IPC_PATH_TOO_LONG.format(tried=" and ".join(tried), max=SOCKET_PATH_MAX))


def new_kernel_folder(owner: Mapping[str, str]) -> str:
    """A fresh folder for one kernel's sockets, with an ``owner`` file of ``owner``'s labels."""
    base = base_folder()
    while True:
        path = os.path.join(base, secrets.token_hex(4))
        try:
            os.mkdir(path, 0o700)
            break
        except FileExistsError:
            continue
    fd = os.open(os.path.join(path, OWNER_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dict(owner), f)
    return path


def write_private(path: str, data: bytes, mode: int) -> None:
    """Write a file of this user's with ``mode``, replacing any there; links are not followed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)


def account_path(kernel_folder: str, data: bytes) -> str:
    """Where a file with ``data`` (a passwd or group file) is kept, in the store beside ``kernel_folder``.

    It is bind-mounted read-only at /etc/passwd or /etc/group, and never into a
    container otherwise, so a kernel cannot change the accounts it runs under.
    Named by its content: kernels of one image and user share it, and a
    running kernel's file is never rewritten.
    """
    return os.path.join(os.path.dirname(kernel_folder), ACCOUNTS, hashlib.sha256(data).hexdigest()[:32])


def store_account_file(path: str, data: bytes) -> None:
    """Keep ``data`` at ``path`` (see account_path), once: whole or absent, for a start beside this one."""
    _private_folder(os.path.dirname(path))
    if not os.path.exists(path):
        partial = f"{path}.{secrets.token_hex(4)}"
        write_private(partial, data, 0o644)
        os.replace(partial, path)


def remove_kernel_folder(path: str) -> None:
    """Remove a kernel's folder and its sockets; one already gone is fine."""
    if path:
        shutil.rmtree(path, ignore_errors=True)


def prune(owner_alive: Callable[[dict[str, str]], bool | None]) -> list[str]:
    """Remove this user's kernel folders whose owning process is gone; their paths.

    A folder whose owner cannot be judged (another host's, an unreadable
    file) is kept.
    """
    removed = []
    for base in _candidates():
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            path = os.path.join(base, name)
            try:
                with open(os.path.join(path, OWNER_FILE)) as f:
                    owner = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(owner, dict) and owner_alive(owner) is False:
                remove_kernel_folder(path)
                removed.append(path)
    return removed
