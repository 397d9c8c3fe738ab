"""A real Jupyter server process for the tests, and a client for its REST and websocket APIs."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from waiting import wait_until


class JupyterServer:
    """``python -m jupyter_server`` (or ``jupyterlab``) on a free loopback port."""

    def __init__(
        self,
        root_dir: Path,
        runtime_dir: Path,
        log_path: Path,
        app: str = "jupyter_server",
        env: dict[str, str] | None = None,
    ) -> None:
        self.root_dir = root_dir
        self.token = secrets.token_hex(16)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        args = [
            sys.executable, "-m", app, "--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
            f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={root_dir}",
        ]  # fmt: skip
        if os.getuid() == 0:
            args.append("--allow-root")
        self.process = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self.info_file = runtime_dir / f"jpserver-{self.process.pid}.json"
        self.url = ""

    async def started(self, timeout: float = 60) -> JupyterServer:
        """Wait until the server has written its runtime file and answers /api/status."""

        def wrote_runtime_file() -> bool:
            self._check_alive()
            if self.info_file.exists():
                try:
                    self.url = f"http://127.0.0.1:{json.loads(self.info_file.read_text())['port']}"
                except ValueError:  # half written
                    pass
            return bool(self.url)

        async def answers() -> bool:
            self._check_alive()
            try:
                await self.api("GET", "/api/status")
                return True
            except (ConnectionError, HTTPClientError):
                return False

        deadline = time.monotonic() + timeout
        try:
            await wait_until(wrote_runtime_file, "the Jupyter server to write its runtime file", timeout)
            await wait_until(answers, "the Jupyter server to answer /api/status", deadline - time.monotonic())
        except AssertionError as e:
            if "timed out" not in str(e):
                raise  # it exited: the message has its log already
            raise AssertionError(f"{e}:\n{self.log()}") from None
        return self

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"the Jupyter server exited ({self.process.returncode}):\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def lab_url(self, path: str) -> str:
        return f"{self.url}/lab/tree/{path}?token={self.token}"

    async def api(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        """One REST call; its JSON answer, or an HTTPClientError carrying the server's message."""
        request = HTTPRequest(
            self.url + path,
            method=method,
            headers={"Authorization": f"token {self.token}"},
            body=None if body is None and method == "GET" else json.dumps(body or {}),
            allow_nonstandard_methods=True,
            request_timeout=timeout,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            if e.response is not None and e.response.body:
                e.message = json.loads(e.response.body).get("message", e.message)
            raise
        return json.loads(response.body) if response.body else None

    async def kernel_websocket(self, kernel_id: str, session_id: str) -> KernelWebsocket:
        url = self.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels?session_id={session_id}"
        request = HTTPRequest(url, headers={"Authorization": f"token {self.token}"})
        return KernelWebsocket(await websocket_connect(request))

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, as a user's Ctrl-C would: the server shuts its kernels down."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@dataclass
class Execution:
    status: str
    stdout: str
    ename: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)


class KernelWebsocket:
    """The kernel channels over a server's websocket, in the JSON message format."""

    def __init__(self, connection: WebSocketClientConnection) -> None:
        self.connection = connection
        self.session = Session()

    def send(self, msg_type: str, content: dict[str, Any], channel: str = "shell") -> str:
        msg = self.session.msg(msg_type, content)
        msg["channel"] = channel
        self.connection.write_message(json.dumps(msg, default=json_default))
        return str(msg["header"]["msg_id"])

    async def receive(self, timeout: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.connection.read_message(), timeout)
        assert raw is not None, "the kernel websocket closed"
        return dict(json.loads(raw))

    async def wait_for(self, msg_id: str, channel: str, msg_type: str, timeout: float = 60) -> dict[str, Any]:
        """The first message of a type on a channel in reply to ``msg_id``."""
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.receive(max(deadline - time.monotonic(), 0.01))
            if (msg["channel"], msg["msg_type"], msg["parent_header"].get("msg_id")) == (
                channel,
                msg_type,
                msg_id,
            ):
                return msg

    async def execute(self, code: str, timeout: float = 60) -> Execution:
        """Run ``code``; its reply and stdout, once the kernel is idle again."""
        msg_id = self.send("execute_request", {"code": code, "silent": False, "allow_stdin": False})
        deadline = time.monotonic() + timeout
        messages: list[dict[str, Any]] = []
        reply: dict[str, Any] | None = None
        idle = False
        while reply is None or not idle:
            msg = await self.receive(max(deadline - time.monotonic(), 0.01))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            messages.append(msg)
            if msg["channel"] == "shell" and msg["msg_type"] == "execute_reply":
                reply = msg
            idle = idle or msg["content"].get("execution_state") == "idle"
        stdout = "".join(
            m["content"]["text"]
            for m in messages
            if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
        )
        content = reply["content"]
        return Execution(content["status"], stdout, content.get("ename", ""), messages)

    def close(self) -> None:
        self.connection.close()
