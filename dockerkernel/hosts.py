"""The Docker host a kernelspec names: where its engine is and how it is reached (pure).

- '' : the engine that DOCKER_HOST and friends name, else the local one;
- ``unix:///path``: an engine of this machine, such as a user's rootless Podman;
- ``ssh://[user@]host[:port]``: a remote engine, reached over one SSH connection
  that also carries the kernels' channels (see ssh.py);
- ``tcp://host[:port]``: a remote engine over TLS, with client certificates;
  its kernels' channels are encrypted with CurveZMQ.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from urllib.parse import urlsplit

TLS_PORT = 2376  # Docker's port for TLS


@dataclass(frozen=True)
class DockerHost:
    url: str = ""
    tls_ca: str = ""  # tcp:// only: the CA that signed the daemon's certificate
    tls_cert: str = ""  # and this client's certificate and key
    tls_key: str = ""

    @property
    def scheme(self) -> str:
        """'', 'unix', 'ssh' or 'tcp'."""
        return self.url.partition("://")[0] if self.url else ""

    @property
    def remote(self) -> bool:
        """Whether the engine is on another machine: its kernels' ports are not on this one's loopback."""
        return self.scheme in ("ssh", "tcp")

    @property
    def hostname(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def tls_files(self) -> tuple[str, str, str]:
        return (self.tls_ca, self.tls_cert, self.tls_key)

    def __str__(self) -> str:
        return self.url or "the default engine"


def check_url(url: str) -> str:
    """``url`` as a docker_host, or ValueError saying what is wrong with it."""
    url = url.strip()
    if not url:
        return url
    scheme, sep, rest = url.partition("://")
    if scheme == "unix" and sep and rest.startswith("/") and len(rest) > 1:
        return url
    if scheme in ("ssh", "tcp") and sep:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError when the port is not a number
        except ValueError:
            parts = None
        if parts is not None and parts.hostname and parts.path in ("", "/") and not parts.query:
            if scheme == "tcp" and parts.username:
                raise ValueError(f"invalid docker_host {url!r}: a tcp:// address has no user")
            return url.rstrip("/")
    raise ValueError(
        f"invalid docker_host {url!r}: use ssh://user@host, tcp://host:{TLS_PORT} (with TLS) "
        "or a socket of this machine such as unix:///run/user/1000/podman/podman.sock"
    )


def map_path(path: str, path_map: dict[str, str]) -> str:
    """Where ``path`` of this machine is on the Docker host: the longest local prefix of
    ``path_map`` that holds it, replaced by its remote prefix; else ``path`` itself."""
    path = posixpath.normpath(path)
    matches = []
    for local, remote in path_map.items():
        prefix = posixpath.normpath(local)
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            matches.append((len(prefix), prefix, posixpath.normpath(remote)))
    if not matches:
        return path
    _, prefix, remote = max(matches)
    rest = posixpath.relpath(path, prefix)
    return remote if rest == "." else posixpath.join(remote, rest)
