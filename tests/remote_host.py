"""A remote Docker host for tests, reached the ways a lab reaches its GPU servers.

A namespaced dockerd (namespaced_host.py) at its veth address, with:
- sshd beside it, whose sessions have DOCKER_HOST pointing at that daemon, so
  that `docker system dial-stdio` over ssh reaches it, as on a real host;
- the daemon's API on tcp://ADDRESS:2376 with TLS verification on both sides,
  from a CA, server and client certificates made here with openssl.

Its loopback is its own: a kernel port published there is not on ours. Its
files are ours, as on a lab's shared storage. The SSH client's key,
known_hosts and config are in a home of their own (``RemoteHost.home``), never
in the user's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import psutil

from namespaced_host import NamespacedHost, namespaced_host
from waiting import accepts, wait_until_sync

SUBNET = "10.214.0.0/24"
ADDRESS = "10.214.0.2"  # the host's end of the veth pair; ours is .1
TLS_PORT = 2376


@dataclass
class RemoteHost:
    host: NamespacedHost
    ssh_user: str
    home: Path  # a HOME whose .ssh reaches the host: a key, known_hosts
    tls: Path  # ca.pem, cert.pem and key.pem for the client
    sshd: subprocess.Popen[bytes]

    @property
    def client(self) -> docker.DockerClient:
        return self.host.client

    @property
    def ssh_url(self) -> str:
        return f"ssh://{self.ssh_user}@{ADDRESS}"

    @property
    def tcp_url(self) -> str:
        return f"tcp://{ADDRESS}:{TLS_PORT}"

    def tls_args(self) -> list[str]:
        return ["--tls-ca", str(self.tls / "ca.pem"), "--tls-cert", str(self.tls / "cert.pem"),
                "--tls-key", str(self.tls / "key.pem")]  # fmt: skip

    def drop_ssh_connections(self) -> int:
        """End every SSH connection to the host, as a network drop would; sshd stays. How many."""
        sessions = psutil.Process(self.sshd.pid).children()
        for session in sessions:
            session.terminate()
        psutil.wait_procs(sessions, timeout=10)
        return len(sessions)

    def ssh_connections(self) -> int:
        return len(psutil.Process(self.sshd.pid).children())


@contextmanager
def remote_host(
    main: docker.DockerClient,
    images: Sequence[str],
    ssh_user: str,
    *,
    env: Mapping[str, str] | None = None,
    daemon_args: Sequence[str] = (),
) -> Iterator[RemoteHost]:
    """Start the host with ``images``, reachable as ``ssh_user`` over ssh; remove it all afterwards.

    ``env`` and ``daemon_args`` go to its dockerd, as in namespaced_host().
    """
    secrets = Path(tempfile.mkdtemp(prefix="dockerkernel-remote-", dir="/var/tmp"))
    sshd: subprocess.Popen[bytes] | None = None
    try:
        os.chmod(secrets, 0o755)  # sshd reads authorized_keys as the user
        tls = _make_certificates(secrets / "tls")
        tls_args = [
            "-H", f"tcp://{ADDRESS}:{TLS_PORT}", "--tlsverify",
            "--tlscacert", str(tls / "ca.pem"),
            "--tlscert", str(tls / "server-cert.pem"),
            "--tlskey", str(tls / "server-key.pem"),
        ]  # fmt: skip
        with namespaced_host(
            main,
            images,
            prefix="dkrem",
            bip="10.215.0.1/24",
            subnet=SUBNET,
            env=env,
            daemon_args=[*tls_args, *daemon_args],
        ) as host:
            assert host.address == ADDRESS
            home = _client_home(secrets)
            sshd = _start_sshd(host, secrets, ssh_user)
            _trust_host_key(home, secrets)
            yield RemoteHost(host, ssh_user, home, tls, sshd)
            sshd.terminate()
            sshd.wait(timeout=30)
    finally:
        if sshd is not None and sshd.poll() is None:
            for session in psutil.Process(sshd.pid).children(recursive=True):
                session.kill()
            sshd.kill()
            sshd.wait()
        shutil.rmtree(secrets, ignore_errors=True)


def _make_certificates(folder: Path) -> Path:
    """A CA, the daemon's certificate for ADDRESS and a client's, as Docker's TLS guide makes them."""
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=dockerkernel test CA", "-keyout", "ca-key.pem", "-out", "ca.pem")  # fmt: skip
    for name, subject, extension in (
        ("server", f"/CN={ADDRESS}", f"subjectAltName=IP:{ADDRESS}\nextendedKeyUsage=serverAuth\n"),
        ("client", "/CN=client", "extendedKeyUsage=clientAuth\n"),
    ):
        (folder / f"{name}.ext").write_text(extension)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
                "-keyout", f"{name}-key.pem", "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}-cert.pem")  # fmt: skip
    (folder / "client-cert.pem").rename(folder / "cert.pem")
    (folder / "client-key.pem").rename(folder / "key.pem")
    return folder


def _client_home(secrets: Path) -> Path:
    home = secrets / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    key = home / ".ssh" / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    shutil.copy(f"{key}.pub", secrets / "authorized_keys")
    os.chmod(secrets / "authorized_keys", 0o644)
    return home


def _start_sshd(host: NamespacedHost, secrets: Path, user: str) -> subprocess.Popen[bytes]:
    host_key = secrets / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    config = secrets / "sshd_config"
    config.write_text(
        f"ListenAddress {ADDRESS}:22\n"
        f"HostKey {host_key}\n"
        f"PidFile {secrets}/sshd.pid\n"
        f"AuthorizedKeysFile {secrets}/authorized_keys\n"
        f"AllowUsers {user}\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM yes\n"
        "StrictModes no\n"
        "AllowTcpForwarding yes\n"
        f"SetEnv DOCKER_HOST={host.docker_host}\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    with open(secrets / "sshd.log", "wb") as log:
        sshd = subprocess.Popen(
            host.enter(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)]),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def listening() -> bool:
        assert sshd.poll() is None, f"sshd exited:\n{(secrets / 'sshd.log').read_text()}"
        return accepts((ADDRESS, 22))

    wait_until_sync(listening, "the remote host's sshd to listen")
    return sshd


def _trust_host_key(home: Path, secrets: Path) -> None:
    public = (secrets / "ssh_host_ed25519_key.pub").read_text().split()
    (home / ".ssh" / "known_hosts").write_text(f"{ADDRESS} {public[0]} {public[1]}\n")
