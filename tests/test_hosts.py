"""The Docker host a kernelspec names, and where its folders are there (pure)."""

from __future__ import annotations

import pytest

from dockerkernel.hosts import DockerHost, check_url, map_path


@pytest.mark.parametrize(
    ("url", "scheme", "remote", "hostname"),
    [
        ("", "", False, ""),
        ("unix:///run/user/1000/podman/podman.sock", "unix", False, ""),
        ("ssh://alice@gpu-3", "ssh", True, "gpu-3"),
        ("ssh://alice@gpu-3:2222", "ssh", True, "gpu-3"),
        ("tcp://10.0.0.7:2376", "tcp", True, "10.0.0.7"),
    ],
)
def test_hosts_are_told_apart(url: str, scheme: str, remote: bool, hostname: str) -> None:
    assert check_url(url) == url
    host = DockerHost(url)
    assert (host.scheme, host.remote, host.hostname) == (scheme, remote, hostname)


def test_a_trailing_slash_is_dropped() -> None:
    assert check_url(" ssh://alice@gpu-3/ ") == "ssh://alice@gpu-3"


def test_the_longest_local_prefix_maps_a_path() -> None:
    path_map = {"/home": "/nfs/home", "/home/alice/scratch": "/scratch/alice", "/data/": "/mnt/data"}
    assert map_path("/home/alice/project", path_map) == "/nfs/home/alice/project"
    assert map_path("/home/alice/scratch/run1", path_map) == "/scratch/alice/run1"
    assert map_path("/home/alice/scratch", path_map) == "/scratch/alice"
    assert map_path("/data", path_map) == "/mnt/data"
    # A prefix is a whole folder name, and a path outside every prefix is the host's as it is.
    assert map_path("/homework/x", path_map) == "/homework/x"
    assert map_path("/srv/x/../y", path_map) == "/srv/y"
    assert map_path("/srv/y", {}) == "/srv/y"
