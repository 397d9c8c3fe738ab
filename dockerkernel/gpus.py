"""A daemon's GPUs, who holds them, and which ones a new kernel gets: pure data and choices.

engine.gpus asks the daemon (a throwaway container with every GPU, running
nvidia-smi) and lists the kernels that hold GPUs; plan.place_gpus turns the
choice made here into the container's device requests. Standard library only,
so that the parsing can be checked wherever nvidia-smi runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# What the probe container runs; the NVIDIA hook puts nvidia-smi into GPU containers.
NVIDIA_SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,uuid,name,memory.total",
    "--format=csv,noheader,nounits",
]

# How a daemon gives GPUs to containers.
NVIDIA = "nvidia"  # Docker's NVIDIA device driver: the NVIDIA runtime or its hook on dockerd's PATH
CDI = "cdi"  # the Container Device Interface: Docker 25+ with CDI on, or Podman
CDI_KIND = "nvidia.com/gpu"


@dataclass(frozen=True)
class Gpu:
    """One GPU of a daemon's host, as nvidia-smi (or the gpu_inventory setting) names it."""

    id: str  # the index, which Docker's device requests and NVIDIA_VISIBLE_DEVICES take
    uuid: str = ""
    name: str = ""
    memory_mib: int | None = None

    def describe(self) -> str:
        """E.g. 'GPU 0 (NVIDIA H200, 140 GiB)'."""
        details = [d for d in (self.name, _gib(self.memory_mib)) if d]
        return f"GPU {self.id}" + (f" ({', '.join(details)})" if details else "")


def _gib(mib: int | None) -> str:
    return f"{mib / 1024:.0f} GiB" if mib else ""


@dataclass(frozen=True)
class GpuSupport:
    """Whether, and how, a daemon gives GPUs to containers, and its GPUs when they could be listed."""

    method: str  # NVIDIA, CDI, or '' when it gives none
    gpus: tuple[Gpu, ...] = ()
    detail: str = ""  # why there are none, or why they could not be listed

    @property
    def available(self) -> bool:
        return bool(self.method)

    def with_inventory(self, ids: Sequence[str]) -> GpuSupport:
        """The support, with the gpu_inventory setting standing in where nvidia-smi listed nothing."""
        if self.gpus or not ids:
            return self
        return GpuSupport(self.method, tuple(Gpu(i) for i in ids), self.detail)


@dataclass(frozen=True)
class Holding:
    """The GPUs that one running kernel holds, and whose kernel it is."""

    ids: tuple[str, ...]
    user: str
    kernelspec: str

    def describe(self) -> str:
        return f"{self.user} ({self.kernelspec})"


def parse_nvidia_smi(output: str) -> list[Gpu]:
    """The GPUs in the output of NVIDIA_SMI_QUERY: 'index, uuid, name, memory' lines.

    A line that is not four fields with a numeric index (a warning, say) is skipped.
    """
    gpus = []
    for line in output.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4 or not fields[0].isdigit():
            continue
        # A name with a comma in it: everything between the uuid and the memory.
        index, uuid, memory = fields[0], fields[1], fields[-1]
        name = ", ".join(fields[2:-1])
        gpus.append(Gpu(index, uuid, name, int(memory) if memory.isdigit() else None))
    return gpus


def held_ids(value: str, inventory: Sequence[Gpu]) -> tuple[str, ...]:
    """The GPU ids in a kernel's gpus label: 'all' (every GPU) or ids, by index or UUID."""
    if value == "all":
        return tuple(g.id for g in inventory)
    by_uuid = {g.uuid.lower(): g.id for g in inventory if g.uuid}
    return tuple(by_uuid.get(i.lower(), i) for i in value.split(",") if i)


def loads(inventory: Sequence[Gpu], holdings: Iterable[Holding]) -> dict[str, int]:
    """How many running kernels hold each GPU."""
    count = {g.id: 0 for g in inventory}
    for holding in holdings:
        for i in holding.ids:
            if i in count:
                count[i] += 1
    return count


def choose(inventory: Sequence[Gpu], holdings: Sequence[Holding], count: int) -> tuple[list[str], bool]:
    """``count`` GPUs for a new kernel, least held first; and whether it must share any.

    Free GPUs come first, in index order; when there are too few, the ones
    that the fewest kernels hold. The caller checks that the host has
    ``count`` GPUs at all.
    """
    load = loads(inventory, holdings)
    ordered = sorted(inventory, key=lambda g: (load[g.id], index_key(g.id)))
    chosen = [g.id for g in ordered[:count]]
    return chosen, any(load[i] for i in chosen)


def index_key(gpu_id: str) -> tuple[int, str]:
    """Sorts GPU ids by number, ids that are not numbers last."""
    return (int(gpu_id), "") if gpu_id.isdigit() else (1 << 30, gpu_id)


def holders(ids: Iterable[str], holdings: Sequence[Holding]) -> str:
    """Who holds each of ``ids``: 'GPU 0: alice (dl-pytorch); GPU 1: free'."""
    parts = []
    for i in ids:
        who = [h.describe() for h in holdings if i in h.ids]
        parts.append(f"GPU {i}: {', '.join(who) if who else 'free'}")
    return "; ".join(parts)


def describe(ids: Sequence[str], inventory: Sequence[Gpu]) -> str:
    """'GPU 2 (NVIDIA H200, 140 GiB)', or several joined, for the notebook's notice."""
    by_id = {g.id: g for g in inventory}
    return ", ".join(by_id.get(i, Gpu(i)).describe() for i in ids)
