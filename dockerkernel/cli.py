"""The `dockerkernel` command: install and manage Docker kernelspecs, list and prune kernel containers.

Each subcommand calls the library, which returns data, and prints it. A
DockerKernelError becomes one line on stderr and exit status 1; `--debug`
shows the traceback too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

from . import __version__, channels, docker_ops, doctor, errors, images, kernelspec, policy, swarm
from .backends import prune_host
from .config import check_warm_pool, make_settings
from .errors import DockerKernelError
from .hosts import DockerHost
from .pulls import PullBars
from .settings import DEFAULT_KERNEL_CMD, DockerSettings
from .spec import LABEL_GPUS, LABEL_KERNEL_ID, LABEL_KERNELSPEC, LABEL_OWNER_UID, LABEL_POOL, POOL_NAME_PREFIX

T = TypeVar("T")


def _help(trait: str) -> str:
    """A setting's help text, written once on the trait."""
    text = DockerSettings.class_traits()[trait].help
    return " ".join(text.split()).replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dockerkernel",
        description="Run Jupyter kernels in Docker images: one kernelspec per environment.",
    )
    parser.add_argument("--version", action="version", version=f"dockerkernel {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("install", help="install a kernelspec from a preset or for any image")
    p.add_argument("preset", nargs="?", help="a preset name (see `dockerkernel presets`)")
    p.add_argument("--image", help=_help("image"))
    p.add_argument("--name", help="the kernelspec's name (default: the preset's, or one made from the image)")
    p.add_argument("--display-name", help="the name shown in Jupyter's kernel picker")
    p.add_argument("--host", metavar="URL", help=_help("docker_host"))
    p.add_argument("--swarm", action="store_const", const="swarm", dest="backend", help=_help("backend"))
    p.add_argument("--constraint", action="append", default=[], metavar="EXPR", help=_help("constraints"))
    p.add_argument("--gpu-resource", metavar="KIND", help=_help("gpu_resource"))
    p.add_argument("--tls-ca", metavar="PATH", help=_help("tls_ca"))
    p.add_argument("--tls-cert", metavar="PATH", help=_help("tls_cert"))
    p.add_argument("--tls-key", metavar="PATH", help=_help("tls_key"))
    p.add_argument("--path-map", action="append", default=[], metavar="LOCAL=REMOTE", help=_help("path_map"))
    p.add_argument("--gpus", help=_help("gpus"))
    p.add_argument("--when-gpus-busy", choices=["share", "refuse"], help=_help("when_gpus_busy"))
    p.add_argument("--gpu-inventory", metavar="ID,ID,...", help=_help("gpu_inventory"))
    p.add_argument(
        "--volume", action="append", default=[], metavar="HOST:CONTAINER[:ro]", help=_help("volumes")
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the kernel",
    )
    p.add_argument("--python", metavar="EXE", help="the Python inside the image (default: python3)")
    p.add_argument("--run-as", metavar="host|image|UID[:GID]", help=_help("user"))
    p.add_argument("--network", help=_help("network"))
    p.add_argument("--channels", choices=["auto", "ipc", "tcp"], help=_help("channels"))
    p.add_argument("--home", choices=["volume", "container"], help=_help("home"))
    p.add_argument("--mount", metavar="auto|notebook|PATH", help=_help("mount"))
    p.add_argument("--shm-size", help=_help("shm_size"))
    p.add_argument("--mem-limit", help=_help("mem_limit"))
    p.add_argument("--cpus", type=float, help=_help("cpus"))
    p.add_argument("--pull-policy", choices=["missing", "always", "never"], help=_help("pull_policy"))
    p.add_argument("--warm-pool", type=int, metavar="N", help=_help("warm_pool"))
    p.add_argument("--warm-pool-idle", type=float, metavar="SECONDS", help=_help("warm_pool_idle"))
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user only (the default)")
    where.add_argument(
        "--sys-prefix", action="store_true", help="install into this Python's prefix (e.g. a virtualenv)"
    )
    where.add_argument("--prefix", metavar="DIR", help="install into DIR/share/jupyter/kernels")
    p.add_argument("--replace", action="store_true", help="overwrite a kernelspec of the same name")
    p.add_argument(
        "--no-pull", action="store_true", help="do not pull or check the image now (it may not exist yet)"
    )
    p.add_argument(
        "--add-ipykernel",
        action="store_true",
        help="if the image lacks ipykernel, build a kernel-ready image on top of it (wheels fetched here)",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="record the image's digest (or id, for an image built here): the kernel then starts exactly "
        "that image, even after its tag has moved",
    )
    p.add_argument(
        "--curve",
        action="store_true",
        help="declare that the kernel can encrypt its channels with CurveZMQ (checked in the image); "
        "Jupyter then encrypts them where KernelManager.transport_encryption is 'auto' or 'required'",
    )
    p.add_argument(
        "--dockerfile",
        metavar="PATH",
        help="build this Dockerfile (its folder is the build context) and install a kernel for the result; "
        "--image names the tag to build (default: dockerkernel/NAME:latest)",
    )

    p = sub.add_parser("uninstall", help="remove a dockerkernel kernelspec")
    p.add_argument("name")
    p.add_argument(
        "--purge",
        action="store_true",
        help="also remove your kernel home for it (caches, pip install --user)",
    )

    p = sub.add_parser("pin", help="make a kernelspec start exactly the image that its tag names now")
    p.add_argument("name", help="an installed kernelspec")
    p = sub.add_parser("unpin", help="make a kernelspec start whatever image its tag names")
    p.add_argument("name", help="an installed kernelspec")

    p = sub.add_parser("list", help="list the installed dockerkernel kernelspecs")
    p.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("presets", help="list the presets that `install` knows")

    p = sub.add_parser("pull", help="pull the image of a kernelspec or preset, or any image, with progress")
    p.add_argument("target", metavar="NAME|IMAGE", help="an installed kernelspec, a preset, or an image")

    p = sub.add_parser(
        "run",
        help="run notebooks on one or more kernels, each result with a record of its image",
        description="Execute each NOTEBOOK on each kernel (-k) and write each result, with the record of "
        "the image it ran on, to the output folder as <notebook>.<kernel>.ipynb.",
    )
    p.add_argument("notebooks", nargs="*", metavar="NOTEBOOK")
    p.add_argument(
        "-k",
        "--kernel",
        action="append",
        default=[],
        dest="kernels",
        metavar="KERNEL",
        help="an installed kernelspec",
    )
    p.add_argument(
        "-o", "--output-dir", metavar="DIR", help="where results go (default: ./dockerkernel-runs/<time>/)"
    )
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter, injected after the cell tagged 'parameters' as papermill does",
    )
    p.add_argument(
        "-f",
        "--parameters-file",
        action="append",
        default=[],
        metavar="YAML",
        help="parameters, as a YAML mapping",
    )
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="runs at once (default: 1)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="the most one cell may take")
    p.add_argument(
        "--compare", action="store_true", help="set each notebook's runs side by side, cell by cell"
    )
    p.add_argument(
        "--reproduce",
        metavar="EXECUTED",
        help="run this notebook again on the exact image, and with the settings, that its record names",
    )
    p.add_argument("--gpus", help="with --reproduce: the GPUs to give instead of the recorded ones")

    p = sub.add_parser("ps", help="list your kernel containers")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--all", action="store_true", help="list every user's kernel containers")

    sub.add_parser("prune", help="remove your kernel containers whose Jupyter server or launcher is gone")

    sub.add_parser(
        "doctor", help="check Docker, GPUs, the installed kernels' images and the server extension"
    )

    p = sub.add_parser("launch", help="run a kernel in its container (the kernelspec's argv runs this)")
    p.add_argument("--spec-dir", required=True, help="the kernelspec's directory")
    p.add_argument("-f", "--connection-file", required=True, help="the connection file Jupyter wrote")
    p.add_argument("extra_arguments", nargs=argparse.REMAINDER, help="passed on to the kernel")
    return parser


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
        client = docker_ops.get_client(host)
        images.build_dockerfile(client, args.dockerfile, config["image"], _show)
        config["pull_policy"] = "never"  # built here: there is nothing to pull
    elif not args.no_pull:
        # Pull before installing, so that a kernelspec is never left naming an image that cannot be had.
        result = _pull(config["image"], "missing", host)
        print(result or f"Image {config['image']} is present.", file=sys.stderr)
    if args.dockerfile or not args.no_pull or _check_despite_no_pull(args, config["image"], host):
        metadata = _make_kernel_ready(args, config, host)
    if args.pin:
        config["pinned_image"] = docker_ops.pin_reference(docker_ops.get_client(host), config["image"])
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


