"""A user's isolated network: a bridge on which the user's kernels cannot reach one another."""

from __future__ import annotations

import itertools
from typing import Any

import docker

from ..labels import LABEL_NETWORK_OF
from .connect import daemon_errors, gone_is_fine, state_of

ICC_OPTION = "com.docker.network.bridge.enable_icc"


def ensure_isolated_network(client: docker.DockerClient, name: str, uid: int) -> str:
    """Create a user's isolated network once: a bridge on which containers cannot reach one another.

    Docker already keeps containers of different networks apart; with
    inter-container traffic off, a user's kernels cannot reach each other
    either. Ports published on the host's loopback still reach each kernel.
    Returns the network's id. Docker does not make names unique: two
    processes that create it at once both succeed. All of them then use the
    oldest one (by creation time, then id), and the others are removed where no
    container uses them. A network of that name without the user's label, or
    with inter-container traffic on, is never used nor removed: on a shared
    engine, someone else may have made it to reach the user's kernels.
    """
    networks = state_of(client).networks
    if name in networks:
        return networks[name]

    def ours() -> list[dict[str, Any]]:
        """The networks of that name that are the user's, made as above: another user of a shared engine
        could have made one of that name, with inter-container traffic on."""
        return [
            n
            for n in client.api.networks(names=[name])
            if n["Name"] == name
            and (n.get("Labels") or {}).get(LABEL_NETWORK_OF) == str(uid)
            and (n.get("Options") or {}).get(ICC_OPTION) == "false"
        ]

    with daemon_errors():
        found = ours()
        if not found:
            client.api.create_network(
                name, driver="bridge", options={ICC_OPTION: "false"}, labels={LABEL_NETWORK_OF: str(uid)}
            )
            found = ours()
        oldest, *others = sorted(found, key=lambda n: (_created(n["Created"]), n["Id"]))
        for other in others:
            with gone_is_fine():  # 409: in use, by a container of a process that chose it just before
                client.api.remove_network(other["Id"])
    networks[name] = str(oldest["Id"])
    return networks[name]


def _created(stamp: str) -> str:
    """An RFC 3339 time as Docker writes it, with up to nine digits of seconds, made sortable as text."""
    whole, _, fraction = stamp.partition(".")
    digits = "".join(itertools.takewhile(str.isdigit, fraction))
    return whole[:19] + digits.ljust(9, "0")
