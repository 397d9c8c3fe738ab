"""The Jupyter server extension: remove kernel containers whose server is gone; show start errors.

A server killed with SIGKILL (or a machine that lost power) cannot remove its
kernels' containers. Every container carries its owner's host, pid, process
start time and uid (spec.Owner), so the next server to start can tell its
user's orphans from the kernels of servers that still run, that user's other
servers included, and removes only those orphans; other users' containers are
never touched. `dockerkernel prune` does the same on request.

It also turns on DockerProvisioner.fallback_kernel, so that in a server a
kernel that cannot start answers every execution with the reason, unless the
server's config sets it. And it keeps each saved notebook's record of the
image it ran on: the record that a dockerkernel kernel puts in its
``language_info`` (see provenance.py) is copied to the notebook's top-level
``metadata.dockerkernel``, where JupyterLab leaves it alone.

pip enables the extension on install, through
etc/jupyter/jupyter_server_config.d/dockerkernel.json.
"""

from __future__ import annotations

import threading
from typing import Any

from . import channels, kernelspec, provenance
from .backends import prune_host
from .engine.owners import owner_alive
from .errors import DockerKernelError


def keep_record(model: dict[str, Any], **kwargs: Any) -> None:
    """A pre-save hook: a notebook's record from its kernel's language_info, at its top level."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    metadata = model["content"].setdefault("metadata", {})
    found = provenance.of_kernel(metadata)
    if found is not None:
        metadata[provenance.METADATA_KEY] = found


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Turn on the fallback kernel, and prune in a thread: the Docker SDK blocks, the server must not."""
    log = serverapp.log
    # In a server, a kernel that cannot start shows why in the notebook (see fallback.py).
    provisioner_config = serverapp.config.DockerProvisioner
    if "fallback_kernel" not in provisioner_config:
        provisioner_config.fallback_kernel = True
    serverapp.contents_manager.register_pre_save_hook(keep_record)

    def prune() -> None:
        channels.prune(owner_alive)  # the sockets' folders of this user's dead servers
        for host in kernelspec.docker_hosts(kernelspec.installed()):
            try:
                removed = prune_host(host)
            except DockerKernelError as e:
                log.warning("dockerkernel: could not look for orphaned kernel containers on %s: %s", host, e)
                continue
            if removed:
                log.info("dockerkernel: removed %d kernel container(s) whose server is gone", len(removed))

    threading.Thread(target=prune, name="dockerkernel-prune", daemon=True).start()
