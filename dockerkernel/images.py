"""Making any image kernel-ready: probe it, add ipykernel on top, build a user's Dockerfile.

Used by `dockerkernel install` and `doctor`, on the host, synchronously.

- ``probe`` runs the image's Python once: its version, platform, and whether
  ipykernel imports.
- ``add_ipykernel`` builds a thin image on top of one that lacks ipykernel.
  Images often have no pip and no network, so the wheels are downloaded on the
  host, for the probed Python version and platform, and pip runs from its own
  wheel inside the build. Python 2 gets ipykernel 4.10, the last release for
  it, from the pinned set in kernel_ready/python2. The derived image's tag
  names its base's id: a changed base gets a new build.
- ``build_dockerfile`` builds a user's Dockerfile, showing the build's output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import docker
import requests
from docker.errors import APIError, BuildError, ImageNotFound

from . import errors
from .engine.connect import cause, daemon_errors, untimed_api
from .engine.containers import run_once
from .errors import DockerKernelError

# Python 2 and 3: what a kernel needs to know about the image's Python.
PROBE_SCRIPT = """\
import json, os, platform, sys
try:
    import ipykernel
    version = ipykernel.__version__
except Exception:
    version = None
try:  # JupyterLab's debugger: ipykernel 6 and later speak its protocol through debugpy
    import debugpy
    has_debugpy = True
except Exception:
    has_debugpy = False
try:  # encrypted kernel channels (CurveZMQ), in the newest ipykernels
    import inspect
    from ipykernel.heartbeat import Heartbeat
    curve = "curve_publickey" in inspect.signature(Heartbeat.__init__).parameters
except Exception:
    curve = False
try:
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
except (AttributeError, ValueError, OSError):  # Python 2: the glibc the binary needs at least
    libc = "%s %s" % platform.libc_ver() if platform.libc_ver()[0] else ""
print(json.dumps({
    "python": "%d.%d.%d" % tuple(sys.version_info[:3]),
    "ipykernel": version,
    "machine": platform.machine(),
    "libc": libc,
    "wide_unicode": sys.maxunicode > 65535,
    "curve": curve,
    "debugpy": has_debugpy,
}))
"""

Show = Callable[[str], None]


@dataclass(frozen=True)
class ImageProbe:
    """What an image's Python is, recorded in the kernelspec's metadata at install."""

    image_id: str
    python: str  # e.g. "3.11.2"
    ipykernel: str | None
    machine: str  # e.g. "x86_64"
    libc: str  # e.g. "glibc 2.36"; "" for musl and others
    wide_unicode: bool
    curve: bool = False  # its ipykernel can encrypt the kernel channels with CurveZMQ
    debugpy: bool = False  # debugpy imports: with ipykernel 6 or later, JupyterLab's debugger works

    @property
    def major_minor(self) -> tuple[int, int]:
        major, minor = self.python.split(".")[:2]
        return int(major), int(minor)

    def no_debugger(self) -> str:
        """Why JupyterLab's debugger cannot work with this image's kernel; '' where it can."""
        if self.major_minor[0] < 3:
            return f"Python {self.python} has no debugpy"
        if self.ipykernel is None or int(self.ipykernel.split(".")[0]) < 6:
            return f"ipykernel {self.ipykernel} is older than 6, the first with a debugger"
        if not self.debugpy:
            return "debugpy is not installed in the image (pip install debugpy)"
        return ""

    def metadata(self) -> dict[str, Any]:
        data = asdict(self)
        del data["wide_unicode"]
        data["debugger"] = not self.no_debugger()
        return data


_probed: dict[tuple[str, str], ImageProbe] = {}  # by image id, which names the content


def probe(client: docker.DockerClient, image: str, python: str) -> ImageProbe:
    """Run ``python`` in ``image`` once, with no network, and report what it found."""
    with daemon_errors():
        try:
            image_id = str(client.images.get(image).id)
        except ImageNotFound:
            raise DockerKernelError(errors.IMAGE_NOT_PRESENT_FOR_PROBE.format(image=image)) from None
    if (image_id, python) not in _probed:
        _probed[image_id, python] = _run_probe(client, image, image_id, python)
    return _probed[image_id, python]


def _run_probe(client: docker.DockerClient, image: str, image_id: str, python: str) -> ImageProbe:
    status, out, err = run_once(client, image, [python, "-c", PROBE_SCRIPT])
    if status is None or status in (126, 127):
        raise DockerKernelError(errors.NO_PYTHON.format(image=image, python=python))
    if status != 0:
        reason = (err.strip().splitlines() or [f"exit status {status}"])[-1]
        raise DockerKernelError(errors.PROBE_FAILED.format(image=image, python=python, reason=reason))
    found = json.loads(out.strip().splitlines()[-1])
    return ImageProbe(image_id=image_id, **found)


def derived_tag(base: str, base_id: str) -> str:
    """The kernel-ready image's tag: the base's name and id, so that a new base gets a new build.

    'quay.io/team/img:2.7' with id sha256:0123... gives 'dockerkernel/team/img:2.7-ipykernel-0123...'.
    """
    name = base.split("@")[0]
    repository, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "latest")
    parts = re.sub(r"[^a-z0-9._/-]+", "-", repository.lower()).split("/")
    if len(parts) > 1 and (re.search(r"[.:]", parts[0]) or parts[0] == "localhost"):
        parts = parts[1:]  # the registry host
    return f"dockerkernel/{'/'.join(parts)}:{tag}-ipykernel-{base_id.removeprefix('sha256:')[:12]}"


def manylinux_platforms(found: ImageProbe) -> list[str]:
    """The wheel platform tags that run on the image's glibc and machine, newest first."""
    match = re.fullmatch(r"glibc (\d+)\.(\d+)", found.libc)
    if not match or int(match.group(1)) != 2:
        raise DockerKernelError(errors.UNSUPPORTED_LIBC.format(libc=found.libc or "not glibc"))
    minor, machine = int(match.group(2)), found.machine
    tags = [f"manylinux_2_{m}_{machine}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{machine}" for m, name in legacy.items() if m <= minor]
    return tags + ["any"]


