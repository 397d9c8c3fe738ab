"""What kind of engine a daemon is: Docker or Podman, rootless or not, with SELinux, on this machine."""

from __future__ import annotations

import platform
import sys
from typing import Any

import docker

from ..plan import Engine
from .connect import api_timeout, daemon_errors, state_of


def engine_of(client: docker.DockerClient) -> Engine:
    """Whether the daemon is Podman, and whether it runs rootless; asked once per daemon."""
    state = state_of(client)
    if state.kind is None:
        with daemon_errors():
            components = client.version().get("Components") or []
            podman_versions = [
                c.get("Details", {}).get("APIVersion", "4.0.0")
                for c in components
                if "podman" in str(c.get("Name", "")).lower()
            ]
            podman = bool(podman_versions)
            if podman:
                # Podman's Docker-compatible info does not say; its own API does.
                url = f"{client.api.base_url}/v{podman_versions[0]}/libpod/info"
                response = client.api.get(url, timeout=api_timeout())
                response.raise_for_status()
                rootless = bool(response.json().get("host", {}).get("security", {}).get("rootless"))
            info = client.info()
            security = info.get("SecurityOptions") or []
            if not podman:
                rootless = "name=rootless" in security
        state.kind = Engine(
            podman=podman,
            rootless=rootless,
            selinux="name=selinux" in security,
            containerd_store=any(
                "io.containerd.snapshotter" in str(value) for _, value in info.get("DriverStatus") or []
            ),
            local=shares_this_kernel(info),
        )
    return state.kind


def shares_this_kernel(info: dict[str, Any]) -> bool:
    """Whether an engine (its ``docker info``) runs on this machine's kernel, so that a folder bind-mounted
    from here is the same folder for its containers, sockets included.

    Docker Desktop and Podman machines run their engine in a VM: another kernel,
    whose bind mounts of this machine's files are shares that carry no sockets.
    """
    if sys.platform != "linux" or str(info.get("OSType", "linux")) != "linux":
        return False
    if "docker desktop" in str(info.get("OperatingSystem", "")).lower():
        return False
    return str(info.get("KernelVersion", "")) == platform.release()
