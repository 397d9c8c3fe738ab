"""A kernel container's exit, learnt from the engine's events in a thread of its own, not by polling."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future

import docker
import requests
from docker.errors import DockerException, NotFound

from ..errors import DockerKernelError
from .connect import cause, release_frames, state_of, untimed_api
from .kind import engine_of

log = logging.getLogger(__name__)

WATCH_RETRY_MAX = 5.0  # seconds between tries to reach a daemon that lost sight of a container


def wait_container(client: docker.DockerClient, container_id: str, stop: threading.Event) -> int:
    """Block until the container exits and return its exit status; -1 once it is gone.

    Uses a connection of its own, with no read timeout, so that a long-lived
    wait neither holds one of the shared client's connections nor times out.
    A connection that drops is not an exit: the daemon may be restarting
    (with live-restore its containers run on) or a remote link may have
    idled out. The wait is then made again once the daemon answers, and the
    daemon says whether the container exited meanwhile. Ends with -1 when
    ``stop`` is set.
    """
    delay = 0.1
    lost = False
    podman = engine_of(client).podman
    while not stop.is_set():
        try:
            with untimed_api(client) as api:
                if lost:
                    api.ping()
                    log.info("The daemon answers again: watching container %s", container_id[:12])
                    lost = False
                if podman:
                    return int(api.wait(container_id)["StatusCode"])
                return _exit_status(api, container_id)
        except NotFound:
            return -1
        except (DockerKernelError, DockerException, requests.exceptions.RequestException) as e:
            release_frames(e)  # the SDK leaves the socket of a failed connection open
            if not lost:
                log.warning(
                    "Lost sight of container %s (%s): it is taken as running until the daemon says otherwise",
                    container_id[:12],
                    cause(e),
                )
                lost = True
            stop.wait(delay)
            delay = min(delay * 2, WATCH_RETRY_MAX)
    return -1


def _exit_status(api: docker.APIClient, container_id: str) -> int:
    """The container's exit status, from its 'die' event; NotFound once it is gone.

    Docker sends the event as the container's process exits, and answers a wait
    only after it has released the container's network and published ports,
    some hundreds of milliseconds later: a client's shutdown ends at the
    kernel's exit, as with a local kernel. The events are asked for before the
    container's state, so that an exit in between is not missed.
    """
    events = api.events(filters={"container": container_id, "event": ["die", "destroy"]}, decode=True)
    try:
        state = api.inspect_container(container_id)["State"]
        if not state.get("Running") and state.get("Status") != "created":
            return int(state.get("ExitCode", -1))
        for event in events:
            if event.get("Action", event.get("status")) == "destroy":
                raise NotFound(f"container {container_id} was removed")
            return int(event.get("Actor", {}).get("Attributes", {}).get("exitCode", -1))
    finally:
        events.close()
    raise requests.exceptions.ConnectionError("the daemon ended the stream of events")


def watch_container(client: docker.DockerClient, container_id: str) -> Future[int]:
    """A future for the container's exit status, resolved by a thread of its own."""
    future: Future[int] = Future()
    future.set_running_or_notify_cancel()  # so that a cancelled await cannot cancel it
    watches = state_of(client).watches
    stop = watches.setdefault(container_id, threading.Event())

    def wait() -> None:
        status = wait_container(client, container_id, stop)
        watches.pop(container_id, None)
        future.set_result(status)

    threading.Thread(target=wait, name=f"dockerkernel-wait-{container_id[:12]}", daemon=True).start()
    return future
