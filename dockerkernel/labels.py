"""The labels that mark what dockerkernel made on an engine, and who it belongs to.

Containers, home volumes, networks and swarm services carry them, so that any
process of any user can tell a kernel, its owner and the GPUs it holds from
the engine's lists alone.
"""

from __future__ import annotations

from dataclasses import dataclass

LABEL_PREFIX = "org.dockerkernel"
LABEL_KERNEL_ID = f"{LABEL_PREFIX}.kernel-id"
LABEL_KERNELSPEC = f"{LABEL_PREFIX}.kernelspec"
LABEL_OWNER_HOST = f"{LABEL_PREFIX}.owner-host"
LABEL_OWNER_PID = f"{LABEL_PREFIX}.owner-pid"
LABEL_OWNER_STARTED = f"{LABEL_PREFIX}.owner-started"
LABEL_OWNER_UID = f"{LABEL_PREFIX}.owner-uid"  # the user the container belongs to
LABEL_PROBE = f"{LABEL_PREFIX}.probe"  # a throwaway container that checks an image
LABEL_HOME_OF = f"{LABEL_PREFIX}.home-of"  # on a home volume: the uid it belongs to
LABEL_NETWORK_OF = f"{LABEL_PREFIX}.network-of"  # on an isolated network: the uid it belongs to
LABEL_GPUS = f"{LABEL_PREFIX}.gpus"  # the GPU ids a kernel holds, or 'all'
LABEL_GPU_LOCK = f"{LABEL_PREFIX}.gpu-lock"  # on the container that locks GPU allocation
LABEL_POOL = f"{LABEL_PREFIX}.pool"  # on a kernel started for the warm pool (also once a start took it)
POOL_NAME_PREFIX = "dockerkernel-pool-"  # a pooled kernel's name until a start takes it


@dataclass(frozen=True)
class Owner:
    """The process that a kernel container belongs to: a Jupyter server or a launcher."""

    host: str
    pid: int
    started: str
    uid: int

    def labels(self) -> dict[str, str]:
        return {
            LABEL_OWNER_HOST: self.host,
            LABEL_OWNER_PID: str(self.pid),
            LABEL_OWNER_STARTED: self.started,
            LABEL_OWNER_UID: str(self.uid),
        }


def home_volume_name(uid: int, kernel_name: str) -> str:
    """The Docker volume that holds a user's home for one kernelspec."""
    return f"dockerkernel-home-{uid}-{kernel_name}"


def isolated_network_name(uid: int) -> str:
    """The network that a user's kernels share with no one else's containers."""
    return f"dockerkernel-u{uid}"
