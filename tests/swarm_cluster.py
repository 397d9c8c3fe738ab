"""A two-node Docker Swarm for tests: this machine's dockerd as the manager, the remote test host
(remote_host.py) as the worker.

Swarm mode is left on both daemons at the end, whatever happened, so that the
machine's dockerd is as it was found. A dockerd already in a swarm is not
touched: the tests fail instead, saying so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import docker

from remote_host import ADDRESS, RemoteHost
from waiting import wait_until_sync

MANAGER_ADDRESS = "10.214.0.1"  # our end of the remote host's veth pair


@dataclass
class Swarm:
    manager: docker.DockerClient
    worker: RemoteHost
    worker_node: str  # the worker's node id


@contextmanager
def two_node_swarm(manager: docker.DockerClient, worker: RemoteHost) -> Iterator[Swarm]:
    state = manager.info()["Swarm"]["LocalNodeState"]
    assert state == "inactive", f"this machine's dockerd is already in a swarm ({state}): leave it first"
    try:
        manager.swarm.init(advertise_addr=MANAGER_ADDRESS, listen_addr=f"{MANAGER_ADDRESS}:2377")
        manager.swarm.reload()
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        worker.client.swarm.join(
            remote_addrs=[f"{MANAGER_ADDRESS}:2377"],
            join_token=token,
            advertise_addr=ADDRESS,
            listen_addr=f"{ADDRESS}:2377",
        )
        node = worker.client.info()["Swarm"]["NodeID"]

        def ready() -> bool:
            return bool(manager.api.inspect_node(node)["Status"]["State"] == "ready")

        wait_until_sync(ready, "the worker to be a ready node of the swarm")
        yield Swarm(manager, worker, node)
    finally:
        for client in (worker.client, manager):
            try:
                client.swarm.leave(force=True)
            except docker.errors.APIError as e:
                if "not part of a swarm" not in str(e):
                    raise
