"""Shared fixtures: isolated Jupyter directories, the CLI in-process, and real Docker kernels.

Tests marked ``docker`` need a Docker engine and the images that
tests/images/build.sh makes; tests/run.sh provides both. They are never
skipped: without Docker they fail, saying what to run.
"""

from __future__ import annotations

import asyncio
import grp
import io
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
from jupyter_client.manager import AsyncKernelManager

from dockerkernel.cli import main as cli_main
from dockerkernel.labels import LABEL_KERNEL_ID, LABEL_NETWORK_OF

from servers import JupyterServer
from waiting import accepts, wait_until_sync

IMAGES = {"py3": "dockerkernel-test/py3", "py2": "dockerkernel-test/py2", "torch": "dockerkernel-test/torch"}
PYTHONS = {"py3": "python3", "py2": "python", "torch": "python3"}
FLAVOURS = list(IMAGES)
# Python and nothing else, no pip, no ipykernel: for making images kernel-ready.
BARE = {"py3": "dockerkernel-test/bare-py3", "py2": "dockerkernel-test/bare-py2"}
WIDGETS = "dockerkernel-test/widgets"  # py3 with ipywidgets


@pytest.fixture(autouse=True)
def jupyter_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets Jupyter data, config and runtime directories of its own."""
    root = tmp_path / "jupyter"
    for var, sub in (
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_PATH", "data"),
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
    ):
        monkeypatch.setenv(var, str(root / sub))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return root


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def dockerkernel(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run the `dockerkernel` CLI in-process."""

    def run(*args: str) -> CliResult:
        try:
            code = cli_main(list(args))
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def test_images() -> dict[str, str]:
    """The test images by flavour, as tests/images/build.sh tags them."""
    return dict(IMAGES)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The Docker engine, with the test images built; a failure, never a skip, without them.

    The kernel homes and user networks made during the run, by tests that do
    not check for leftovers too, are removed at its end.
    """
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        pytest.fail(f"these tests need a Docker engine ({e}); tests/run.sh installs and starts one")
    for image in [*IMAGES.values(), *BARE.values(), WIDGETS]:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.fail(f"test image {image} is missing: run tests/images/build.sh")
    homes_before = set(kernel_homes(client))
    networks_before = {n.id for n in client.networks.list(filters={"label": LABEL_NETWORK_OF})}
    yield client
    remove_new_homes(client, homes_before)
    for network in client.networks.list(filters={"label": LABEL_NETWORK_OF}):
        if network.id not in networks_before:
            network.remove()


def kernel_containers(client: docker.DockerClient) -> dict[str, Any]:
    """Sparse, so that one the engine removes meanwhile cannot fail the listing."""
    return {
        c.id: c for c in client.containers.list(all=True, sparse=True, filters={"label": LABEL_KERNEL_ID})
    }


@pytest.fixture
def no_leftovers(docker_client: docker.DockerClient, request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a kernel container behind; show the logs of a failed test's kernels.

    The kernel homes that the test made are removed, as a user would with
    `uninstall --purge`: they are meant to outlive kernels, not tests.
    """
    before = set(kernel_containers(docker_client))
    homes_before = set(kernel_homes(docker_client))
    yield

    def new_containers() -> dict[str, Any]:
        return {cid: c for cid, c in kernel_containers(docker_client).items() if cid not in before}

    # A shutdown ends at the kernel's exit; its container is removed just after.
    with suppress(AssertionError):
        wait_until_sync(lambda: not new_containers(), "the removal of the test's kernel containers", 30)
    new = new_containers()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for c in new.values():
            print(f"--- logs of {c.attrs['Names']} ---\n{c.logs(tail=50).decode(errors='replace')}")
    for c in new.values():
        c.remove(force=True)
    remove_new_homes(docker_client, homes_before)
    assert not new, f"kernel containers left behind: {[c.attrs['Names'] for c in new.values()]}"


def kernel_homes(client: docker.DockerClient) -> dict[str, Any]:
    return {v.name: v for v in client.volumes.list(filters={"name": "dockerkernel-home-"})}


