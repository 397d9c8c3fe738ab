"""GPU checks, for a machine whose Docker daemon gives containers GPUs. Not collected by default.

    bash tests/run.sh tests/gpu

They fail, not skip, where the daemon gives no GPUs (`dockerkernel doctor`
says why). The kernel image must have a CUDA build of PyTorch: by default the
dl-pytorch preset's image, pulled on first use (several GB); set
DOCKERKERNEL_GPU_IMAGE to use another. The allocation checks adapt to the
number of GPUs: with two or more, two kernels asking for one GPU each get
different ones; with one, the second shares it and says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import docker
import pytest

from dockerkernel import kernelspec
from dockerkernel.engine.gpus import gpu_support
from dockerkernel.engine.images import image_present
from dockerkernel.gpus import GpuSupport
from dockerkernel.labels import LABEL_GPUS
from dockerkernel.plan import GPUS_SHARED

pytestmark = pytest.mark.docker

GPU_IMAGE = os.environ.get("DOCKERKERNEL_GPU_IMAGE", kernelspec.presets()["dl-pytorch"].config["image"])
TORCH = (
    "import torch\n"
    "print(torch.cuda.is_available(), torch.cuda.device_count(), torch.cuda.get_device_name(0))\n"
    "a = torch.randn(1024, 1024, device='cuda'); b = torch.randn(1024, 1024, device='cuda')\n"
    "c = a @ b\n"
    "print(c.device.type, torch.allclose(c.cpu(), a.cpu() @ b.cpu(), atol=1e-2))"
)


@pytest.fixture
def support(dockerkernel: Any, docker_client: docker.DockerClient) -> GpuSupport:
    if not image_present(docker_client, GPU_IMAGE):
        assert dockerkernel("pull", GPU_IMAGE).code == 0
    found = gpu_support(docker_client, GPU_IMAGE, fresh=True)
    if not found.gpus:
        pytest.fail(f"the GPU checks need a Docker daemon that gives containers GPUs: {found.detail}")
    return found


@pytest.fixture
def gpu_kernel(dockerkernel: Any, support: GpuSupport) -> Any:
    def install(gpus: str) -> str:
        name = f"gpu-{gpus}"
        result = dockerkernel(
            "install", "--image", GPU_IMAGE, "--name", name, "--gpus", gpus, "--shm-size", "2g", "--no-pull"
        )
        assert result.code == 0, result.err
        return name

    return install


def stderr(reply: Any) -> str:
    return "".join(
        m["content"]["text"]
        for m in reply.messages
        if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
    )


@pytest.mark.parametrize("gpus", ["all", "auto"])
async def test_torch_sees_the_gpus_and_multiplies_on_them(
    gpus: str,
    gpu_kernel: Any,
    start_kernel: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    support: GpuSupport,
) -> None:
    kernel = await start_kernel(gpu_kernel(gpus), cwd=str(notebook_dir))
    requests = docker_client.api.inspect_container(kernel.container_id)["HostConfig"]["DeviceRequests"]
    assert [r["Count"] for r in requests] == [-1]
    reply = await kernel.execute(TORCH)
    assert reply.status == "ok", reply
    notice, available, rest = reply.stdout.splitlines()
    assert notice.startswith("dockerkernel: this kernel has GPU 0 (")
    assert available.split()[:2] == ["True", str(len(support.gpus))]
    assert rest == "cuda True"
    assert stderr(reply) == ""  # 'auto' found the GPUs: no CPU notice


async def test_kernels_asking_for_one_gpu_each_get_their_own(
    gpu_kernel: Any,
    start_kernel: Any,
    notebook_dir: Path,
    docker_client: docker.DockerClient,
    support: GpuSupport,
    dockerkernel: Any,
) -> None:
    name = gpu_kernel("1")
    first = await start_kernel(name, cwd=str(notebook_dir))
    second = await start_kernel(name, cwd=str(notebook_dir))
    held = [docker_client.containers.get(k.container_id).labels[LABEL_GPUS] for k in (first, second)]
    replies = [await k.execute(TORCH) for k in (first, second)]
    for reply in replies:
        assert reply.status == "ok", reply
        assert reply.stdout.splitlines()[1].split()[:2] == ["True", "1"]  # one GPU each
        assert reply.stdout.splitlines()[2] == "cuda True"
    if len(support.gpus) >= 2:
        assert held[0] != held[1]
        assert stderr(replies[1]) == ""
    else:
        assert held == ["0", "0"]
        assert stderr(replies[1]).startswith(GPUS_SHARED.split("{")[0])
    ps = dockerkernel("ps").out
    assert all(h in ps for h in held), ps


def test_doctor_lists_the_gpus(dockerkernel: Any, gpu_kernel: Any, support: GpuSupport) -> None:
    gpu_kernel("all")
    lines = dockerkernel("doctor").out.splitlines()
    assert any(line.startswith(f"ok    GPUs: {len(support.gpus)} through ") for line in lines), lines
    for gpu in support.gpus:
        assert f"ok    GPU {gpu.id}: {gpu.name}, {gpu.memory_mib} MiB, {gpu.uuid}; free" in lines, lines
