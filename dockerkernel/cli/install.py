"""`dockerkernel install`, `uninstall` and `pull`: kernelspecs made from images, and the images they need."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import replace
from typing import Any

from .. import discovery, errors, images, kernelspec, policy
from ..discovery import LABEL_IMAGE_KERNEL
from ..engine.connect import get_client
from ..engine.containers import remove_container, waiting_in_pool
from ..engine.homes import remove_home
from ..engine.images import image_present, needs_pull, pin_reference, pull_image
from ..errors import DockerKernelError
from ..hosts import DockerHost
from ..labels import (
    LABEL_KERNELSPEC,
    LABEL_OWNER_UID,
)
from ..launch import channels_for
from ..pulls import PullBars
from ..settings import DEFAULT_KERNEL_CMD, DockerSettings
from ..validation import check_swarm, check_warm_pool, make_settings
from .kernels import text_table


def _default_name(image: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", image.lower()).strip("-.") or "docker-kernel"


def install_settings(args: argparse.Namespace) -> tuple[str, str, dict[str, Any], dict[str, str]]:
    """The name, display name, settings and env that `install` asked for, preset first."""
    if args.preset:
        preset = kernelspec.get_preset(args.preset)
        name, display_name = preset.name, preset.display_name
        config, env = dict(preset.config), dict(preset.env)
    elif args.image:
        name, display_name, config, env = _default_name(args.image), "", {}, {}
    elif args.dockerfile:
        folder = os.path.basename(os.path.dirname(os.path.abspath(args.dockerfile)))
        name, display_name, config, env = _default_name(args.name or folder), "", {}, {}
        config["image"] = f"dockerkernel/{name}:latest"
    else:
        raise DockerKernelError(errors.INSTALL_NEEDS_IMAGE)

    for option, setting in (
        ("image", "image"),
        ("host", "docker_host"),
        ("backend", "backend"),
        ("gpu_resource", "gpu_resource"),
        ("tls_ca", "tls_ca"),
        ("tls_cert", "tls_cert"),
        ("tls_key", "tls_key"),
        ("gpus", "gpus"),
        ("when_gpus_busy", "when_gpus_busy"),
        ("run_as", "user"),
        ("network", "network"),
        ("channels", "channels"),
        ("home", "home"),
        ("mount", "mount"),
        ("shm_size", "shm_size"),
        ("mem_limit", "mem_limit"),
        ("cpus", "cpus"),
        ("pull_policy", "pull_policy"),
        ("warm_pool", "warm_pool"),
        ("warm_pool_idle", "warm_pool_idle"),
    ):
        if getattr(args, option) is not None:
            config[setting] = getattr(args, option)
    if config.get("backend") == "swarm":
        config.setdefault("home", "container")  # the only home a swarm has (swarm.refusal)
    if args.gpu_inventory:
        config["gpu_inventory"] = [i.strip() for i in args.gpu_inventory.split(",") if i.strip()]
    if args.volume:
        config["volumes"] = config.get("volumes", []) + args.volume
    if args.constraint:
        config["constraints"] = config.get("constraints", []) + args.constraint
    for item in args.path_map:
        local, sep, remote = item.partition("=")
        if not sep or not local or not remote:
            raise DockerKernelError(errors.INVALID_PATH_MAP.format(value=item))
        config.setdefault("path_map", {})[local] = remote
    if args.python:
        config["kernel_cmd"] = [args.python] + DEFAULT_KERNEL_CMD[1:]
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DockerKernelError(errors.INVALID_ENV.format(value=item))
        env[key] = value
    name = args.name or name
    display_name = args.display_name or display_name or f"{name} (Docker: {config['image']})"
    return name, display_name, config, env


def cmd_install(args: argparse.Namespace) -> int:
    name, display_name, config, env = install_settings(args)
    # A bad setting is refused before Docker is asked.
    settings = make_settings(DockerSettings, config, name)
    check_warm_pool(settings, name)
    check_swarm(settings, name)
    policy.check(settings, name)  # as every start does: better told now
    host = settings.host()
    if host.scheme == "tcp" and not all(host.tls_files):
        raise DockerKernelError(errors.TLS_FILES_MISSING.format(host=host.url))
    if host.scheme == "tcp" or settings.backend == "swarm":
        args.curve = True  # its channels cross the network: they must be encrypted
    if settings.channels == "ipc" or settings.network == "none":
        _check_channels(settings, name)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    metadata: dict[str, Any] = {}
    if args.dockerfile:
        client = get_client(host)
        # Labelled as a kernel, so that `dockerkernel scan` finds it elsewhere too (discovery.py).
        label = {"display_name": display_name, "name": name, **_portable(config)}
        labels = {LABEL_IMAGE_KERNEL: json.dumps(label, sort_keys=True)}
        images.build_dockerfile(client, args.dockerfile, config["image"], _show, labels)
        config["pull_policy"] = "never"  # built here: there is nothing to pull
    elif not args.no_pull:
        # Pull before installing, so that a kernelspec is never left naming an image that cannot be had.
        result = _pull(config["image"], "missing", host)
        print(result or f"Image {config['image']} is present.", file=sys.stderr)
    if args.dockerfile or not args.no_pull or _check_despite_no_pull(args, config["image"], host):
        metadata = _make_kernel_ready(args, config, host)
    if args.pin:
        config["pinned_image"] = pin_reference(get_client(host), config["image"])
        print(f"Pinned to {config['pinned_image']}.", file=sys.stderr)
    path = kernelspec.install(
        name=name,
        display_name=display_name,
        config=config,
        env=env,
        metadata=metadata,
        curve=args.curve,
        user=prefix is None,
        prefix=prefix,
        replace=args.replace,
    )
    print(f"Installed kernelspec {name} in {path}")
    return 0


# Settings that say where an engine is, or are made by install: not for an image's label.
NOT_IN_LABEL = frozenset(
    ["image", "pull_policy", "pinned_image", "docker_host", "tls_ca", "tls_cert", "tls_key"]
)


def _portable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``config`` that hold wherever the image goes."""
    return {k: v for k, v in config.items() if k not in NOT_IN_LABEL}


