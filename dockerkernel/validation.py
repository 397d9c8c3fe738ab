"""Checking a kernelspec's settings: their names and values, and what a start or a backend needs of them.

settings.py declares the settings (traits, with their help); this module reads
a kernelspec's into them, with an error for every key that is wrong, and
checks, before anything is asked of Docker, what would make a start fail later
and less clearly.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from traitlets import TraitError

from . import errors, swarm
from .errors import DockerKernelError
from .settings import DockerSettings, parse_volume

S = TypeVar("S", bound=DockerSettings)


def check_setting_names(config: dict[str, Any], kernel_name: str) -> None:
    """Reject keys that are not settings: jupyter_client would otherwise drop them silently."""
    valid = DockerSettings.setting_names()
    for key in config:
        if key not in valid:
            raise DockerKernelError(
                errors.UNKNOWN_SETTING.format(key=key, kernel=kernel_name, valid=", ".join(valid))
            )


def make_settings(cls: type[S], config: dict[str, Any], kernel_name: str, **kwargs: Any) -> S:
    """Instantiate ``cls`` with a kernelspec's settings as keyword arguments, validated."""
    check_setting_names(config, kernel_name)
    try:
        return cls(**config, **kwargs)
    except TraitError as e:
        raise DockerKernelError(errors.INVALID_SETTING.format(kernel=kernel_name, reason=e)) from e


def check_launchable(settings: DockerSettings, kernel_name: str, cwd: str) -> None:
    """Check, before Docker is asked, what would make a kernel start fail in a less clear way."""
    if not settings.image:
        raise DockerKernelError(errors.NO_IMAGE.format(kernel=kernel_name))
    check_swarm(settings, kernel_name, installing=False)
    if not os.path.isdir(cwd):
        raise DockerKernelError(errors.NOTEBOOK_DIR_MISSING.format(path=cwd))
    if settings.mount not in ("auto", "notebook") and not _reachable(settings.mount):
        raise DockerKernelError(errors.MOUNT_MISSING.format(path=settings.mount, kernel=kernel_name))
    if settings.host().scheme == "tcp" and not all(settings.host().tls_files):
        raise DockerKernelError(errors.TLS_FILES_MISSING.format(host=settings.docker_host))
    if settings.host().remote:
        return  # the volumes' folders are the remote host's: Docker refuses one that is missing there
    for volume in settings.volumes:
        host = parse_volume(volume)[0]
        # Docker would create a missing host path, as an empty directory owned by root.
        if not _reachable(host):
            raise DockerKernelError(errors.VOLUME_HOST_MISSING.format(path=host, volume=volume))


def check_warm_pool(settings: DockerSettings, kernel_name: str) -> None:
    """A warm pool only where it can work: no GPUs, this machine's engine, no swarm."""
    if not settings.warm_pool:
        return
    if settings.gpus != "none":
        raise DockerKernelError(
            errors.WARM_POOL_WITH_GPUS.format(kernel=kernel_name, gpus=settings.gpus, size=settings.warm_pool)
        )
    host = settings.host()
    if settings.backend == "swarm" or host.remote:
        where = "a swarm" if settings.backend == "swarm" else host.url
        raise DockerKernelError(
            errors.WARM_POOL_NOT_LOCAL.format(kernel=kernel_name, size=settings.warm_pool, where=where)
        )


def check_swarm(settings: DockerSettings, kernel_name: str, *, installing: bool = True) -> None:
    """A Swarm kernel only with settings that a Swarm service honours (see swarm.refusal)."""
    if settings.backend != "swarm":
        return
    refused = swarm.refusal(settings, installing=installing)
    if refused is not None:
        setting, instead = refused
        raise DockerKernelError(
            errors.SWARM_SETTING_REFUSED.format(
                kernel=kernel_name, setting=setting, value=repr(getattr(settings, setting)), instead=instead
            )
        )


def _reachable(path: str) -> bool:
    """Whether ``path`` exists; one that this user may not reach is an error of its own.

    The kernel runs as this user, so a folder it cannot reach is of no use to it,
    even where the Docker daemon, as root, could mount it.
    """
    try:
        os.stat(path)
        return True
    except PermissionError:
        raise DockerKernelError(errors.PATH_NOT_YOURS.format(path=path)) from None
    except OSError:
        return False