def _check_channels(settings: DockerSettings, name: str) -> None:
    """Refuse, at install, a kernelspec whose channels cannot be what it needs: ipc sockets."""
    chosen = docker_ops.channels_for(settings)  # IPC_IMPOSSIBLE for channels 'ipc'
    if settings.network == "none" and chosen.transport != "ipc":
        raise DockerKernelError(errors.NETWORK_NONE_NEEDS_IPC.format(kernel=name, reason=chosen.reason))


def _channels_of(kernel: kernelspec.InstalledKernel) -> str:
    """How the server reaches a kernelspec's kernels, for `list`; its engine is asked where it is local."""
    try:
        settings = make_settings(DockerSettings, kernelspec.config_of(kernel.name), kernel.name)
        return docker_ops.channels_for(settings).describe()
    except DockerKernelError as e:
        return f"? ({e})"


def _check_despite_no_pull(args: argparse.Namespace, image: str, host: DockerHost) -> bool:
    """With --no-pull, whether a flag needs the image checked: it must be here, or the install is refused.

    Without such a flag, --no-pull checks nothing: the image may not exist yet.
    """
    wanted = (("--add-ipykernel", _wants_ipykernel(args)), ("--curve", args.curve), ("--pin", args.pin))
    flags = [flag for flag, given in wanted if given]
    if not flags:
        return False
    if not docker_ops.image_present(docker_ops.get_client(host), image):
        raise DockerKernelError(errors.NO_PULL_NEEDS_IMAGE.format(flag=flags[0], image=image))
    return True


