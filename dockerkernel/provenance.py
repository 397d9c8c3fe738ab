"""What a notebook was run on: the record that every dockerkernel kernel carries, and reports.

At each start (launch.gather), the engine is asked about the
image, and the record is made from the answer and the plan (record()): the
kernelspec, the image as installed and as run, its digest and id, the GPUs
given, the Docker host, dockerkernel's version and the start time. It goes into
the container's environment, with DOCKERKERNEL_IMAGE, DOCKERKERNEL_IMAGE_ID and
DOCKERKERNEL_IMAGE_DIGEST for code to log.

The kernel's start-up script (startup_script(), run by IPython through
PYTHONSTARTUP) adds what only the kernel knows, its platform, Python and
ipykernel, and puts the record into the kernel's ``language_info``, which
every kernel_info reply carries. nbclient, papermill and JupyterLab keep
``language_info`` whole in the notebook's metadata, so a notebook run anywhere
keeps the record there; `dockerkernel run` and the server extension (on
save) copy it to the notebook's top-level ``metadata.dockerkernel``.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any

from . import __version__

METADATA_KEY = "dockerkernel"  # in a notebook's metadata, and in its language_info
ENVIRONMENT = "DOCKERKERNEL_PROVENANCE"  # the record, as JSON, in the kernel's environment

# The image store's kind of id: the classic store names an image by its config's
# digest; the containerd image store (Docker 24+, optional) by its manifest's.
CONFIG_DIGEST = "config digest"
MANIFEST_DIGEST = "manifest digest"


def repo_digest(reference: str, repo_digests: Sequence[str]) -> str:
    """The image's ``repo@sha256:...`` for the repository ``reference`` names, else its first; '' if none.

    A locally built image that was never pushed nor pulled has none.
    """
    if "@" in reference:
        return reference
    name = reference.rsplit(":", 1)[0] if ":" in reference.rsplit("/", 1)[-1] else reference
    for digest in repo_digests:
        if digest.split("@", 1)[0] == name:
            return digest
    return repo_digests[0] if repo_digests else ""


def record(
    *,
    kernelspec: str,
    image: str,
    run_image: str,
    image_attrs: Mapping[str, Any],
    id_kind: str,
    gpus: Sequence[Mapping[str, str]],
    docker_host: str,
    started: datetime.datetime,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The host's part of a kernel's record (pure): ``image`` is the reference as installed, ``run_image``
    the one started (a pinned digest or id, or the same), ``image_attrs`` the engine's inspection of it."""
    return {
        "kernelspec": kernelspec,
        "image": image,
        "image_run": run_image,
        "repo_digest": repo_digest(run_image, image_attrs.get("RepoDigests") or []),
        "image_id": str(image_attrs.get("Id", "")),
        "image_id_kind": id_kind,
        "gpus": [dict(g) for g in gpus],
        "docker_host": docker_host,
        "dockerkernel": __version__,
        "started": started.astimezone(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": dict(settings or {}),
    }


def environment(host_record: Mapping[str, Any]) -> dict[str, str]:
    """The kernel's variables for its record."""
    return {
        ENVIRONMENT: json.dumps(host_record, sort_keys=True),
        "DOCKERKERNEL_IMAGE": str(host_record["image"]),
        "DOCKERKERNEL_IMAGE_ID": str(host_record["image_id"]),
        "DOCKERKERNEL_IMAGE_DIGEST": str(host_record["repo_digest"]),
    }


# Python 2 and 3, IPython 5 and later. Outside IPython (a `python` started by hand
# with this environment) it does nothing. Then the image's own start-up file, if any.
_STARTUP_SCRIPT = """\
def _dockerkernel_start(notice, stream, chained):
    import json, os, platform, sys
    try:
        shell = get_ipython()
    except NameError:
        return
    kernel = getattr(shell, "kernel", None)
    record = json.loads(os.environ.get({variable!r}, "{{}}"))
    if record and kernel is not None:
        try:
            import ipykernel
            record["ipykernel"] = ipykernel.__version__
        except Exception:
            pass
        record["python"] = platform.python_version()
        record["platform"] = platform.platform()
        info = dict(kernel.language_info)
        info[{key!r}] = record
        kernel.language_info = info
    if kernel is not None and "usage_request" in getattr(kernel, "control_handlers", {{}}):
        _dockerkernel_usage_within_limits(kernel)
    if notice:
        def show(*args):
            getattr(sys, stream).write(notice + "\\n")
            shell.events.unregister("pre_run_cell", show)

        shell.events.register("pre_run_cell", show)
    if chained and os.path.isfile(chained):
        with open(chained) as f:
            exec(compile(f.read(), chained, "exec"), shell.user_ns)


def _dockerkernel_usage_within_limits(kernel):
    # The usage panel's reply (jupyter-resource-usage) reads the host's memory and CPUs from /proc,
    # which a container shares with its host: where the container has limits, it says those.
    import math
    def read(*paths):
        for path in paths:
            try:
                with open(path) as f:
                    return f.read().split()
            except (IOError, OSError):
                pass
        return []
    limit = read("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    memory = int(limit[0]) if limit and limit[0].isdigit() and int(limit[0]) < 1 << 60 else 0
    quota = read("/sys/fs/cgroup/cpu.max")
    if not quota:
        quota = read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") + read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    cpus = 0
    if len(quota) == 2 and quota[0].lstrip("-").isdigit() and int(quota[0]) > 0 and int(quota[1]) > 0:
        cpus = int(math.ceil(float(quota[0]) / int(quota[1])))
    if not (memory or cpus):
        return
    session = kernel.session
    send = session.send

    def send_within_limits(stream, msg_or_type, content=None, *args, **kwargs):
        if msg_or_type == "usage_reply" and isinstance(content, dict):
            content = dict(content)
            if memory:
                used = read("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes")
                used = int(used[0]) if used and used[0].isdigit() else 0
                content["host_virtual_memory"] = dict(
                    content.get("host_virtual_memory") or {{}},
                    total=memory, used=used, available=max(memory - used, 0),
                    percent=round(100.0 * used / memory, 1),
                )
            if cpus:
                content["cpu_count"] = cpus
        return send(stream, msg_or_type, content, *args, **kwargs)

    session.send = send_within_limits


_dockerkernel_start({notice!r}, {stream!r}, {chained!r})
del _dockerkernel_start, _dockerkernel_usage_within_limits
"""


def startup_script(notice: str = "", stream: str = "stderr", chained: str = "") -> str:
    """The kernel's PYTHONSTARTUP: its record into language_info, the notice at the first execution,
    then ``chained``, the start-up file that the image or kernelspec had set."""
    return _STARTUP_SCRIPT.format(
        variable=ENVIRONMENT, key=METADATA_KEY, notice=notice, stream=stream, chained=chained
    )


def reference(found: Mapping[str, Any]) -> str:
    """The exact image a record names: its digest, else its id (an image built where it ran)."""
    return str(found.get("repo_digest") or found.get("image_id") or "")


def forget(metadata: dict[str, Any]) -> None:
    """Remove a notebook's records, before it runs again: what it ran on before is not what it runs on."""
    metadata.pop(METADATA_KEY, None)
    language_info = metadata.get("language_info")
    if isinstance(language_info, dict):
        language_info.pop(METADATA_KEY, None)


def of_kernel(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record that the notebook's kernel put in its language_info, if any."""
    found = (metadata.get("language_info") or {}).get(METADATA_KEY)
    return dict(found) if isinstance(found, Mapping) else None


def of_notebook(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """A notebook's record: its top-level one, else the one its kernel put in language_info."""
    found = metadata.get(METADATA_KEY)
    return dict(found) if isinstance(found, Mapping) else of_kernel(metadata)
