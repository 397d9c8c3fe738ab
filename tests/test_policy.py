"""The administrator's policy over kernelspecs (no engine needed: the provisioner and the launcher call
the same check at every start; test_bad_inputs.py shows its sentences in a real server)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from dockerkernel import errors
from dockerkernel.errors import DockerKernelError
from dockerkernel.policy import KernelPolicy
from dockerkernel.settings import DockerSettings


def refusal(asks: str, rule: str) -> str:
    return errors.POLICY_REFUSED.format(kernel="k", asks=asks, rule=rule)


def check(policy: KernelPolicy, **settings: Any) -> str:
    """The policy's sentence for a kernelspec of ``settings``, or '' where it is allowed."""
    try:
        policy.check(DockerSettings(image="img", **settings), "k")
    except DockerKernelError as e:
        return str(e)
    return ""


ANY_BUT_SYSTEM = "KernelPolicy.allowed_volume_roots: any folder but the system's own"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, ""),
        ({"volumes": ["/home:/data:ro", "/usr/share:/share"]}, ""),
        ({"volumes": ["/:/host"]}, refusal("the volume /", ANY_BUT_SYSTEM)),
        ({"volumes": ["/etc:/e"]}, refusal("the volume /etc", ANY_BUT_SYSTEM)),
        ({"volumes": ["/var/run/docker.sock:/s"]},
         refusal("the volume /var/run/docker.sock", ANY_BUT_SYSTEM)),
        ({"volumes": ["/dev/null:/n"]}, refusal("the volume /dev/null", ANY_BUT_SYSTEM)),
        ({"network": "host"}, refusal("the host's network", "KernelPolicy.allow_host_network")),
        ({"container_options": {"privileged": True}},
         refusal("container_options", "KernelPolicy.allow_container_options")),
        ({"gpus": "8"}, ""),
    ],
)  # fmt: skip
def test_the_default_policy(settings: dict[str, Any], expected: str) -> None:
    assert check(KernelPolicy(), **settings) == expected


def test_uid_0_is_refused_for_a_user_who_is_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check(KernelPolicy(), user="0:0") == (
        "" if os.getuid() == 0 else refusal("to run as uid 0", "KernelPolicy.allow_root")
    )
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    assert check(KernelPolicy(), user="0:0") == refusal("to run as uid 0", "KernelPolicy.allow_root")
    assert check(KernelPolicy(allow_root=True), user="0") == ""
    assert check(KernelPolicy(), user="1000") == ""


def test_volumes_only_under_the_allowed_roots_and_no_link_leads_around_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "set").mkdir(parents=True)
    (data / "escape").symlink_to("/etc")
    policy = KernelPolicy(allowed_volume_roots=[str(data)])
    rule = f"KernelPolicy.allowed_volume_roots: {data}"
    assert check(policy, volumes=[f"{data}/set:/d"]) == ""
    assert check(policy, volumes=["/home:/h"]) == refusal("the volume /home", rule)
    assert check(policy, volumes=[f"{data}/escape:/e"]) == refusal(f"the volume {data}/escape", rule)


GPU_CASES = [("1", True), ("2", True), ("3", False), ("all", False), ("auto", False),
             ("device=0,1", True), ("device=0,1,2", False)]  # fmt: skip


@pytest.mark.parametrize(("gpus", "allowed"), GPU_CASES)
def test_at_most_max_gpus(gpus: str, allowed: bool) -> None:
    sentence = check(KernelPolicy(max_gpus=2), gpus=gpus)
    assert sentence == ("" if allowed else refusal(f"gpus {gpus}", "KernelPolicy.max_gpus = 2"))


def test_the_system_file_then_the_servers_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"KernelPolicy": {"allow_host_network": True, "max_gpus": 1}}))
    monkeypatch.setenv("DOCKERKERNEL_POLICY_FILE", str(path))
    from_file = KernelPolicy.load()
    assert (from_file.allow_host_network, from_file.max_gpus) == (True, 1)
    server = Config({"KernelPolicy": {"max_gpus": 4}})
    both = KernelPolicy.load(server)
    assert (both.allow_host_network, both.max_gpus) == (True, 4)


def test_a_policy_file_that_does_not_parse_refuses_every_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "policy.json"
    path.write_text("{not json")
    monkeypatch.setenv("DOCKERKERNEL_POLICY_FILE", str(path))
    with pytest.raises(DockerKernelError) as info:
        KernelPolicy.load()
    assert str(info.value).startswith(f"The kernel policy file {path} cannot be read (")


def test_a_kernelspec_cannot_set_the_policy() -> None:
    assert "allow_host_network" not in DockerSettings.setting_names()


def test_install_refuses_what_the_policy_does_not_allow(dockerkernel: Any) -> None:
    """Told at install, as at every start (test_bad_inputs.py shows the start in a server)."""
    result = dockerkernel("install", "--image", "a/b", "--name", "k", "--network", "host", "--no-pull")
    sentence = refusal("the host's network", "KernelPolicy.allow_host_network")
    assert (result.code, result.err.splitlines()[-1]) == (1, f"dockerkernel: {sentence}")
