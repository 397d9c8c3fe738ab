"""Settings: validation with clear messages, kernelspec config versus server config."""

from __future__ import annotations

from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpec
from traitlets import TraitError
from traitlets.config import Config

from dockerkernel import errors
from dockerkernel.errors import DockerKernelError
from dockerkernel.provisioner import DockerProvisioner
from dockerkernel.settings import DockerSettings, parse_gpus, parse_volume
from dockerkernel.validation import check_launchable, make_settings


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("none", "none"),
        ("", "none"),
        ("0", "none"),
        ("all", "all"),
        ("ALL", "all"),
        ("auto", "auto"),
        ("2", "2"),
        ("device=0,1", "device=0,1"),
        ("0,1", "device=0,1"),
        ("device=GPU-3a4b", "device=gpu-3a4b"),
    ],
)
def test_gpus_take_the_forms_of_docker_run(given: str, normalised: str) -> None:
    assert parse_gpus(given) == normalised


@pytest.mark.parametrize("bad", ["some", "-1", "1.5", "device=", "all,0", "0;rm -rf"])
def test_invalid_gpus_name_the_accepted_forms(bad: str) -> None:
    with pytest.raises(ValueError, match="use 'none', 'all', 'auto', a count"):
        parse_gpus(bad)


def test_volumes() -> None:
    assert parse_volume("/data:/data") == ("/data", "/data", "rw")
    assert parse_volume("/data:/mnt/data:ro") == ("/data", "/mnt/data", "ro")
    for bad in ("data:/data", "/data", "/a:/b:rx", "/a:b"):
        with pytest.raises(ValueError, match="/host/path:/container/path"):
            parse_volume(bad)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("image", "Not An Image", "invalid image name"),
        ("image", "repo/img --privileged", "invalid image name"),
        ("kernel_cmd", ["python3", "-m", "ipykernel_launcher"], "must pass '{connection_file}'"),
        ("kernel_cmd", [], "kernel_cmd is empty"),
        ("user", "root", "use 'host', 'image' or numeric UID"),
        ("user", "1000:abc", "use 'host', 'image' or numeric UID"),
        ("network", "bad network", "invalid network"),
        ("shm_size", "lots", "use a size such as 512m"),
        ("cpus", -1.0, "use a positive number"),
        ("environment", {"BAD NAME": "x"}, "invalid environment variable name"),
        ("pull_policy", "sometimes", "pull_policy"),
        ("docker_host", "unix://", "use ssh://user@host, tcp://host:2376"),
        ("docker_host", "http://gpu-3", "use ssh://user@host"),
        ("docker_host", "ssh://gpu-3/var/run/docker.sock", "use ssh://user@host"),
        ("docker_host", "tcp://alice@gpu-3:2376", "a tcp:// address has no user"),
        ("docker_host", "tcp://gpu-3:docker", "use ssh://user@host"),
        ("path_map", {"home": "/nfs/home"}, "give two absolute paths"),
        ("when_gpus_busy", "wait", "when_gpus_busy"),
    ],
)
def test_invalid_settings_are_rejected(setting: str, value: Any, message: str) -> None:
    with pytest.raises(TraitError, match=message.replace("(", r"\(").replace("{", r"\{")):
        DockerSettings(**{setting: value})


def test_make_settings_names_the_kernelspec() -> None:
    with pytest.raises(DockerKernelError) as info:
        make_settings(DockerSettings, {"gpus": "lots"}, "my-kernel")
    assert str(info.value).startswith(
        "Invalid dockerkernel setting in kernelspec 'my-kernel': invalid gpus value"
    )


def test_unknown_setting_names_the_key() -> None:
    with pytest.raises(DockerKernelError) as info:
        make_settings(DockerSettings, {"image": "x", "gpu": "all"}, "my-kernel")
    assert str(info.value) == errors.UNKNOWN_SETTING.format(
        key="gpu", kernel="my-kernel", valid=", ".join(DockerSettings.setting_names())
    )


def _spec(**config: Any) -> KernelSpec:
    return KernelSpec(
        name="k",
        display_name="k",
        argv=[],
        metadata={"kernel_provisioner": {"provisioner_name": "docker-provisioner", "config": config}},
    )


def test_provisioner_rejects_unknown_kernelspec_keys() -> None:
    # jupyter_client passes the kernelspec's config as keyword arguments.
    with pytest.raises(DockerKernelError, match="Unknown dockerkernel setting 'imag'"):
        DockerProvisioner(kernel_id="1", kernel_spec=_spec(), imag="x")


def test_kernelspec_config_overrides_server_config_which_overrides_defaults() -> None:
    server = Config()
    server.DockerProvisioner.gpus = "all"
    server.DockerProvisioner.shm_size = "1g"
    provisioner = DockerProvisioner(
        kernel_id="1", kernel_spec=_spec(), config=server, image="img", gpus="none"
    )
    assert (provisioner.gpus, provisioner.shm_size, provisioner.image) == ("none", "1g", "img")
    assert provisioner.pull_policy == "missing"  # the default


def test_a_server_wide_warm_pool_leaves_gpu_kernels_cold_with_a_warning(caplog: Any) -> None:
    server = Config()
    server.DockerProvisioner.warm_pool = 2
    cpu = DockerProvisioner(kernel_id="1", kernel_spec=_spec(), config=server, image="img")
    assert not cpu._pool_off
    with caplog.at_level("WARNING"):
        gpu = DockerProvisioner(kernel_id="2", kernel_spec=_spec(), config=server, image="img", gpus="1")
    assert gpu._pool_off
    assert errors.WARM_POOL_WITH_GPUS.format(kernel="k", gpus="1", size=2) in caplog.text


def test_check_launchable(tmp_path: Any) -> None:
    with pytest.raises(DockerKernelError, match="names no Docker image"):
        check_launchable(DockerSettings(), "k", str(tmp_path))
    with pytest.raises(DockerKernelError, match="notebook directory '/no/such/dir' does not exist"):
        check_launchable(DockerSettings(image="img"), "k", "/no/such/dir")
    missing = tmp_path / "missing"
    with pytest.raises(DockerKernelError, match=f"host path '{missing}' of volume"):
        check_launchable(DockerSettings(image="img", volumes=[f"{missing}:/data"]), "k", str(tmp_path))
    check_launchable(DockerSettings(image="img", volumes=[f"{tmp_path}:/data:ro"]), "k", str(tmp_path))
