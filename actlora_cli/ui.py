"""Console output: results to stdout (pipeline-friendly), progress and notes to stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Piped or redirected (a pipeline, nohup, a Slurm log), rich would hard-wrap at 80 columns, cutting paths
# and messages that scripts grep for: soft wrap leaves long lines whole there; a terminal still wraps to its
# width.
out = Console(soft_wrap=not sys.stdout.isatty())
err = Console(stderr=True, soft_wrap=not sys.stderr.isatty())


def quiet() -> bool:
    """True on non-main DDP ranks: only rank 0 talks."""
    return int(os.environ.get("RANK", "0")) != 0


def note(message: str) -> None:
    if not quiet():
        err.print(message)


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr; yields ``advance(n=1, **fields)``. Silent on non-main ranks."""
    if quiet():
        yield lambda *a, **k: None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None) -> None:
            bar.update(task, advance=n, **({"info": info} if info is not None else {}))

        yield advance
