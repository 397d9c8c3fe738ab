"""`dockerkernel`'s command line: the parser, with each option's help taken from its setting's."""

from __future__ import annotations

import argparse

from .. import __version__
from ..settings import DockerSettings


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

    p = sub.add_parser(
        "scan",
        help="list the engine's images that can be kernels: those labelled org.dockerkernel.kernel",
        description="Images are kernels where their label org.dockerkernel.kernel says so (a JSON "
        'object: display_name, name and any settings, e.g. \'{"display_name": "Torch", "gpus": "all"}\'). '
        "Listing them is one image-list call; no container starts but with --all.",
    )
    p.add_argument(
        "--all", action="store_true", help="also probe unlabelled images for ipykernel, each image once"
    )
    p.add_argument(
        "--install",
        action="store_true",
        help="write a kernelspec for each, named after its repository and tag, and remove those that "
        "scan wrote for images that are gone; kernelspecs you installed are left alone",
    )
    p.add_argument("--host", metavar="URL", help=_help("docker_host"))

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
