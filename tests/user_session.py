"""Run by tests as another user: install a kernelspec, run cells in a kernel, print the outputs as JSON.

    python user_session.py '{"install": [...], "cells": [...], "cwd": "...", "keep": false, "name": "..."}'

Each output is the cell's stdout, or "ERROR ename" for a failed cell. Two
cells are actions instead of code: "%interrupt" runs a long sleep and
interrupts it once the kernel is busy, "%restart" restarts the kernel. With
"keep", the kernel stays up after the cells, until stdin closes: a live kernel
of that user for the test to look at. The last stdout line is
{"outputs": [...], "container": ID, "ip": IP}, or {"error": MESSAGE} when the kernel
could not start. The kernelspec is named "name", by default "session".
"""

import json
import os
import subprocess
import sys
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from dockerkernel.errors import DockerKernelError


def run_cell(kc: BlockingKernelClient, code: str) -> str:
    text: list[str] = []
    reply = kc.execute_interactive(
        code, timeout=60, output_hook=lambda m: text.append(m["content"].get("text", ""))
    )
    content = reply["content"]
    return "".join(text) if content["status"] == "ok" else "ERROR " + content.get("ename", content["status"])


def interrupt(km: KernelManager, kc: BlockingKernelClient) -> str:
    msg_id = kc.execute("import time; time.sleep(60)")
    while True:
        msg: dict[str, Any] = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id and msg["content"].get("execution_state") == "busy":
            break
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=10)
    # Then idle, as a notebook waits for it: a request sent while the kernel still handles the
    # interrupted one may be aborted (ipykernel aborts what arrives right after an error).
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id and msg["content"].get("execution_state") == "idle":
            break
    return "ERROR " + reply["content"].get("ename", "") if reply["content"]["status"] == "error" else "ok"


args = json.loads(sys.argv[1])
install = [
    sys.executable,
    "-m",
    "dockerkernel",
    "install",
    "--name",
    args.get("name", "session"),
    "--replace",
    *args["install"],
]
subprocess.run(install, check=True, stdout=subprocess.DEVNULL)
km = KernelManager(kernel_name=args.get("name", "session"))
try:
    km.start_kernel(cwd=args.get("cwd") or os.getcwd())
except DockerKernelError as e:
    print(json.dumps({"error": str(e)}), flush=True)
    sys.exit(1)
kc = km.client()
kc.start_channels()
try:
    kc.wait_for_ready(timeout=60)
    outputs = []
    for cell in args["cells"]:
        if cell == "%interrupt":
            outputs.append(interrupt(km, kc))
        elif cell == "%restart":
            km.restart_kernel()
            kc.wait_for_ready(timeout=60)
            outputs.append("restarted")
        else:
            outputs.append(run_cell(kc, cell))
    result = {"outputs": outputs, "container": km.provisioner.container_id, "ip": km.ip}
    print(json.dumps(result), flush=True)
    if args.get("keep"):
        sys.stdin.read()
finally:
    kc.stop_channels()
    km.shutdown_kernel()