def _wants_ipykernel(args: argparse.Namespace) -> bool:
    return bool(args.add_ipykernel or (args.preset and kernelspec.get_preset(args.preset).add_ipykernel))


def _show(line: str) -> None:
    print(line, file=sys.stderr)


def _make_kernel_ready(args: argparse.Namespace, config: dict[str, Any], host: DockerHost) -> dict[str, Any]:
    """Probe the image; add ipykernel if asked and needed; the metadata to record."""
    client = docker_ops.get_client(host)
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
    metadata["probe"] = found.metadata()
    return metadata


def _pull(image: str, pull_policy: str, host: DockerHost | str = "") -> str | None:
    """Pull ``image`` on ``host`` if ``pull_policy`` asks for it, with progress bars; the final line,
    if pulled."""
    client = docker_ops.get_client(host)
    if not docker_ops.needs_pull(client, image, pull_policy):
        return None
    with PullBars(image) as bars:
        docker_ops.pull_image(client, image, bars)
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
        client = docker_ops.get_client(kernel.host)
        # Kernels waiting in a warm pool are nobody's yet: they go, and let go of the home.
        mine = {LABEL_OWNER_UID: str(os.getuid()), LABEL_KERNELSPEC: args.name}
        for pooled in docker_ops.waiting_in_pool(client, **mine):
            docker_ops.remove_container(client, pooled.id)
        # First the home, which a running kernel may hold: then nothing is half removed.
        removed = docker_ops.remove_home(client, home)
        print(f"Removed kernel home {home}" if removed else f"No kernel home {home} to remove")
    path = kernelspec.uninstall(args.name)
    print(f"Removed kernelspec {args.name} from {path}")
    return 0


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


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
        print(_table([("NAME", "IMAGE", "PINNED", "GPUS", "HOME VOLUME", "LOCATION", "CHANNELS"), *rows]))
    return 0


