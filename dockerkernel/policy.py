"""The administrator's policy: what a kernelspec may ask for, enforced at every start.

A kernelspec is a file that anyone who can write its folder can change. On a
rootful engine, a kernelspec that runs its kernel as uid 0, mounts '/' or the
Docker socket, joins the host's network or drops ``no-new-privileges``
through ``container_options`` is a way to root. The policy says what is
allowed, server-wide: ``c.KernelPolicy.<name>`` in a Jupyter config file, and
a system-wide JSON file (POLICY_FILE, ``{"KernelPolicy": {...}}``) that
clients without a server's config (nbclient, papermill, the launcher) read
too. The server's config is read after the file, so it wins.

By default: volumes anywhere but the system's own folders and never a
socket or a device, no uid 0 for a user who is not root, no host network,
no ``container_options``, no limit on GPUs.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from traitlets import Bool, Int, List, Unicode
from traitlets.config import Config, LoggingConfigurable
from traitlets.config.loader import ConfigFileNotFound, JSONFileConfigLoader

from . import errors
from .errors import DockerKernelError
from .kernel_files import within
from .settings import DockerSettings, parse_gpus, parse_volume

POLICY_FILE = "/etc/dockerkernel/policy.json"
POLICY_FILE_VARIABLE = "DOCKERKERNEL_POLICY_FILE"  # another file, for tests and odd installs

# Host folders whose contents are the system's, not data: never mounted into a kernel.
SYSTEM_FOLDERS = ("/boot", "/dev", "/etc", "/proc", "/run", "/sys", "/var/run", "/var/lib/docker")


class KernelPolicy(LoggingConfigurable):
    """What kernelspecs may ask for; set by the administrator, never by a kernelspec."""

    allowed_volume_roots = List(
        Unicode(),
        help="""Host folders under which a kernelspec's volumes may be, e.g. ["/data", "/home"].
        Empty: any folder but the system's own ('/', /etc, /run, /proc, /dev, /sys, /boot,
        Docker's files). A socket or a device is never mounted.""",
    ).tag(config=True)

    allow_root = Bool(
        False,
        help="""Whether a kernelspec may run its kernel as uid 0 ('user': '0') for a user who
        is not root. On a rootful engine that is root on the mounted folders.""",
    ).tag(config=True)

    allow_host_network = Bool(
        False,
        help="""Whether a kernelspec may use the host's network ('network': 'host'), where the
        kernel reaches every service on the host's loopback.""",
    ).tag(config=True)

    allow_container_options = Bool(
        False,
        help="""Whether a kernelspec may pass 'container_options' to Docker, which can undo every
        other protection (privileged mode, capabilities, no-new-privileges).""",
    ).tag(config=True)

    max_gpus = Int(
        0,
        min=0,
        help="""The most GPUs one kernel may take ('all' and 'auto' count as every GPU, so they
        are refused where this is set). 0: no limit.""",
    ).tag(config=True)

    @classmethod
    def load(cls, config: Config | None = None) -> KernelPolicy:
        """The policy of the system-wide file, then of ``config`` (a server's), which wins."""
        merged = Config()
        path = os.environ.get(POLICY_FILE_VARIABLE) or POLICY_FILE
        loader = JSONFileConfigLoader(os.path.basename(path), os.path.dirname(path) or ".")
        try:
            merged.merge(loader.load_config())
        except ConfigFileNotFound:
            pass
        except Exception as e:  # a file that does not parse must not open everything up
            raise DockerKernelError(errors.POLICY_FILE_INVALID.format(path=path, reason=e)) from e
        if config is not None and "KernelPolicy" in config:
            merged.merge(Config({"KernelPolicy": config.KernelPolicy}))
        return cls(config=merged)

    def check(self, settings: DockerSettings, kernel_name: str) -> None:
        """Refuse a kernelspec that asks for more than this policy allows, with the rule it breaks."""

        def refuse(asks: str, rule: str) -> None:
            raise DockerKernelError(errors.POLICY_REFUSED.format(kernel=kernel_name, asks=asks, rule=rule))

        if settings.user.partition(":")[0] == "0" and os.getuid() != 0 and not self.allow_root:
            refuse("to run as uid 0", "KernelPolicy.allow_root")
        if settings.network == "host" and not self.allow_host_network:
            refuse("the host's network", "KernelPolicy.allow_host_network")
        if settings.container_options and not self.allow_container_options:
            refuse("container_options", "KernelPolicy.allow_container_options")
        if self.max_gpus and settings.gpus != "none":
            gpus = parse_gpus(settings.gpus)
            count = len(gpus.split(",")) if gpus.startswith("device=") else int(gpus) if gpus.isdigit() else 0
            if not count or count > self.max_gpus:
                refuse(f"gpus {settings.gpus}", f"KernelPolicy.max_gpus = {self.max_gpus}")
        for volume in settings.volumes:
            source = parse_volume(volume)[0]
            if not self._volume_allowed(source):
                roots = ", ".join(self.allowed_volume_roots) or "any folder but the system's own"
                refuse(f"the volume {source}", f"KernelPolicy.allowed_volume_roots: {roots}")

    def _volume_allowed(self, source: str) -> bool:
        real = os.path.realpath(source)  # a link does not lead around the rule
        with_links = {os.path.normpath(source), real}
        try:
            mode = os.stat(real).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                return False  # the Docker socket, a device
        except OSError:
            pass  # missing: the start refuses it with its own sentence
        if self.allowed_volume_roots:
            roots = [os.path.normpath(r) for r in self.allowed_volume_roots if os.path.isabs(r)]
            return all(any(within(p, r) for r in roots) for p in with_links)
        return not any(p == "/" or any(within(p, f) for f in SYSTEM_FOLDERS) for p in with_links)


def check(settings: DockerSettings, kernel_name: str, config: Any = None) -> None:
    """Enforce the policy (the system's file, then ``config``'s KernelPolicy) on a kernelspec's settings."""
    KernelPolicy.load(config).check(settings, kernel_name)
