"""Kernels' home volumes: one per user and kernelspec, removed on request only."""

from __future__ import annotations

import time

import docker
from docker.errors import APIError, NotFound

from .. import errors
from ..errors import DockerKernelError
from ..labels import LABEL_KERNEL_ID
from .connect import api_timeout, daemon_errors
from .containers import remove_container

HOME_RELEASE_WAIT = 2.0  # seconds a home's kernels may take to be seen exited


def remove_home(client: docker.DockerClient, volume: str) -> bool:
    """Remove a kernel's home volume; False when there was none.

    Kernels that have exited may still hold it for a moment: a shutdown ends at
    the kernel's exit, and its container is removed just after. Their removal
    is made, or waited for, here; a kernel that still runs is an error.
    """
    with daemon_errors():
        try:
            client.api.remove_volume(volume)
            return True
        except NotFound:
            return False
        except APIError as e:
            if e.status_code != 409:
                raise
            in_use = DockerKernelError(errors.HOME_IN_USE.format(volume=volume))
            running = ("running", "paused", "restarting")
            # The engine says 'running' until it has released an exited container's network.
            deadline = time.monotonic() + HOME_RELEASE_WAIT
            while True:
                holders = client.api.containers(all=True, filters={"volume": volume})
                if any(LABEL_KERNEL_ID not in (h.get("Labels") or {}) for h in holders):
                    raise in_use from e
                if not any(h.get("State") in running for h in holders):
                    break
                if time.monotonic() > deadline:
                    raise in_use from e
                time.sleep(0.05)
            for holder in holders:
                remove_container(client, holder["Id"])  # one whose removal is under way is fine
            deadline = time.monotonic() + api_timeout()
            while client.api.containers(all=True, filters={"volume": volume}):
                if time.monotonic() > deadline:
                    raise in_use from e
                time.sleep(0.05)
        try:
            client.api.remove_volume(volume)
            return True
        except NotFound:
            return False


def volume_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.api.inspect_volume(name)
        return True
    except NotFound:
        return False
