"""Writing, finding and removing dockerkernel kernelspecs, through jupyter_client's machinery."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel, _is_valid_kernel_name

from . import errors
from .errors import DockerKernelError
from .hosts import DockerHost
from .labels import home_volume_name
from .settings import DockerSettings
from .validation import make_settings

PROVISIONER_NAME = "docker-provisioner"
PRESETS_PACKAGE = "dockerkernel.presets"


@dataclass(frozen=True)
class InstalledKernel:
    """One dockerkernel kernelspec, as `dockerkernel list` shows it."""

    name: str
    display_name: str
    image: str
    gpus: str
    path: str
    home: str  # the Docker volume that keeps this user's home for it; '' when it has none
    docker_host: str = ""  # its engine (see hosts.py), or '' for DOCKER_HOST's
    tls_ca: str = ""  # and, for a tcp:// one, the TLS files that reach it
    tls_cert: str = ""
    tls_key: str = ""
    pinned: str = ""  # the digest or id that the kernel starts, where it is pinned
    discovered: bool = False  # written by `dockerkernel scan --install` (discovery.sync), not by a user

    @property
    def host(self) -> DockerHost:
        return DockerHost(self.docker_host, self.tls_ca, self.tls_cert, self.tls_key)


@dataclass(frozen=True)
class Preset:
    """A ready-made kernelspec from the kernelspecs/ folder."""

    name: str
    display_name: str
    description: str
    config: dict[str, Any]
    env: dict[str, str]
    add_ipykernel: bool = False  # the image lacks ipykernel: install builds a layer with it


def kernel_json(
    *,
    display_name: str,
    config: Mapping[str, Any],
    env: Mapping[str, str],
    metadata: Mapping[str, Any] | None = None,
    curve: bool = False,
) -> dict[str, Any]:
    """The kernel.json of a Docker kernel.

    jupyter_client starts the kernel through ``metadata.kernel_provisioner``;
    clients that ignore provisioners run ``argv``, the host-side launcher,
    which starts the same container (see launcher.py). ``argv`` names this
    Python, the one dockerkernel is installed in. ``metadata`` (what install
    found out about the image) goes under ``metadata.dockerkernel``.
    """
    spec: dict[str, Any] = {
        "argv": [
            sys.executable,
            "-m",
            "dockerkernel",
            "launch",
            "--spec-dir",
            "{resource_dir}",
            "-f",
            "{connection_file}",
        ],
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "env": dict(env),
        "metadata": {
            "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": dict(config)},
            # JupyterLab shows its debugger for kernelspecs that say so: where the probe found it works.
            "debugger": bool((metadata or {}).get("probe", {}).get("debugger")),
        },
    }
    if metadata:
        spec["metadata"]["dockerkernel"] = dict(metadata)
    if curve:
        # jupyter_client encrypts the channels when KernelManager.transport_encryption allows it.
        spec["metadata"]["supported_encryption"] = "curve"
    return spec


def presets() -> dict[str, Preset]:
    """The presets shipped with the package, by name."""
    found = {}
    for entry in resources.files(PRESETS_PACKAGE).iterdir():
        spec_file = entry / "kernel.json"
        if not spec_file.is_file():
            continue
        data = json.loads(spec_file.read_text())
        found[entry.name] = Preset(
            name=entry.name,
            display_name=data["display_name"],
            description=data["metadata"]["dockerkernel"]["description"],
            config=data["metadata"]["kernel_provisioner"]["config"],
            env=data.get("env", {}),
            add_ipykernel=data["metadata"]["dockerkernel"].get("add_ipykernel", False),
        )
    return dict(sorted(found.items()))


def get_preset(name: str) -> Preset:
    try:
        return presets()[name]
    except KeyError:
        raise DockerKernelError(
            errors.UNKNOWN_PRESET.format(name=name, presets=", ".join(presets()))
        ) from None


def install(
    *,
    name: str,
    display_name: str,
    config: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    curve: bool = False,
    user: bool = False,
    prefix: str | None = None,
    replace: bool = False,
    manager: KernelSpecManager | None = None,
) -> str:
    """Validate the settings and install a kernelspec; returns the directory it went to.

    ``user`` and ``prefix`` mean what they mean for `python -m ipykernel install`.
    """
    if not _is_valid_kernel_name(name):
        raise DockerKernelError(errors.INVALID_KERNEL_NAME.format(name=name))
    make_settings(DockerSettings, dict(config), name)
    ksm = manager or KernelSpecManager()
    # install_kernel_spec() replaces an existing kernelspec silently; refuse instead.
    destination = ksm._get_destination_dir(name, user=user, prefix=prefix)
    if os.path.exists(destination) and not replace:
        raise DockerKernelError(errors.KERNELSPEC_EXISTS.format(name=name, path=destination))
    spec = kernel_json(
        display_name=display_name, config=config, env=env or {}, metadata=metadata, curve=curve
    )
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "kernel.json"), "w") as f:
            json.dump(spec, f, indent=1)
        try:
            return str(ksm.install_kernel_spec(tmp, kernel_name=name, user=user, prefix=prefix))
        except PermissionError as e:
            raise DockerKernelError(errors.PERMISSION_DENIED.format(path=e.filename or destination)) from e


def installed(manager: KernelSpecManager | None = None) -> list[InstalledKernel]:
    """The dockerkernel kernelspecs that Jupyter can see, by name."""
    ksm = manager or KernelSpecManager()
    rows = []
    for name, entry in sorted(ksm.get_all_specs().items()):
        spec = entry["spec"]
        provisioner = spec.get("metadata", {}).get("kernel_provisioner", {})
        if provisioner.get("provisioner_name") != PROVISIONER_NAME:
            continue
        config = provisioner.get("config", {})
        has_home = config.get("home", "volume") == "volume" and config.get("user", "host") != "image"
        rows.append(
            InstalledKernel(
                name=name,
                display_name=spec.get("display_name", name),
                image=config.get("image", ""),
                gpus=config.get("gpus", "none"),
                path=entry["resource_dir"],
                home=home_volume_name(os.getuid(), name) if has_home else "",
                docker_host=config.get("docker_host", ""),
                tls_ca=config.get("tls_ca", ""),
                tls_cert=config.get("tls_cert", ""),
                tls_key=config.get("tls_key", ""),
                pinned=config.get("pinned_image", ""),
                discovered="discovered" in spec.get("metadata", {}).get("dockerkernel", {}),
            )
        )
    return rows


def docker_hosts(kernels: list[InstalledKernel]) -> list[DockerHost]:
    """The engines that ``kernels`` run on: DOCKER_HOST's first, then each kernelspec's own."""
    default = DockerHost()
    return [default, *sorted({k.host for k in kernels} - {default}, key=lambda h: h.url)]


def config_of(name: str, manager: KernelSpecManager | None = None) -> dict[str, Any]:
    """The dockerkernel settings of an installed kernelspec."""
    ksm = manager or KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(name)
    except NoSuchKernel:
        raise DockerKernelError(errors.KERNELSPEC_NOT_FOUND.format(name=name)) from None
    return dict(spec.metadata.get("kernel_provisioner", {}).get("config", {}))


def set_config(name: str, manager: KernelSpecManager | None = None, **changes: Any) -> str:
    """Change settings of an installed dockerkernel kernelspec in place ('' removes one); its kernel.json."""
    ksm = manager or KernelSpecManager()
    found = {k.name: k for k in installed(ksm)}
    if name not in found:
        raise DockerKernelError(errors.KERNELSPEC_NOT_FOUND.format(name=name))
    path = os.path.join(found[name].path, "kernel.json")
    with open(path) as current:
        spec = json.load(current)
    config = spec["metadata"]["kernel_provisioner"].setdefault("config", {})
    for key, value in changes.items():
        if value == "":
            config.pop(key, None)
        else:
            config[key] = value
    try:
        with tempfile.NamedTemporaryFile("w", dir=found[name].path, delete=False, suffix=".json") as new:
            json.dump(spec, new, indent=1)
        os.chmod(new.name, os.stat(path).st_mode & 0o777)  # readable by whoever could read it
        os.replace(new.name, path)
    except PermissionError as e:
        raise DockerKernelError(errors.PERMISSION_DENIED.format(path=e.filename or path)) from e
    return path


def uninstall(name: str, manager: KernelSpecManager | None = None) -> str:
    """Remove a dockerkernel kernelspec; returns the directory that was removed."""
    ksm = manager or KernelSpecManager()
    if name not in {k.name for k in installed(ksm)}:
        raise DockerKernelError(errors.KERNELSPEC_NOT_FOUND.format(name=name))
    try:
        return str(ksm.remove_kernel_spec(name))
    except NoSuchKernel:
        raise DockerKernelError(errors.KERNELSPEC_NOT_FOUND.format(name=name)) from None
    except PermissionError as e:
        raise DockerKernelError(errors.PERMISSION_DENIED.format(path=e.filename)) from e