def _requirements(found: ImageProbe, dest: str) -> list[list[str]]:
    """pip download argument lists for what the image needs, writing requirement files to ``dest``."""
    major, minor = found.major_minor
    if major != 2 and (major, minor) < (3, 8):
        raise DockerKernelError(errors.PYTHON_TOO_OLD.format(version=found.python))
    abi = ("cp27mu" if found.wide_unicode else "cp27m") if major == 2 else f"cp{major}{minor}"
    platforms = [arg for tag in manylinux_platforms(found) for arg in ("--platform", tag)]
    target = ["--python-version", f"{major}.{minor}", "--implementation", "cp", "--abi", abi, *platforms]
    if major == 2:
        pinned = resources.files("dockerkernel.kernel_ready") / "python2"
        for name in ("build-requirements.txt", "requirements.txt", "sdists.txt"):
            with open(os.path.join(dest, name), "w") as f:
                f.write((pinned / name).read_text())
        binary = ["--no-deps", "--only-binary=:all:", *target]
        return [
            [*binary, "-r", os.path.join(dest, "build-requirements.txt")],
            [*binary, "-r", os.path.join(dest, "requirements.txt")],
            ["--no-deps", "--no-binary=:all:", "-r", os.path.join(dest, "sdists.txt")],
        ]
    with open(os.path.join(dest, "requirements.txt"), "w") as f:
        f.write("ipykernel\npip\n")
    return [["--only-binary=:all:", *target, "-r", os.path.join(dest, "requirements.txt")]]


def download_wheels(found: ImageProbe, dest: str, show: Show) -> None:
    """Download ipykernel and pip for the image's Python into ``dest``, with the host's pip."""
    os.makedirs(dest, exist_ok=True)
    for args in _requirements(found, dest):
        command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-d", dest, *args]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
            reason = (lines or result.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise DockerKernelError(errors.WHEELS_UNAVAILABLE.format(python=found.python, reason=reason))
    show(f"Downloaded {len(os.listdir(dest))} packages for Python {found.python} on {found.machine}.")


DOCKERFILE = """\
FROM {base}
USER root
ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY wheels /tmp/dockerkernel-wheels
RUN set -e; cd /tmp/dockerkernel-wheels; \\
    pip="{python} $(echo pip-*.whl)/pip install --no-index --find-links . --no-build-isolation"; \\
    if [ -f build-requirements.txt ]; then $pip -r build-requirements.txt; fi; \\
    $pip -r requirements.txt $(if [ -f sdists.txt ]; then echo -r sdists.txt; fi); \\
    cd /; rm -rf /tmp/dockerkernel-wheels; \\
    {python} -c "import ipykernel; print('ipykernel ' + ipykernel.__version__)"
USER {user}
"""


def add_ipykernel(client: docker.DockerClient, base: str, python: str, found: ImageProbe, show: Show) -> str:
    """Build (or find) the kernel-ready image on top of ``base``; returns its tag."""
    tag = derived_tag(base, found.image_id)
    with daemon_errors():
        try:
            client.images.get(tag)
            show(f"Kernel-ready image {tag} is present.")
            return tag
        except ImageNotFound:
            pass
        user = client.images.get(found.image_id).attrs["Config"].get("User") or "root"
    with tempfile.TemporaryDirectory() as context:
        download_wheels(found, os.path.join(context, "wheels"), show)
        with open(os.path.join(context, "Dockerfile"), "w") as f:
            f.write(DOCKERFILE.format(base=found.image_id, python=python, user=user))
        show(f"Building {tag} on top of {base}:")
        build(client, context, tag, base, show, labels={"org.dockerkernel.base": base})
    return tag


def build(
    client: docker.DockerClient,
    context: str,
    tag: str,
    what: str,
    show: Show,
    dockerfile: str = "Dockerfile",
    labels: dict[str, str] | None = None,
) -> None:
    """``docker build`` of ``context``, showing its output; an error names ``what`` and the failed step."""
    with untimed_api(client) as api, daemon_errors():
        try:
            for chunk in api.build(
                path=context,
                dockerfile=dockerfile,
                tag=tag,
                rm=True,
                forcerm=True,
                decode=True,
                labels=labels,
            ):
                if "error" in chunk:
                    reason = str(chunk["error"]).strip().splitlines()[-1]
                    raise DockerKernelError(errors.BUILD_FAILED.format(what=what, reason=reason))
                text = str(chunk.get("stream", "")).rstrip()
                if text:
                    show(text)
        except (APIError, BuildError, requests.exceptions.RequestException) as e:
            reason = cause(e)
            raise DockerKernelError(errors.BUILD_FAILED.format(what=what, reason=reason)) from e


def build_dockerfile(
    client: docker.DockerClient, path: str, tag: str, show: Show, labels: dict[str, str] | None = None
) -> str:
    """Build the Dockerfile at ``path`` (its folder is the build context) as ``tag``, with ``labels``."""
    if not os.path.isfile(path):
        raise DockerKernelError(errors.DOCKERFILE_MISSING.format(path=path))
    context = os.path.dirname(os.path.abspath(path))
    show(f"Building {tag} from {path}:")
    build(client, context, tag, path, show, dockerfile=os.path.basename(path), labels=labels)
    return tag
