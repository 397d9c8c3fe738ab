"""Images on an engine: whether one is there, what pins it, pulls, and the accounts it has."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from typing import Any

import docker
import requests
from docker.errors import APIError, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.utils import parse_repository_tag

from .. import errors, provenance
from ..errors import DockerKernelError, ImageUnavailable
from ..labels import LABEL_PROBE
from .connect import cause, daemon_errors, state_of, untimed_api
from .containers import remove_container

PullEvents = Callable[[dict[str, Any]], None]


def needs_pull(client: docker.DockerClient, image: str, pull_policy: str) -> bool:
    """Whether ``image`` must be pulled before a start, as ``pull_policy`` says (see pull_wanted)."""
    return pull_policy == "always" or pull_wanted(image_present(client, image), image, pull_policy)


def pull_wanted(present: bool, image: str, pull_policy: str) -> bool:
    """Whether ``image``, ``present`` on the engine or not, must be pulled as ``pull_policy`` says.

    With pull_policy 'never', an image that is not present is an error.
    """
    if pull_policy == "always":
        return True
    if present:
        return False
    if pull_policy == "never":
        raise DockerKernelError(errors.IMAGE_NOT_PRESENT.format(image=image))
    return True


def inspect_image(client: docker.DockerClient, image: str) -> dict[str, Any] | None:
    """The engine's inspection of ``image``; None where it has no such image."""
    with daemon_errors():
        try:
            return dict(client.api.inspect_image(image))
        except ImageNotFound:
            return None


def image_present(client: docker.DockerClient, image: str) -> bool:
    """Whether the daemon has ``image``."""
    return inspect_image(client, image) is not None


def pin_reference(client: docker.DockerClient, image: str) -> str:
    """What pins ``image`` as the engine has it now: its digest in its repository, or, for an image
    built here that no registry has, its id."""
    with daemon_errors():
        try:
            attrs = client.api.inspect_image(image)
        except ImageNotFound:
            raise DockerKernelError(errors.PIN_NEEDS_IMAGE.format(image=image)) from None
    return provenance.repo_digest(image, attrs.get("RepoDigests") or []) or str(attrs["Id"])


def image_id(client: docker.DockerClient, image: str) -> str | None:
    """The id of the image that ``image`` names on the engine now; None where it has none."""
    found = inspect_image(client, image)
    return str(found["Id"]) if found is not None else None


def pull_image(client: docker.DockerClient, image: str, on_event: PullEvents | None = None) -> None:
    """Pull ``image``, passing each of the engine's progress events to ``on_event``.

    A pull of several GB takes as long as it takes: it runs on a connection of
    its own with no read timeout. A failure, at the start or in the middle of
    the stream, is an IMAGE_UNAVAILABLE error naming the image and the reason.
    """
    repository, tag = parse_repository_tag(image)
    with untimed_api(client) as api, daemon_errors():
        try:
            for event in api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                if "error" in event:
                    reason = str(event["error"]).strip().splitlines()[0]
                    raise ImageUnavailable(image, reason)
                if on_event is not None:
                    on_event(event)
        except (APIError, requests.exceptions.RequestException) as e:
            raise ImageUnavailable(image, cause(e)) from e


def image_accounts(client: docker.DockerClient, image_id: str) -> tuple[str, str]:
    """The image's /etc/passwd and /etc/group, read once per image from a container of it that never starts.

    An image id names its content, so the files read once hold for every
    later container of that image.
    """
    accounts = state_of(client).accounts
    if image_id not in accounts:
        reader = client.containers.create(
            image_id, command=["true"], network_disabled=True, labels={LABEL_PROBE: "1"}
        )
        try:
            accounts[image_id] = (_read_file(reader, "/etc/passwd"), _read_file(reader, "/etc/group"))
        finally:
            remove_container(client, reader.id)
    return accounts[image_id]


def _read_file(container: Container, path: str) -> str:
    """A text file of a container that has not started; '' when there is none."""
    try:
        chunks, _ = container.get_archive(path)
    except NotFound:
        return ""
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        member = tar.extractfile(os.path.basename(path))
        return member.read().decode(errors="replace") if member is not None else ""