def _pinned(kernel: kernelspec.InstalledKernel) -> str:
    """A kernelspec's pin for `list`, and whether its tag names another image now."""
    if not kernel.pinned:
        return "-"
    short = kernel.pinned.rsplit("@", 1)[-1][:19]
    try:
        client = docker_ops.get_client(kernel.host)
        now = docker_ops.image_id(client, kernel.image)
        pinned = docker_ops.image_id(client, kernel.pinned)
    except DockerKernelError:
        return f"{short} (engine unreachable)"
    if now is None:
        return f"{short} (tag not here)"
    return f"{short} (tag moved)" if now != pinned else short


def cmd_pin(args: argparse.Namespace) -> int:
    config = kernelspec.config_of(args.name)
    settings = make_settings(DockerSettings, config, args.name)
    reference = docker_ops.pin_reference(docker_ops.get_client(settings.host()), settings.image)
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
    print(_table(rows))
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


def _kernel_id(container: docker_ops.Listed) -> str:
    """A kernel's id; a warm-pool kernel's is in its name once a start has taken it (labels are fixed)."""
    if LABEL_POOL not in container.labels:
        return container.labels.get(LABEL_KERNEL_ID, "")
    if container.name.startswith(POOL_NAME_PREFIX):
        return "(warm pool)"
    return container.name.removeprefix("dockerkernel-")


