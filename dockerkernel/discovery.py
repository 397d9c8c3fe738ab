"""Images that can be kernels, found on an engine, and kept in step with real kernelspecs.

An image says that it is a kernel with a label, LABEL_IMAGE_KERNEL, whose value
is a JSON object: an optional ``display_name`` and ``name`` (its kernelspec's),
and any settings, for example::

    LABEL org.dockerkernel.kernel='{"display_name": "PyTorch 2.3", "gpus": "all"}'

An empty value, or ``{}``, takes the defaults. `dockerkernel install
--dockerfile` sets it. Finding them is one image-list call filtered by the
label: no container starts. scan(probe_all=True) also probes the images
without the label, once per image id, and keeps the answers in a cache file.

sync() writes real kernelspecs for what was found, which is what nbclient,
papermill, `jupyter kernelspec list` and VS Code read. A kernelspec is named
after the image's repository and tag, so that its name stays when the tag's
image is rebuilt. The kernelspecs that sync() writes say so in their
metadata (``dockerkernel.discovered``): it updates and removes only those,
never one that a user installed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.utils import parse_repository_tag
from jupyter_client.kernelspec import KernelSpecManager, _is_valid_kernel_name

from . import images, kernelspec
from .engine.connect import daemon_errors
from .errors import DockerKernelError
from .settings import DockerSettings
from .validation import make_settings

LABEL_IMAGE_KERNEL = "org.dockerkernel.kernel"
DISCOVERED = "discovered"  # the key, under metadata.dockerkernel, of a kernelspec that sync() wrote


@dataclass(frozen=True)
class Found:
    """An image that can be a kernel, and the kernelspec it gets."""

    reference: str  # repository:tag
    image_id: str
    name: str
    display_name: str
    config: dict[str, Any] = field(default_factory=dict)  # its settings, the image's reference included
    labelled: bool = True


@dataclass(frozen=True)
class Skipped:
    """An image that says it is a kernel, but whose label cannot be used: one line says why."""

    reference: str
    reason: str


def kernelspec_name(reference: str) -> str:
    """A kernelspec's name for an image reference, stable across rebuilds of its tag.

    'team/torch:2.3' is 'team-torch-2.3'; a registry's host and port are left out.
    """
    repository, tag = parse_repository_tag(reference)
    parts = repository.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]  # a registry
    name = "-".join([*parts, tag] if tag and tag != "latest" else parts)
    return re.sub(r"[^a-zA-Z0-9._-]+", "-", name).strip("-.").lower() or "image"


def from_label(reference: str, image_id: str, value: str) -> Found | Skipped:
    """What an image's kernel label says, checked as an install checks its settings."""
    try:
        options = json.loads(value) if value.strip() else {}
    except json.JSONDecodeError as e:
        return Skipped(
            reference, f"its label {LABEL_IMAGE_KERNEL} is not JSON ({e.msg} at character {e.pos})"
        )
    if not isinstance(options, dict):
        return Skipped(reference, f"its label {LABEL_IMAGE_KERNEL} is not a JSON object")
    options = dict(options)
    display_name = str(options.pop("display_name", "") or f"{reference} (Docker)")
    name = str(options.pop("name", "") or kernelspec_name(reference))
    if not _is_valid_kernel_name(name):
        return Skipped(reference, f"its label names the kernelspec {name!r}, which is not a valid name")
    config = {**options, "image": reference}
    try:
        make_settings(DockerSettings, config, name)
    except DockerKernelError as e:
        return Skipped(reference, str(e))
    return Found(reference, image_id, name, display_name, config)


def scan(
    client: docker.DockerClient, *, probe_all: bool = False, cache: str = ""
) -> tuple[list[Found], list[Skipped]]:
    """The engine's images that can be kernels, and the labelled ones that cannot, by reference.

    Labelled images only, from one image-list call; with ``probe_all``, also the
    others in which ``python3`` imports ipykernel, each image id probed once and
    its answer kept in ``cache`` (a JSON file).
    """
    with daemon_errors():
        labelled = client.api.images(filters={"label": LABEL_IMAGE_KERNEL})
        every = client.api.images() if probe_all else []
    found: list[Found] = []
    skipped: list[Skipped] = []
    for image in labelled:
        value = str((image.get("Labels") or {}).get(LABEL_IMAGE_KERNEL, ""))
        for reference in _references(image):
            result = from_label(reference, str(image["Id"]), value)
            (found if isinstance(result, Found) else skipped).append(result)  # type: ignore[arg-type]
    if probe_all:
        answers = _read_cache(cache)
        seen = {str(image["Id"]) for image in labelled}
        for image in every:
            image_id = str(image["Id"])
            references = _references(image)
            if image_id in seen or not references:
                continue
            if image_id not in answers:
                answers[image_id] = _has_ipykernel(client, references[0])
            if answers[image_id]:
                found += [
                    Found(r, image_id, kernelspec_name(r), f"{r} (Docker)", {"image": r}, labelled=False)
                    for r in references
                ]
        _write_cache(cache, answers)
    return sorted(found, key=lambda f: f.name), sorted(skipped, key=lambda s: s.reference)


def _references(image: dict[str, Any]) -> list[str]:
    return sorted(t for t in image.get("RepoTags") or [] if t and t != "<none>:<none>")


def _has_ipykernel(client: docker.DockerClient, reference: str) -> bool:
    try:
        return images.probe(client, reference, "python3").ipykernel is not None
    except DockerKernelError:
        return False  # no python3, or a probe that failed: not a kernel


def _read_cache(path: str) -> dict[str, bool]:
    try:
        with open(path) as f:
            data = json.load(f)
        return {str(k): bool(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: str, answers: dict[str, bool]) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{os.getpid()}"
    with open(partial, "w") as f:
        json.dump(answers, f)
    os.replace(partial, path)


def cache_file() -> str:
    """Where this user keeps the answers of `scan --all`'s probes."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dockerkernel", "probed-images.json")


@dataclass
class Synced:
    """What a sync() did, by kernelspec name."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    not_ours: list[str] = field(default_factory=list)  # a kernelspec of that name that a user installed


def sync(found: Sequence[Found], *, prefix: str | None = None) -> Synced:
    """Make the kernelspecs that sync() wrote be those of ``found``: add, update and remove only those."""
    done = Synced()
    ours = {k.name: k for k in kernelspec.installed() if k.discovered}
    others = set(KernelSpecManager().find_kernel_specs()) - set(ours)  # any kernel's, local ones included
    wanted: dict[str, Found] = {}
    for f in found:
        wanted.setdefault(f.name, f)  # one image under two tags: the first, by name
    for name, f in sorted(wanted.items()):
        if name in others:
            done.not_ours.append(name)
            continue
        metadata = {DISCOVERED: {"reference": f.reference, "labelled": f.labelled}}
        old = ours.get(name)
        if old is not None and old.display_name == f.display_name and kernelspec.config_of(name) == f.config:
            continue
        kernelspec.install(
            name=name,
            display_name=f.display_name,
            config=f.config,
            metadata=metadata,
            user=prefix is None,
            prefix=prefix,
            replace=True,
        )
        (done.updated if old is not None else done.added).append(name)
    for name in sorted(set(ours) - set(wanted)):
        kernelspec.uninstall(name)
        done.removed.append(name)
    return done
