"""`dockerkernel list`, `pin`, `unpin`, `presets`, `ps`, `prune`, `doctor` and `launch`: the kernels."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

from .. import channels, doctor, kernelspec, swarm
from ..backends import prune_host
from ..engine.connect import get_client
from ..engine.containers import Listed, kernel_containers
from ..engine.gpus import user_name
from ..engine.images import image_id, pin_reference
from ..engine.owners import owner_alive
from ..errors import DockerKernelError
from ..hosts import DockerHost
from ..labels import (
    LABEL_GPUS,
    LABEL_KERNEL_ID,
    LABEL_KERNELSPEC,
    LABEL_OWNER_UID,
    LABEL_POOL,
    POOL_NAME_PREFIX,
)
from ..launch import channels_for
from ..settings import DockerSettings
from ..validation import make_settings

T = TypeVar("T")


def text_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def _channels_of(kernel: kernelspec.InstalledKernel) -> str:
    """How the server reaches a kernelspec's kernels, for `list`; its engine is asked where it is local."""
    try:
        settings = make_settings(DockerSettings, kernelspec.config_of(kernel.name), kernel.name)
        return channels_for(settings).describe()
    except DockerKernelError as e:
        return f"? ({e})"


def cmd_list(args: argparse.Namespace) -> int:
    kernels = kernelspec.installed()
    if args.json:
        print(json.dumps([{**asdict(k), "channels": _channels_of(k)} for k in kernels], indent=1))
    elif not kernels:
        print("No dockerkernel kernelspecs are installed: try `dockerkernel install python3`.")
    else:
        rows = [
            (k.name, k.image, _pinned(k), k.gpus, k.home or "(in the container)", k.path, _channels_of(k))
            for k in kernels
        ]
        print(text_table([("NAME", "IMAGE", "PINNED", "GPUS", "HOME VOLUME", "LOCATION", "CHANNELS"), *rows]))
    return 0


def _pinned(kernel: kernelspec.InstalledKernel) -> str:
    """A kernelspec's pin for `list`, and whether its tag names another image now."""
    if not kernel.pinned:
        return "-"
    short = kernel.pinned.rsplit("@", 1)[-1][:19]
    try:
        client = get_client(kernel.host)
        now = image_id(client, kernel.image)
        pinned = image_id(client, kernel.pinned)
    except DockerKernelError:
        return f"{short} (engine unreachable)"
    if now is None:
        return f"{short} (tag not here)"
    return f"{short} (tag moved)" if now != pinned else short


def cmd_pin(args: argparse.Namespace) -> int:
    config = kernelspec.config_of(args.name)
    settings = make_settings(DockerSettings, config, args.name)
    reference = pin_reference(get_client(settings.host()), settings.image)
    kernelspec.set_config(args.name, pinned_image=reference)
    print(f"Kernel {args.name} now starts {reference}, whatever {settings.image} names later.")
    return 0


def cmd_unpin(args: argparse.Namespace) -> int:
    config = kernelspec.config_of(args.name)
    kernelspec.set_config(args.name, pinned_image="")
    print(f"Kernel {args.name} now starts whatever {config.get('image', '')} names at each start.")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    rows = [("NAME", "IMAGE", "GPUS", "DESCRIPTION")]
    for p in kernelspec.presets().values():
        rows.append((p.name, p.config["image"], p.config.get("gpus", "none"), p.description))
    print(text_table(rows))
    return 0


def _per_host(what: Callable[[DockerHost], list[T]]) -> tuple[list[T], bool]:
    """``what`` for each engine of the installed kernelspecs; whether every engine answered.

    With one engine, its error is the command's; with several, each unreachable
    one is a line on stderr and the others are still shown.
    """
    hosts = kernelspec.docker_hosts(kernelspec.installed())
    results: list[T] = []
    answered = True
    for host in hosts:
        try:
            results += what(host)
        except DockerKernelError as e:
            if len(hosts) == 1:
                raise
            print(f"dockerkernel: {host}: {e}", file=sys.stderr)
            answered = False
    return results, answered


def _kernel_id(container: Listed) -> str:
    """A kernel's id; a warm-pool kernel's is in its name once a start has taken it (labels are fixed)."""
    if LABEL_POOL not in container.labels:
        return container.labels.get(LABEL_KERNEL_ID, "")
    if container.name.startswith(POOL_NAME_PREFIX):
        return "(warm pool)"
    return container.name.removeprefix("dockerkernel-")


def _container_rows(every_user: bool, host: DockerHost) -> list[dict[str, Any]]:
    """A row per kernel on ``host``: its containers, and the services of a swarm that it manages."""
    mine = {} if every_user else {LABEL_OWNER_UID: str(os.getuid())}
    client = get_client(host)
    found = [
        (c.short_id, c.status, {**c.labels, LABEL_KERNEL_ID: _kernel_id(c)}, c.image)
        for c in kernel_containers(client, **mine)
        if "com.docker.swarm.service.id" not in c.labels  # its service's row says it
    ]
    for service in swarm.kernel_services(client, **mine):
        spec = service["Spec"]
        state = swarm.task_state(client, service["ID"])
        image = spec["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
        found.append((service["ID"][:12], f"service, {state}", spec.get("Labels", {}), image))
    rows = []
    for short_id, status, labels, image in found:
        alive = owner_alive(labels)
        rows.append(
            {
                "container": short_id,
                "status": status,
                "kernelspec": labels.get(LABEL_KERNELSPEC, ""),
                "kernel_id": labels.get(LABEL_KERNEL_ID, ""),
                "user": user_name(labels.get(LABEL_OWNER_UID, "")),
                "gpus": labels.get(LABEL_GPUS, ""),
                "owner": {True: "running", False: "gone", None: "unknown"}[alive],
                "image": image,
                "host": host.url,
            }
        )
    return rows


def cmd_ps(args: argparse.Namespace) -> int:
    rows, answered = _per_host(lambda host: _container_rows(args.all, host))
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(
            "No kernel containers." if args.all else "No kernel containers of yours (--all shows everyone's)."
        )
    else:
        keys: tuple[str, ...] = (
            "container",
            "kernelspec",
            "kernel_id",
            "user",
            "status",
            "owner",
            "gpus",
            "image",
        )
        if any(r["host"] for r in rows):
            keys += ("host",)
        table = [tuple(r[k] or "-" for k in keys) for r in rows]
        print(text_table([tuple(k.upper() for k in keys), *table]))
    return 0 if answered else 1


def cmd_prune(args: argparse.Namespace) -> int:
    pruned, answered = _per_host(prune_host)
    channels.prune(owner_alive)  # the sockets' folders of the same servers and launchers
    removed = len(pruned)
    print(f"Removed {removed} kernel container{'s' if removed != 1 else ''} whose owner is gone.")
    return 0 if answered else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    failed = 0
    for check in doctor.run_checks():
        print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}", flush=True)
        failed += not check.ok
    print(f"{failed} check{'s' if failed != 1 else ''} failed." if failed else "All checks passed.")
    return 1 if failed else 0


def cmd_launch(args: argparse.Namespace) -> int:
    from ..launcher import launch

    extra = args.extra_arguments[1:] if args.extra_arguments[:1] == ["--"] else args.extra_arguments
    return launch(args.spec_dir, args.connection_file, extra)