def _container_rows(every_user: bool, host: DockerHost) -> list[dict[str, Any]]:
    """A row per kernel on ``host``: its containers, and the services of a swarm that it manages."""
    mine = {} if every_user else {LABEL_OWNER_UID: str(os.getuid())}
    client = docker_ops.get_client(host)
    found = [
        (c.short_id, c.status, {**c.labels, LABEL_KERNEL_ID: _kernel_id(c)}, c.image)
        for c in docker_ops.kernel_containers(client, **mine)
        if "com.docker.swarm.service.id" not in c.labels  # its service's row says it
    ]
    for service in swarm.kernel_services(client, **mine):
        spec = service["Spec"]
        state = swarm.task_state(client, service["ID"])
        image = spec["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
        found.append((service["ID"][:12], f"service, {state}", spec.get("Labels", {}), image))
    rows = []
    for short_id, status, labels, image in found:
        alive = docker_ops.owner_alive(labels)
        rows.append(
            {
                "container": short_id,
                "status": status,
                "kernelspec": labels.get(LABEL_KERNELSPEC, ""),
                "kernel_id": labels.get(LABEL_KERNEL_ID, ""),
                "user": docker_ops.user_name(labels.get(LABEL_OWNER_UID, "")),
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
        print(_table([tuple(k.upper() for k in keys), *table]))
    return 0 if answered else 1


def cmd_prune(args: argparse.Namespace) -> int:
    pruned, answered = _per_host(prune_host)
    channels.prune(docker_ops.owner_alive)  # the sockets' folders of the same servers and launchers
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


def cmd_run(args: argparse.Namespace) -> int:
    import datetime
    import tempfile
    from pathlib import Path

    from . import run

    if args.reproduce and (args.kernels or args.notebooks):
        raise DockerKernelError(errors.REPRODUCE_ALONE)
    if not args.kernels and not args.reproduce:
        raise DockerKernelError(errors.RUN_NO_KERNELS)
    if not args.notebooks and not args.reproduce:
        raise DockerKernelError(errors.NOTEBOOK_MISSING.format(path="(none given)"))
    options = run.Options(
        run.parse_parameters(args.parameter, args.parameters_file), args.timeout, args.parallel
    )
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    output = Path(args.output_dir or os.path.join("dockerkernel-runs", stamp))
    if not args.reproduce:
        return _run_jobs(args, run.plan_jobs(args.notebooks, args.kernels, output), options, output)
    with tempfile.TemporaryDirectory(prefix="dockerkernel-reproduce-") as specs:
        job = run.reproduction(Path(args.reproduce), output, args.gpus, Path(specs))
        with run.on_jupyter_path(Path(specs)):  # the recorded kernel's kernelspec goes with the folder
            return _run_jobs(args, run.plan_jobs([args.reproduce], [job.kernel], output), options, output)


def _run_jobs(args: argparse.Namespace, jobs: Sequence[Any], options: Any, output: Any) -> int:
    """Run ``jobs``, with a line of progress each, then print their table; the exit status."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from . import run

    outcomes = [run.Outcome(job) for job in jobs]
    progress = Console(stderr=True)

    def line(o: run.Outcome) -> str:
        where = f"cell {o.cell} of {o.cells}" if o.cell else ""
        state = {"running": where or "starting", "ok": f"done in {o.seconds:.1f} s"}.get(o.status, o.status)
        return f"{o.job.notebook.name} on {o.job.kernel}: {state}"

    def board() -> Table:
        table = Table.grid(padding=(0, 1))
        for o in outcomes:
            table.add_row(line(o))
        return table

    live = Live(board(), console=progress, auto_refresh=False) if progress.is_terminal else None

    def changed(o: run.Outcome) -> None:
        if live is not None:
            live.update(board(), refresh=True)
        else:
            print(line(o), file=sys.stderr, flush=True)

    if live is not None:
        live.start()
    try:
        interrupted = run.run_jobs(outcomes, options, changed)
    finally:
        if live is not None:
            live.stop()
    if args.compare:
        _compare_runs(outcomes, args.kernels, output)
    rows = [("NOTEBOOK", "KERNEL", "IMAGE", "STATUS", "DURATION", "FIRST ERROR")]
    for o in outcomes:
        error = f"cell {o.cell}: {o.error}" if o.error and o.cell else o.error
        duration = f"{o.seconds:.1f} s" if o.seconds else "-"
        rows.append((o.job.notebook.name, o.job.kernel, o.image or "-", o.status, duration, error or "-"))
    print(_table(rows))
    print(f"Results in {output}{os.sep}")
    if interrupted:
        return 130
    return 0 if all(o.status == "ok" for o in outcomes) else 1


def _compare_runs(outcomes: Sequence[Any], kernels: Sequence[str], output: Any) -> None:
    """Print and write, per notebook, which code cells' outputs differ between its kernels."""
    from . import compare, run

    by_notebook: dict[Any, dict[str, Any]] = {}
    for o in outcomes:
        if o.job.output.exists():
            by_notebook.setdefault(o.job.notebook, {})[o.job.kernel] = run.read_notebook(o.job.output)
    for notebook, runs in by_notebook.items():
        if len(runs) < 2:
            continue
        ran = [k for k in kernels if k in runs]
        cells = compare.compare({k: runs[k] for k in ran})
        differing = [c for c in cells if c.differs]
        print(
            f"\n{notebook.name}: {len(differing)} of {len(cells)} code cells differ between {', '.join(ran)}."
        )
        rows = [("CELL", "SOURCE", *(f"{k} vs {ran[0]}" for k in ran[1:]))]
        for c in cells:
            rows.append(
                (str(c.index), c.source[:50], *("differs" if k in c.diffs else "same" for k in ran[1:]))
            )
        print(_table(rows))
        for c in differing:
            for diff in c.diffs.values():
                print(f"\ncell {c.index}:")
                print("\n".join(f"  {line}" for line in diff))
        report = output / f"{notebook.stem}.compare.md"
        report.write_text(compare.markdown_report(notebook.name, cells, ran))
        print(f"\nComparison report: {report}")
    print()


def cmd_launch(args: argparse.Namespace) -> int:
    from .launcher import launch

    extra = args.extra_arguments[1:] if args.extra_arguments[:1] == ["--"] else args.extra_arguments
    return launch(args.spec_dir, args.connection_file, extra)


COMMANDS = {
    "install": cmd_install,
    "uninstall": cmd_uninstall,
    "list": cmd_list,
    "pin": cmd_pin,
    "unpin": cmd_unpin,
    "presets": cmd_presets,
    "pull": cmd_pull,
    "ps": cmd_ps,
    "run": cmd_run,
    "prune": cmd_prune,
    "doctor": cmd_doctor,
    "launch": cmd_launch,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The launcher's log (a pull's progress, say) is the kernel's stderr: the client shows or keeps it.
    level = logging.DEBUG if args.debug else logging.INFO if args.command == "launch" else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s")
    try:
        return COMMANDS[args.command](args)
    except DockerKernelError as e:
        if args.debug:
            logging.exception("dockerkernel failed")
        print(f"dockerkernel: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
