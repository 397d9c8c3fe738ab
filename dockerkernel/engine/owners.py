"""Which process a kernel container belongs to, and whether that process still runs."""

from __future__ import annotations

import os
import socket

import psutil

from ..labels import LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_OWNER_STARTED, LABEL_OWNER_UID, Owner


def this_process_owner() -> Owner:
    """The Owner labels for containers started by this process."""
    return Owner(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=f"{psutil.Process().create_time():.2f}",
        uid=os.getuid(),
    )


def owner_alive(labels: dict[str, str]) -> bool | None:
    """Whether the process that started a container still runs; None when it can't be told.

    Only "gone" (False) lets a container be pruned, so anything unsure is
    None: an owner on another host, one of another user (where /proc hides
    other users' processes, hidepid=2, they look gone), a process that cannot
    be read, labels that are not ours.
    """
    if labels.get(LABEL_OWNER_HOST) != socket.gethostname():
        return None
    if labels.get(LABEL_OWNER_UID) != str(os.getuid()):
        return None
    try:
        proc = psutil.Process(int(labels.get(LABEL_OWNER_PID, "")))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return f"{proc.create_time():.2f}" == labels.get(LABEL_OWNER_STARTED)
    except psutil.NoSuchProcess:
        return False
    except (ValueError, psutil.Error):
        return None