def remove_new_homes(client: docker.DockerClient, before: set[str]) -> None:
    """Remove the kernel homes that are not in ``before``."""
    for name, volume in kernel_homes(client).items():
        if name not in before:
            volume.remove(force=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.skipped and item.get_closest_marker("docker") and not hasattr(report, "wasxfail"):
        # A skipped Docker test would let a broken product pass: it fails the run instead.
        report.outcome = "failed"
        report.longrepr = f"Docker tests are never skipped, but this one was: {report.longrepr}"
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def outside_the_source_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test, and the servers and commands it starts, from an empty folder.

    From the repository root, `python -m ...` would import the source tree
    instead of the installed package that is under test. The folder holds no
    notebook folder, so kernels mount their notebook's folder alone.
    """
    folder = tmp_path / "client-cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)


@pytest.fixture
def install_test_kernel(dockerkernel: Callable[..., CliResult]) -> Callable[..., str]:
    """Install a kernelspec for a test image with the CLI; returns its name."""

    def install(flavour: str, *extra: str, name: str | None = None) -> str:
        name = name or f"test-{flavour}"
        result = dockerkernel(
            "install", "--image", IMAGES[flavour], "--name", name, "--python", PYTHONS[flavour], *extra
        )
        assert result.code == 0, result.err
        return name

    return install


@pytest.fixture
def kernels(install_test_kernel: Callable[..., str], docker_client: docker.DockerClient) -> dict[str, str]:
    """A kernelspec for each test image, shown as "Docker FLAVOUR"; their names by flavour."""
    return {f: install_test_kernel(f, "--display-name", f"Docker {f}") for f in FLAVOURS}


@dataclass
class Reply:
    status: str
    stdout: str = ""
    ename: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)


class Kernel:
    """A kernel started through jupyter_client's AsyncKernelManager, with a client."""

    kc: Any = None

    def __init__(self, km: AsyncKernelManager) -> None:
        self.km = km

    async def start(self, **kwargs: Any) -> None:
        await self.km.start_kernel(**kwargs)
        self.kc = self.km.client()  # after the start: the client copies the ports
        self.kc.start_channels()
        await self.kc.wait_for_ready(timeout=60)

    async def execute(self, code: str, timeout: float = 60) -> Reply:
        stdout: list[str] = []
        messages: list[dict[str, Any]] = []
        reply = await self.kc.execute_interactive(
            code, timeout=timeout, output_hook=messages.append, allow_stdin=False
        )
        for msg in messages:
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                stdout.append(msg["content"]["text"])
        content = reply["content"]
        return Reply(content["status"], "".join(stdout), content.get("ename", ""), messages)

    @property
    def container_id(self) -> str | None:
        return getattr(self.km.provisioner, "container_id", None)

    async def shutdown(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        if self.km.has_kernel:
            await self.km.shutdown_kernel()


async def interrupt_a_sleep(kernel: Kernel) -> None:
    """Interrupt a cell that sleeps: it ends in KeyboardInterrupt, and the kernel goes idle again.

    Waiting for idle, as a notebook does: ipykernel aborts a request that
    arrives while it still handles the interrupted one.
    """
    msg_id = kernel.kc.execute("import time; time.sleep(60)")
    while True:
        msg = await kernel.kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id and msg["content"].get("execution_state") == "busy":
            break
    await kernel.km.interrupt_kernel()
    reply = await kernel.kc.get_shell_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert (reply["content"]["status"], reply["content"]["ename"]) == ("error", "KeyboardInterrupt")
    while True:
        msg = await kernel.kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id and msg["content"].get("execution_state") == "idle":
            break


@pytest.fixture
async def start_kernel(no_leftovers: None) -> AsyncIterator[Callable[..., Any]]:
    """Start kernels by kernelspec name; they are shut down after the test."""
    kernels: list[Kernel] = []

    async def start(name: str, **kwargs: Any) -> Kernel:
        kernel = Kernel(AsyncKernelManager(kernel_name=name))
        kernels.append(kernel)
        await kernel.start(**kwargs)
        return kernel

    yield start
    await asyncio.gather(*(k.shutdown() for k in kernels))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "docker_client" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)


@pytest.fixture
def notebook_dir(tmp_path: Path) -> Path:
    """A notebook directory with a data file in it, as a user would have."""
    path = tmp_path / "notebooks" / "project"
    path.mkdir(parents=True)
    (path / "data.txt").write_text("data from the host\n")
    os.chmod(tmp_path / "notebooks", 0o755)
    return path


@pytest.fixture
async def jupyter_server(
    no_leftovers: None, jupyter_dirs: Path, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Start real Jupyter server processes (``app``: jupyter_server or jupyterlab) serving ``root_dir``,
    with ``env`` added to the environment.

    They are stopped with SIGTERM after the test, before ``no_leftovers`` looks for containers.
    """
    servers: list[JupyterServer] = []

    async def start(
        root_dir: Path, app: str = "jupyter_server", env: dict[str, str] | None = None
    ) -> JupyterServer:
        log = tmp_path / f"{app}-{len(servers)}.log"
        servers.append(JupyterServer(root_dir, jupyter_dirs / "runtime", log, app, env))
        return await servers[-1].started()

    yield start
    for server in servers:
        server.stop()


@dataclass
class Registry:
    """A real image registry on loopback (Debian's docker-registry), with a test image pushed to it."""

    address: str
    image: str  # the py3 test image plus a layer, pushed; absent from the engine between tests


@pytest.fixture(scope="session")
def registry(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("these tests need Debian's docker-registry; tests/run.sh installs it")
    root = tmp_path_factory.mktemp("registry")
    with socket.socket() as s:  # a free port; the registry takes it a moment later
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    (root / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: {address}\n"
    )
    log = open(root / "registry.log", "wb")
    process = subprocess.Popen([binary, "serve", str(root / "config.yml")], stdout=log, stderr=log)

    def listening() -> bool:
        assert process.poll() is None, (root / "registry.log").read_text()
        host, port = address.split(":")
        return accepts((host, int(port)))

    try:
        wait_until_sync(listening, "the registry to listen", timeout=30)
        # The py3 image plus a layer of its own, so that a pull has something to download.
        image = f"{address}/dockerkernel-test/pullable:1"
        dockerfile = f"FROM {IMAGES['py3']}\nRUN head -c 20000000 /dev/urandom > /opt/pull-test-blob\n"
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=image, rm=True)
        for event in docker_client.api.push(image, stream=True, decode=True):
            assert "error" not in event, event
        docker_client.images.remove(image)
        yield Registry(address, image)
    finally:
        process.terminate()
        process.wait()
        log.close()


def remove_images(client: docker.DockerClient, *names: str) -> None:
    """Remove images that a test made, by name or id; those already gone are fine."""
    for name in names:
        try:
            client.images.remove(name, force=True)
        except docker.errors.ImageNotFound:
            pass


@pytest.fixture
def pulled_image(registry: Registry, docker_client: docker.DockerClient) -> Iterator[str]:
    """The registry's image name, absent from the engine before the test and removed after it."""

    remove_images(docker_client, registry.image)
    yield registry.image
    remove_images(docker_client, registry.image)


@pytest.fixture(scope="session")
def ordinary_user() -> pwd.struct_passwd:
    """The user to run as: this one if not root, else the one tests/run.sh made."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    name = os.environ.get("DOCKERKERNEL_TEST_USER")
    if not name:
        pytest.fail(
            "running as root: set DOCKERKERNEL_TEST_USER to a non-root user "
            "in the docker group (tests/run.sh does)"
        )
    user = pwd.getpwnam(name)
    assert name in grp.getgrnam("docker").gr_mem, f"{name} must be in the docker group"
    return user


# Where tests put what other users run or read. Not $TMPDIR, nor the checkout: either may be
# private to root (a clone under /root, a 0700 folder of mktemp's, a private TMPDIR).
PUBLIC_TMP = "/var/tmp"


def public_tempdir(prefix: str) -> Path:
    """A new folder that other users can traverse (mode 0755), outside any private folder of root's."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=PUBLIC_TMP))
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="session")
def public_scripts() -> Iterator[Path]:
    """The test scripts that other users run, copied where they can read them."""
    folder = public_tempdir("dockerkernel-scripts-")
    for name in ("user_session.py", "sniffer.py"):
        shutil.copy(Path(__file__).with_name(name), folder / name)
        os.chmod(folder / name, 0o644)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def user_workdir(ordinary_user: pwd.struct_passwd) -> Iterator[Path]:
    """A folder of the ordinary user's, with its Jupyter directories in it."""
    path = public_tempdir("dockerkernel-user-")
    if os.geteuid() == 0:
        os.chown(path, ordinary_user.pw_uid, ordinary_user.pw_gid)
    yield path
    shutil.rmtree(path)


def as_user(user: pwd.struct_passwd, command: list[str]) -> list[str]:
    """``command`` run as ``user``, with its supplementary groups, when this process is root."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", *command]


def user_env(workdir: Path, **extra: str) -> dict[str, str]:
    """A plain environment for a process of the ordinary user, its Jupyter files in ``workdir``."""
    env = {
        "HOME": str(workdir),
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "JUPYTER_DATA_DIR": str(workdir / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    if "DOCKER_HOST" in os.environ:
        env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    return {**env, **extra}


@dataclass
class UserSession:
    """A kernel of the ordinary user's (tests/user_session.py), started in a process of its own."""

    process: subprocess.Popen[str]
    workdir: Path  # its HOME, with its Jupyter files
    outputs: list[str] = field(default_factory=list)
    container: str = ""
    ip: str = ""  # where its channels are: over ipc, the sockets' path in its folder
    error: str = ""  # why the kernel could not start

    def result(self) -> UserSession:
        """Wait for the cells' outputs, or the start's error."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            with self.process:
                _, err = self.process.communicate(timeout=60)
            raise AssertionError(f"the user's kernel session failed:\n{err[-3000:]}")
        result = json.loads(line)
        self.outputs, self.container = result.get("outputs", []), result.get("container", "")
        self.ip = result.get("ip", "")
        self.error = result.get("error", "")
        return self

    def close(self) -> None:
        """End the session: its kernel shuts down."""
        with self.process:  # closes the pipes
            self.process.communicate(timeout=60)


def spawn_session(
    scripts: Path,
    user: pwd.struct_passwd | None,
    workdir: Path,
    args: dict[str, Any],
    *,
    wrap: Callable[[list[str]], list[str]] = list,
    env: dict[str, str] | None = None,
) -> UserSession:
    """Start tests/user_session.py, from ``scripts`` (the public_scripts fixture), with ``args``, as
    ``user`` (None: this process's), in ``workdir``.

    ``wrap`` turns the command into the one run, e.g. in another network namespace.
    """
    command = [sys.executable, str(scripts / "user_session.py"), json.dumps(args)]
    process = subprocess.Popen(
        wrap(as_user(user, command) if user is not None else command),
        cwd=workdir,
        env=user_env(workdir, **(env or {})),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return UserSession(process, workdir)


@pytest.fixture
def user_session(
    ordinary_user: pwd.struct_passwd, user_workdir: Path, public_scripts: Path
) -> Iterator[Callable[..., UserSession]]:
    """Run cells in a kernel of the ordinary user: ``install`` args, ``cells``, ``cwd``; ``keep`` it up."""
    sessions: list[UserSession] = []

    def run(
        install: list[str], cells: list[str], cwd: Path | None = None, keep: bool = False, **env: str
    ) -> UserSession:
        args = {"install": install, "cells": cells, "cwd": str(cwd or user_workdir), "keep": keep}
        session = spawn_session(public_scripts, ordinary_user, user_workdir, args, env=env)
        sessions.append(session)
        session.result()
        assert not session.error, session.error
        if not keep:
            session.close()
        return session

    yield run
    for session in sessions:
        session.close()
