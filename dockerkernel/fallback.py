"""A kernel that only reports why the real one could not start.

When a Docker kernel cannot start inside a Jupyter server (image missing, no
GPUs, ipykernel absent, the kernel exiting during start-up...), the provisioner
starts this tiny kernel on the host instead, on the same ports. It runs no code:
every execution answers with the error, one sentence naming the problem and the
fix, so that the user reads it in the notebook, where they are looking, rather
than watching a restart loop. It is a Python process of the server's own
environment (ipykernel is a dependency of dockerkernel).

    python -m dockerkernel.fallback -f CONNECTION_FILE    (message in $DOCKERKERNEL_FALLBACK_MESSAGE)
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any

from ipykernel.kernelapp import IPKernelApp
from ipykernel.kernelbase import Kernel

from . import __version__

MESSAGE_ENV = "DOCKERKERNEL_FALLBACK_MESSAGE"
ENAME = "DockerKernelError"


def start(connection_file: str, message: str) -> tuple[subprocess.Popen[bytes], Future[int]]:
    """Run the fallback kernel on the host, on the channels of ``connection_file``; it shows ``message``.

    Returns the process and a future for its exit status.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "dockerkernel.fallback", "-f", connection_file],
        env={**os.environ, MESSAGE_ENV: message},
        stdin=subprocess.DEVNULL,
    )
    status: Future[int] = Future()
    status.set_running_or_notify_cancel()
    threading.Thread(target=lambda: status.set_result(process.wait()), daemon=True).start()
    return process, status


class FallbackKernel(Kernel):
    implementation = "dockerkernel-fallback"
    implementation_version = __version__
    language_info = {"name": "python", "mimetype": "text/x-python", "file_extension": ".py"}
    banner = "dockerkernel could not start this kernel; every execution shows why."

    @property
    def message(self) -> str:
        return os.environ.get(MESSAGE_ENV, "The Docker kernel could not start: see the Jupyter server's log.")

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        error = {"ename": ENAME, "evalue": self.message, "traceback": [f"{ENAME}: {self.message}"]}
        if not silent:
            self.send_response(self.iopub_socket, "error", error)  # type: ignore[no-untyped-call]
        return {"status": "error", "execution_count": self.execution_count, **error}


def main() -> None:
    IPKernelApp.launch_instance(kernel_class=FallbackKernel)


if __name__ == "__main__":
    main()
