"""GPU checks, for a machine whose Docker daemon has the NVIDIA runtime. Not collected by default.

    bash tests/run.sh tests/gpu

They fail, not skip, without the runtime. The kernel image must have a CUDA
build of PyTorch: by default the dl-pytorch preset's image, pulled on first
use (several GB); set DOCKERKERNEL_GPU_IMAGE to use another.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import docker
import pytest

from dockerkernel import docker_ops, kernelspec

pytestmark = pytest.mark.docker

GPU_IMAGE = os.environ.get("DOCKERKERNEL_GPU_IMAGE", kernelspec.presets()["dl-pytorch"].config["image"])


@pytest.fixture
def gpu_kernel(dockerkernel: Any, docker_client: docker.DockerClient) -> Any:
    def install(gpus: str) -> str:
        if not docker_ops.has_nvidia_runtime(docker_client):
            pytest.fail(
                "the GPU checks need a Docker daemon with the NVIDIA runtime (NVIDIA Container Toolkit)"
            )
        name = f"gpu-{gpus}"
        result = dockerkernel(
            "install", "--image", GPU_IMAGE, "--name", name, "--gpus", gpus, "--shm-size", "2g"
        )
        assert result.code == 0, result.err
        return name

    return install


@pytest.mark.parametrize("gpus", ["all", "auto"])
async def test_torch_sees_the_gpus_and_multiplies_on_them(
    gpus: str, gpu_kernel: Any, start_kernel: Any, notebook_dir: Path, docker_client: docker.DockerClient
) -> None:
    kernel = await start_kernel(gpu_kernel(gpus), cwd=str(notebook_dir))
    requests = docker_client.api.inspect_container(kernel.container_id)["HostConfig"]["DeviceRequests"]
    assert [r["Count"] for r in requests] == [-1]
    reply = await kernel.execute(
        "import torch\n"
        "print(torch.cuda.is_available(), torch.cuda.device_count())\n"
        "a = torch.randn(1024, 1024, device='cuda'); b = torch.randn(1024, 1024, device='cuda')\n"
        "c = a @ b\n"
        "print(c.device.type, torch.allclose(c.cpu(), a.cpu() @ b.cpu(), atol=1e-2))"
    )
    assert reply.status == "ok", reply
    available, rest = reply.stdout.splitlines()
    assert available.split()[0] == "True" and int(available.split()[1]) >= 1
    assert rest == "cuda True"
    # 'auto' found the GPUs: no CPU notice in the notebook.
    assert not any(m["msg_type"] == "stream" and m["content"]["name"] == "stderr" for m in reply.messages)


def test_doctor_sees_the_gpus(dockerkernel: Any, gpu_kernel: Any) -> None:
    gpu_kernel("all")
    lines = dockerkernel("doctor").out.splitlines()
    assert "ok    NVIDIA runtime: present" in lines
    assert any(line.startswith("ok    GPUs: ") for line in lines), lines
