"""`dockerkernel run`: notebooks on several kernels, with a table of how each went and their differences."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from .. import errors
from ..errors import DockerKernelError
from .kernels import text_table


def cmd_run(args: argparse.Namespace) -> int:
    import datetime
    import tempfile
    from pathlib import Path

    from .. import run

    if args.reproduce and (args.kernels or args.notebooks):
        raise DockerKernelError(errors.REPRODUCE_ALONE)
    if not args.kernels and not args.reproduce:
        raise DockerKernelError(errors.RUN_NO_KERNELS)
    if not args.notebooks and not args.reproduce:
        raise DockerKernelError(errors.NOTEBOOK_MISSING.format(path="(none given)"))
    options = run.Options(
        run.parse_parameters(args.parameter, args.parameters_file), args.timeout, args.parallel
    )
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    output = Path(args.output_dir or os.path.join("dockerkernel-runs", stamp))
    if not args.reproduce:
        return _run_jobs(args, run.plan_jobs(args.notebooks, args.kernels, output), options, output)
    with tempfile.TemporaryDirectory(prefix="dockerkernel-reproduce-") as specs:
        job = run.reproduction(Path(args.reproduce), output, args.gpus, Path(specs))
        with run.on_jupyter_path(Path(specs)):  # the recorded kernel's kernelspec goes with the folder
            return _run_jobs(args, run.plan_jobs([args.reproduce], [job.kernel], output), options, output)


def _run_jobs(args: argparse.Namespace, jobs: Sequence[Any], options: Any, output: Any) -> int:
    """Run ``jobs``, with a line of progress each, then print their table; the exit status."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from .. import run

    outcomes = [run.Outcome(job) for job in jobs]
    progress = Console(stderr=True)

    def line(o: run.Outcome) -> str:
        where = f"cell {o.cell} of {o.cells}" if o.cell else ""
        state = {"running": where or "starting", "ok": f"done in {o.seconds:.1f} s"}.get(o.status, o.status)
        return f"{o.job.notebook.name} on {o.job.kernel}: {state}"

    def board() -> Table:
        table = Table.grid(padding=(0, 1))
        for o in outcomes:
            table.add_row(line(o))
        return table

    live = Live(board(), console=progress, auto_refresh=False) if progress.is_terminal else None

    def changed(o: run.Outcome) -> None:
        if live is not None:
            live.update(board(), refresh=True)
        else:
            print(line(o), file=sys.stderr, flush=True)

    if live is not None:
        live.start()
    try:
        interrupted = run.run_jobs(outcomes, options, changed)
    finally:
        if live is not None:
            live.stop()
    if args.compare:
        _compare_runs(outcomes, args.kernels, output)
    rows = [("NOTEBOOK", "KERNEL", "IMAGE", "STATUS", "DURATION", "FIRST ERROR")]
    for o in outcomes:
        error = f"cell {o.cell}: {o.error}" if o.error and o.cell else o.error
        duration = f"{o.seconds:.1f} s" if o.seconds else "-"
        rows.append((o.job.notebook.name, o.job.kernel, o.image or "-", o.status, duration, error or "-"))
    print(text_table(rows))
    print(f"Results in {output}{os.sep}")
    if interrupted:
        return 130
    return 0 if all(o.status == "ok" for o in outcomes) else 1


def _compare_runs(outcomes: Sequence[Any], kernels: Sequence[str], output: Any) -> None:
    """Print and write, per notebook, which code cells' outputs differ between its kernels."""
    from .. import compare, run

    by_notebook: dict[Any, dict[str, Any]] = {}
    for o in outcomes:
        if o.job.output.exists():
            by_notebook.setdefault(o.job.notebook, {})[o.job.kernel] = run.read_notebook(o.job.output)
    for notebook, runs in by_notebook.items():
        if len(runs) < 2:
            continue
        ran = [k for k in kernels if k in runs]
        cells = compare.compare({k: runs[k] for k in ran})
        differing = [c for c in cells if c.differs]
        print(
            f"\n{notebook.name}: {len(differing)} of {len(cells)} code cells differ between {', '.join(ran)}."
        )
        rows = [("CELL", "SOURCE", *(f"{k} vs {ran[0]}" for k in ran[1:]))]
        for c in cells:
            rows.append(
                (str(c.index), c.source[:50], *("differs" if k in c.diffs else "same" for k in ran[1:]))
            )
        print(text_table(rows))
        for c in differing:
            for diff in c.diffs.values():
                print(f"\ncell {c.index}:")
                print("\n".join(f"  {line}" for line in diff))
        report = output / f"{notebook.stem}.compare.md"
        report.write_text(compare.markdown_report(notebook.name, cells, ran))
        print(f"\nComparison report: {report}")
    print()
