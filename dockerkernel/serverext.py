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

With ``c.DockerKernelDiscovery.sync = True`` it also keeps the kernelspecs of
the engine's labelled images in step (see discovery.py): every ``interval``
seconds, in a thread, one image-list call; a new labelled image gets its
kernelspec, and a removed one loses it. No container starts for it.

pip enables the extension on install, through
etc/jupyter/jupyter_server_config.d/dockerkernel.json.
"""

from __future__ import annotations

import threading
from typing import Any

from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Float
from traitlets.config import LoggingConfigurable

from . import channels, discovery, kernelspec, provenance
from .backends import prune_host
from .engine.connect import get_client
from .engine.owners import owner_alive
from .errors import DockerKernelError
from .threads import executor


class DockerKernelDiscovery(LoggingConfigurable):
    """Kernelspecs for the engine's labelled images, kept in step by a Jupyter server."""

    sync = Bool(
        False,
        help="""Keep a kernelspec for each of the Docker engine's images labelled
        org.dockerkernel.kernel, as `dockerkernel scan --install` does: a new one appears
        in JupyterLab's launcher at its next refresh, a removed one disappears. Only the
        kernelspecs that discovery wrote are changed.""",
    ).tag(config=True)

    interval = Float(20.0, help="Seconds between two looks at the engine's images.").tag(config=True)

    _running = False
    _told: set[str]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._told = set()

    def start(self) -> None:
        """Look now, and every ``interval`` seconds, in a thread: the Docker SDK blocks."""
        self._look()
        PeriodicCallback(self._look, self.interval * 1000).start()

    def _look(self) -> None:
        if not self._running:  # a look that takes longer than the interval is not doubled
            self._running = True
            executor.submit(self._sync).add_done_callback(lambda _: setattr(self, "_running", False))

    def _sync(self) -> None:
        try:
            found, skipped = discovery.scan(get_client())
            done = discovery.sync(found)
        except DockerKernelError as e:
            self.log.warning("dockerkernel: could not look for labelled images: %s", e)
            return
        for s in skipped:
            if s.reference not in self._told:  # once per image, not at every look
                self._told.add(s.reference)
                self.log.warning("dockerkernel: skipped image %s: %s", s.reference, s.reason)
        for name in done.added + done.updated:
            self.log.info("dockerkernel: kernelspec %s for a labelled image", name)
        for name in done.removed:
            self.log.info("dockerkernel: removed kernelspec %s: its image is gone", name)


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
    finder = DockerKernelDiscovery(parent=serverapp)
    if finder.sync:
        finder.start()

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