def cmd_scan(args: argparse.Namespace) -> int:
    host = DockerHost(args.host or "")
    found, skipped = discovery.scan(get_client(host), probe_all=args.all, cache=discovery.cache_file())
    for s in skipped:
        print(f"skipped {s.reference}: {s.reason}", file=sys.stderr)
    if not args.install:
        if found:
            rows = [(f.name, f.reference, f.display_name, "label" if f.labelled else "probe") for f in found]
            print(text_table([("NAME", "IMAGE", "DISPLAY NAME", "FOUND BY"), *rows]))
        else:
            print("No image here says it is a kernel: label one org.dockerkernel.kernel, or try --all.")
        return 0
    if host.url:
        found = [replace(f, config={**f.config, "docker_host": host.url}) for f in found]
    done = discovery.sync(found)
    for verb, names in (("added", done.added), ("updated", done.updated), ("removed", done.removed)):
        for name in names:
            print(f"{verb} kernelspec {name}")
    for name in done.not_ours:
        print(f"left kernelspec {name} alone: it is not one that scan wrote", file=sys.stderr)
    if not (done.added or done.updated or done.removed):
        print("The kernelspecs are in step with the images.")
    return 0


def _check_channels(settings: DockerSettings, name: str) -> None:
    """Refuse, at install, a kernelspec whose channels cannot be what it needs: ipc sockets."""
    chosen = channels_for(settings)  # IPC_IMPOSSIBLE for channels 'ipc'
    if settings.network == "none" and chosen.transport != "ipc":
        raise DockerKernelError(errors.NETWORK_NONE_NEEDS_IPC.format(kernel=name, reason=chosen.reason))


