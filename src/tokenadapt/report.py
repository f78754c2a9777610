"""Small helpers every result object uses: versions, peak memory, timers, Markdown tables, JSON files."""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def versions() -> dict[str, str]:
    """Versions of the software that decides the numbers a run produces."""
    import tokenizers
    import torch
    import transformers

    from tokenadapt import __version__

    return {
        "tokenadapt": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "platform": f"{sys.platform}-{platform.machine()}",
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class Timings(dict[str, float]):
    """Named wall-clock durations in seconds; `with timings.stage("embed"): ...` adds one."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 3)


def time_and_memory_line(timings: dict[str, float], peak_rss_mb: float) -> str:
    """One line for a result's Markdown: total and per-stage seconds, and peak memory.

    >>> time_and_memory_line({"load": 1.0, "save": 0.5}, 812.4)
    'Time 1.5 s (load 1.0, save 0.5); peak RSS 812 MiB.'
    """
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    return f"Time {sum(timings.values()):.1f} s ({stages}); peak RSS {peak_rss_mb:.0f} MiB."


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats are shown with 3 decimals.

    >>> print(markdown_table(["a", "b"], [[1, 0.5]]))
    | a | b |
    |---|---|
    | 1 | 0.500 |
    """

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def json_text(data: Any) -> str:
    """How tokenadapt writes JSON: indented, UTF-8 as it is, anything else as its str()."""
    return json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"


def write_json(path: Path, data: Any) -> None:
    path.write_text(json_text(data), encoding="utf-8")
