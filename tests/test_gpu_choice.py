"""Which GPUs a kernel gets, and what it is told: the allocation's pure parts, without Docker."""

from __future__ import annotations

from typing import Any

import pytest
from test_plan import plan

from dockerkernel import errors, gpus
from dockerkernel.engine.containers import create_args
from dockerkernel.errors import DockerKernelError
from dockerkernel.gpus import CDI, NVIDIA, Gpu, GpuSupport, Holding
from dockerkernel.labels import LABEL_GPUS
from dockerkernel.plan import GPUS_GIVEN, GPUS_NOT_LISTED, GPUS_SHARED, ContainerPlan, place_gpus
from dockerkernel.settings import DockerSettings

# NVIDIA_SMI_QUERY's output: the first GPU line as an H200 host's nvidia-smi printed it, then a
# second GPU, after a driver warning.
NVIDIA_SMI = """\
WARNING: infoROM is corrupted at gpu 0000:04:00.0
0, GPU-49830831-4160-2d67-8aba-887d6596d395, NVIDIA H200, 143771
1, GPU-1c8f4c2d-0a4b-4a1f-9b68-7a2d3e4f5a61, NVIDIA A100-SXM4-80GB, 81920
"""
FOUR = GpuSupport(NVIDIA, tuple(Gpu(str(i), f"GPU-{i}", "H200", 143771) for i in range(4)))


def held(ids: str, user: str = "alice", kernelspec: str = "dl") -> Holding:
    return Holding(tuple(ids.split(",")), user, kernelspec)


def placed(
    gpus_setting: str, holdings: list[Holding], support: GpuSupport = FOUR, **settings: Any
) -> ContainerPlan:
    return place_gpus(plan(DockerSettings(image="img", gpus=gpus_setting, **settings)), support, holdings)


def visible(p: ContainerPlan) -> list[str]:
    return [i for r in create_args(p)["device_requests"] for i in r["DeviceIDs"]]


def test_nvidia_smi_output_becomes_the_inventory() -> None:
    assert gpus.parse_nvidia_smi(NVIDIA_SMI) == [
        Gpu("0", "GPU-49830831-4160-2d67-8aba-887d6596d395", "NVIDIA H200", 143771),
        Gpu("1", "GPU-1c8f4c2d-0a4b-4a1f-9b68-7a2d3e4f5a61", "NVIDIA A100-SXM4-80GB", 81920),
    ]
    assert gpus.parse_nvidia_smi("0, GPU-x, Some, GPU, [N/A]\n") == [Gpu("0", "GPU-x", "Some, GPU", None)]
    assert gpus.parse_nvidia_smi("No devices were found\n") == []


def test_a_count_gets_free_gpus_in_index_order_and_a_label_for_the_next_start() -> None:
    p = placed("2", [held("0"), held("2")])
    assert visible(p) == ["1", "3"]
    assert create_args(p)["labels"][LABEL_GPUS] == "1,3"
    assert (p.notice, p.notice_stream) == (
        GPUS_GIVEN.format(gpus="GPU 1 (H200, 140 GiB), GPU 3 (H200, 140 GiB)"),
        "stdout",
    )


def test_when_too_few_are_free_the_least_held_are_shared_with_a_notice() -> None:
    holdings = [
        held("0,1,2,3"),
        held("0", "bob", "torch"),
        held("1", "carol", "keras"),
        held("3", "dan", "tf"),
    ]
    p = placed("1", holdings)
    assert visible(p) == ["2"]
    assert p.notice_stream == "stderr"
    assert p.notice == GPUS_SHARED.format(
        gpus="GPU 2 (H200, 140 GiB)", free=0, total=4, holders="GPU 2: alice (dl)"
    )


def test_when_too_few_are_free_refuse_names_who_holds_each_gpu() -> None:
    holdings = [held("0,1"), held("2", "bob", "torch"), held("3", "carol", "keras")]
    with pytest.raises(DockerKernelError) as info:
        placed("2", holdings, when_gpus_busy="refuse")
    assert str(info.value) == errors.GPUS_BUSY.format(
        count=2,
        free=0,
        total=4,
        holders="GPU 0: alice (dl); GPU 1: alice (dl); GPU 2: bob (torch); GPU 3: carol (keras)",
    )
    # Enough free: refuse changes nothing.
    assert visible(placed("1", [held("0")], when_gpus_busy="refuse")) == ["1"]


def test_more_gpus_than_the_host_has_is_an_error_and_no_gpus_at_all_too() -> None:
    with pytest.raises(DockerKernelError) as info:
        placed("5", [])
    assert str(info.value) == errors.GPUS_MORE_THAN_HOST.format(count=5, total=4)
    for setting in ("1", "all", "device=0"):
        with pytest.raises(DockerKernelError) as info:
            placed(setting, [], GpuSupport("", (), "refused"))
        assert str(info.value) == errors.GPUS_UNAVAILABLE.format(gpus=setting)


def test_all_and_device_ids_keep_their_meaning_whoever_holds_them() -> None:
    every = placed("all", [held("0")])
    assert [r["Count"] for r in create_args(every)["device_requests"]] == [-1]
    assert create_args(every)["labels"][LABEL_GPUS] == "0,1,2,3"
    two = placed("device=3,gpu-1", [held("3")])
    assert visible(two) == ["3", "gpu-1"]
    assert create_args(two)["labels"][LABEL_GPUS] == "3,1"  # by index, for counting
    with pytest.raises(DockerKernelError) as info:
        placed("device=7", [])
    assert str(info.value) == errors.GPU_UNKNOWN_DEVICE.format(
        unknown="7", gpus="device=7", known="0,1,2,3", first="0"
    )


def test_without_an_inventory_docker_chooses_unless_the_setting_lists_the_gpus() -> None:
    unlisted = GpuSupport(NVIDIA, (), "nvidia-smi did not run")
    p = placed("2", [], unlisted)
    assert [r["Count"] for r in create_args(p)["device_requests"]] == [2]
    assert p.notice == GPUS_NOT_LISTED.format(reason="nvidia-smi did not run", count="2")
    listed = placed("2", [held("0")], unlisted, gpu_inventory=["0", "1", "2"])
    assert visible(listed) == ["1", "2"]


def test_cdi_names_each_device() -> None:
    cdi = GpuSupport(CDI, (Gpu("0"), Gpu("1")))
    p = placed("1", [held("0")], cdi)
    [request] = create_args(p)["device_requests"]
    assert (request["Driver"], request["DeviceIDs"]) == ("cdi", ["nvidia.com/gpu=1"])
    on_podman = place_gpus(plan(DockerSettings(image="img", gpus="all")), cdi, [], podman=True)
    assert create_args(on_podman)["devices"] == ["nvidia.com/gpu=all"]
    assert "device_requests" not in create_args(on_podman)


def test_labels_of_running_kernels_become_holdings() -> None:
    inventory = FOUR.gpus
    assert gpus.held_ids("all", inventory) == ("0", "1", "2", "3")
    assert gpus.held_ids("GPU-2,1", inventory) == ("2", "1")
    assert gpus.loads(inventory, [held("0,1"), held("1"), held("9")]) == {"0": 1, "1": 2, "2": 0, "3": 0}