def _check_despite_no_pull(args: argparse.Namespace, image: str, host: DockerHost) -> bool:
    """With --no-pull, whether a flag needs the image checked: it must be here, or the install is refused.

    Without such a flag, --no-pull checks nothing: the image may not exist yet.
    """
    wanted = (("--add-ipykernel", _wants_ipykernel(args)), ("--curve", args.curve), ("--pin", args.pin))
    flags = [flag for flag, given in wanted if given]
    if not flags:
        return False
    if not image_present(get_client(host), image):
        raise DockerKernelError(errors.NO_PULL_NEEDS_IMAGE.format(flag=flags[0], image=image))
    return True


def _wants_ipykernel(args: argparse.Namespace) -> bool:
    return bool(args.add_ipykernel or (args.preset and kernelspec.get_preset(args.preset).add_ipykernel))


def _show(line: str) -> None:
    print(line, file=sys.stderr)


def _make_kernel_ready(args: argparse.Namespace, config: dict[str, Any], host: DockerHost) -> dict[str, Any]:
    """Probe the image; add ipykernel if asked and needed; the metadata to record."""
    client = get_client(host)
    python = config.get("kernel_cmd", DEFAULT_KERNEL_CMD)[0]
    image = config["image"]
    found = images.probe(client, image, python)
    metadata: dict[str, Any] = {}
    if found.ipykernel is None:
        if not _wants_ipykernel(args):
            raise DockerKernelError(errors.NO_IPYKERNEL.format(image=image, python=found.python))
        config["image"] = images.add_ipykernel(client, image, python, found, _show)
        config["pull_policy"] = "never"  # built here: there is nothing to pull
        metadata["base_image"] = image
        found = images.probe(client, config["image"], python)
    if args.curve and not found.curve and (host.scheme == "tcp" or config.get("backend") == "swarm"):
        where = host.url if host.scheme == "tcp" else "the swarm's nodes"
        raise DockerKernelError(
            errors.TLS_NEEDS_CURVE.format(host=where, image=image, version=found.ipykernel)
        )
    if args.curve and not found.curve:
        raise DockerKernelError(errors.CURVE_UNSUPPORTED.format(version=found.ipykernel, image=image))
    _show(f"Image {config['image']}: Python {found.python}, ipykernel {found.ipykernel}.")
    if found.no_debugger():
        _show(f"JupyterLab's debugger is off for this kernel: {found.no_debugger()}.")
    metadata["probe"] = found.metadata()
    return metadata


def _pull(image: str, pull_policy: str, host: DockerHost | str = "") -> str | None:
    """Pull ``image`` on ``host`` if ``pull_policy`` asks for it, with progress bars; the final line,
    if pulled."""
    client = get_client(host)
    if not needs_pull(client, image, pull_policy):
        return None
    with PullBars(image) as bars:
        pull_image(client, image, bars)
    return bars.progress.result()


def cmd_pull(args: argparse.Namespace) -> int:
    installed = {k.name: k for k in kernelspec.installed()}
    images = {name: k.image for name, k in installed.items()}
    images.update({name: p.config["image"] for name, p in kernelspec.presets().items() if name not in images})
    host = installed[args.target].host if args.target in installed else DockerHost()
    print(_pull(images.get(args.target, args.target), "always", host))
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    kernel = next((k for k in kernelspec.installed() if k.name == args.name), None)
    home = kernel.home if kernel is not None else ""
    if args.purge and kernel is not None and home:
        client = get_client(kernel.host)
        # Kernels waiting in a warm pool are nobody's yet: they go, and let go of the home.
        mine = {LABEL_OWNER_UID: str(os.getuid()), LABEL_KERNELSPEC: args.name}
        for pooled in waiting_in_pool(client, **mine):
            remove_container(client, pooled.id)
        # First the home, which a running kernel may hold: then nothing is half removed.
        removed = remove_home(client, home)
        print(f"Removed kernel home {home}" if removed else f"No kernel home {home} to remove")
    path = kernelspec.uninstall(args.name)
    print(f"Removed kernelspec {args.name} from {path}")
    return 0
