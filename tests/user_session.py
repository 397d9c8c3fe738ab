"""Run by tests as another user: install a kernelspec, run cells in a kernel, print the outputs as JSON.

    python user_session.py '{"install": [...], "cells": [...], "cwd": "...", "keep": false}'

With "keep", the kernel stays up after the cells, until stdin closes: a live
kernel of that user for the test to look at. The last stdout line is
{"outputs": [...], "container": ID}; each output is the cell's stdout, or
"ERROR ename" for a failed cell.
"""

import json
import os
import subprocess
import sys

from jupyter_client.manager import KernelManager

args = json.loads(sys.argv[1])
install = [
    sys.executable,
    "-m",
    "dockerkernel",
    "install",
    "--name",
    "session",
    "--replace",
    *args["install"],
]
subprocess.run(install, check=True, stdout=subprocess.DEVNULL)
km = KernelManager(kernel_name="session")
km.start_kernel(cwd=args.get("cwd") or os.getcwd())
kc = km.client()
kc.start_channels()
try:
    kc.wait_for_ready(timeout=60)
    outputs = []
    for cell in args["cells"]:
        text: list[str] = []
        reply = kc.execute_interactive(
            cell, timeout=60, output_hook=lambda m, text=text: text.append(m["content"].get("text", ""))
        )
        ok = reply["content"]["status"] == "ok"
        outputs.append("".join(text) if ok else "ERROR " + reply["content"]["ename"])
    print(json.dumps({"outputs": outputs, "container": km.provisioner.container_id}), flush=True)
    if args.get("keep"):
        sys.stdin.read()
finally:
    kc.stop_channels()
    km.shutdown_kernel()
