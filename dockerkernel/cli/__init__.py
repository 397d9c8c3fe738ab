"""The `dockerkernel` command: install and manage Docker kernelspecs, run notebooks, list and prune kernels.

One module per group of commands (install, kernels, runs), and the parser,
whose options take their help from the settings. Each command calls the
library, which returns data, and prints it. A DockerKernelError becomes one
line on stderr and exit status 1; `--debug` shows the traceback too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from ..errors import DockerKernelError
from .install import cmd_install, cmd_pull, cmd_scan, cmd_uninstall
from .kernels import cmd_doctor, cmd_launch, cmd_list, cmd_pin, cmd_presets, cmd_prune, cmd_ps, cmd_unpin
from .parser import build_parser
from .runs import cmd_run

__all__ = ["build_parser", "main"]

COMMANDS = {
    "install": cmd_install,
    "uninstall": cmd_uninstall,
    "list": cmd_list,
    "pin": cmd_pin,
    "unpin": cmd_unpin,
    "presets": cmd_presets,
    "scan": cmd_scan,
    "pull": cmd_pull,
    "ps": cmd_ps,
    "run": cmd_run,
    "prune": cmd_prune,
    "doctor": cmd_doctor,
    "launch": cmd_launch,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The launcher's log (a pull's progress, say) is the kernel's stderr: the client shows or keeps it.
    level = logging.DEBUG if args.debug else logging.INFO if args.command == "launch" else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s")
    try:
        return COMMANDS[args.command](args)
    except DockerKernelError as e:
        if args.debug:
            logging.exception("dockerkernel failed")
        print(f"dockerkernel: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
