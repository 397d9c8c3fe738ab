"""The runs of one notebook on several kernels, set side by side cell by cell (pure).

What is compared in a code cell is what a reader sees of it: its streams, its
results' and displays' text, and its error's name and value. Notices that
dockerkernel itself prints (the GPUs a kernel got) are left out: they say
where a run happened, not what it found.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NOTICE_PREFIX = "dockerkernel: "  # every line that a kernel's start-up script prints
DIFF_LINES = 12  # the most lines of one cell's diff in a report


def cell_output(cell: Mapping[str, Any]) -> str:
    """A code cell's outputs as text, in order, without dockerkernel's notices."""
    parts = []
    for output in cell.get("outputs", []):
        kind = output.get("output_type")
        if kind == "stream":
            parts.append(_text(output.get("text", "")))
        elif kind in ("execute_result", "display_data"):
            parts.append(_text(output.get("data", {}).get("text/plain", "")) + "\n")
        elif kind == "error":
            parts.append(f"{output.get('ename', '')}: {output.get('evalue', '')}\n")
    lines = "".join(parts).splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith(NOTICE_PREFIX))


def _text(value: str | Sequence[str]) -> str:
    return value if isinstance(value, str) else "".join(value)


@dataclass(frozen=True)
class CellComparison:
    index: int  # 1-based, in the executed notebook
    source: str  # its first line
    outputs: dict[str, str]  # kernel: output text
    diffs: dict[str, list[str]]  # kernel: unified diff against the first kernel's, where they differ

    @property
    def differs(self) -> bool:
        return bool(self.diffs)


def compare(runs: Mapping[str, Mapping[str, Any]]) -> list[CellComparison]:
    """Each code cell of notebooks executed from one source, ``runs`` by kernel name, first kernel first.

    A cell that one run did not reach (it stopped at an error) has no output there.
    """
    kernels = list(runs)
    cells = [list(nb.get("cells", [])) for nb in runs.values()]
    found = []
    for index in range(max((len(c) for c in cells), default=0)):
        here = [c[index] if index < len(c) else None for c in cells]
        first = next((c for c in here if c is not None), None)
        if first is None or first.get("cell_type") != "code":
            continue
        outputs = {k: cell_output(c) if c is not None else "" for k, c in zip(kernels, here, strict=True)}
        base_kernel = kernels[0]
        diffs = {}
        for kernel in kernels[1:]:
            if outputs[kernel] != outputs[base_kernel]:
                diff = difflib.unified_diff(
                    outputs[base_kernel].splitlines(),
                    outputs[kernel].splitlines(),
                    base_kernel,
                    kernel,
                    lineterm="",
                    n=1,
                )
                diffs[kernel] = list(diff)[:DIFF_LINES]
        source = _text(first.get("source", "")).strip().splitlines()
        found.append(CellComparison(index + 1, source[0] if source else "", outputs, diffs))
    return found


def markdown_report(notebook: str, cells: Sequence[CellComparison], kernels: Sequence[str]) -> str:
    """A comparison report in Markdown: a row per code cell, then each differing cell's diff."""
    differing = [c for c in cells if c.differs]
    lines = [
        f"# {notebook} on {', '.join(kernels)}",
        "",
        f"{len(differing)} of {len(cells)} code cells differ.",
        "",
        "| cell | source | " + " | ".join(f"{k} vs {kernels[0]}" for k in kernels[1:]) + " |",
        "| --- | --- | " + " | ".join("---" for _ in kernels[1:]) + " |",
    ]
    for c in cells:
        verdicts = ["differs" if k in c.diffs else "same" for k in kernels[1:]]
        lines.append(f"| {c.index} | `{_cell_text(c.source)}` | " + " | ".join(verdicts) + " |")
    for c in differing:
        lines += ["", f"## Cell {c.index}: `{_cell_text(c.source)}`"]
        for diff in c.diffs.values():
            lines += ["", "```diff", *diff, "```"]
    return "\n".join(lines) + "\n"


def _cell_text(source: str) -> str:
    return source.replace("|", "\\|").replace("`", "'")[:60]
