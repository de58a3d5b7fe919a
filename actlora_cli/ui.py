"""Console output: results to stdout (pipeline-friendly), progress and notes to stderr.

The output mode (``--quiet``, ``--json``; see output.py) lives here, so every stage and renderer reads one
switch: quiet hides progress, notes and result tables; json also hides them and writes the result as one JSON
document on stdout instead. Warnings and errors go to stderr in every mode.
"""

from __future__ import annotations

import contextlib
import json
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


# the output mode of the command running: set by output_mode, read through quiet() and json_output()
_mode = {"quiet": False, "json": False, "documents": 0}


def main_rank() -> bool:
    """False on non-main DDP ranks: only rank 0 talks."""
    return int(os.environ.get("RANK", "0")) == 0


def quiet() -> bool:
    """True when progress, notes and result tables are not shown: --quiet, --json, or a non-main DDP rank."""
    return _mode["quiet"] or _mode["json"] or not main_rank()


def json_output() -> bool:
    """True under --json: the result is one JSON document on stdout (json_document), nothing else is."""
    return _mode["json"]


@contextlib.contextmanager
def output_mode(quiet: bool = False, as_json: bool = False) -> Iterator[None]:
    """Quiet or JSON output for the duration (on top of the mode already set); the earlier mode after."""
    saved = dict(_mode)
    _mode.update(quiet=saved["quiet"] or quiet, json=saved["json"] or as_json, documents=0)
    try:
        yield
    finally:
        _mode.update(saved)


def documents() -> int:
    """How many JSON documents json_document has written in the current output mode."""
    return _mode["documents"]


def json_document(doc: object) -> None:
    """The result as one JSON document on stdout, written as artefacts are (artifacts.write_artifact), so it
    equals the file the stage wrote; by rank 0 only."""
    if not main_rank():
        return
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()
    _mode["documents"] += 1


def note(message: str) -> None:
    if not quiet():
        err.print(message)


def tell(message: str) -> None:
    """A message on stderr in every mode, by rank 0 only: what the user asked for happened (a Ctrl-C's
    checkpoint)."""
    if main_rank():
        err.print(message)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """While something slow without steps runs (loading a model): a spinner with ``message`` on a terminal,
    the message as one plain line otherwise; nothing when quiet."""
    if quiet():
        yield
    elif err.is_terminal:
        with err.status(message):
            yield
    else:
        print(message, file=sys.stderr, flush=True)
        yield


def warn(message: str) -> None:
    """A warning on stderr, shown under --quiet and --json too; by rank 0 only (all ranks would repeat it)."""
    if main_rank():
        err.print(f"[yellow]warning:[/] {message}")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@contextlib.contextmanager
def plain_progress(description: str, total: int, every: int) -> Iterator[Callable[..., None]]:
    """Progress as plain lines on stderr, one every ``every`` units and one at the end: what a log file
    (nohup, Slurm, a pipe) can hold, where a live bar would leave nothing readable between epoch ends."""
    import time

    began, state = time.perf_counter(), {"done": 0, "info": "", "shown": 0}

    def line() -> None:
        done, elapsed = state["done"], time.perf_counter() - began
        eta = elapsed / done * (total - done) if done else 0.0
        info = f"  {state['info']}" if state["info"] else ""
        print(f"{description} {done}/{total}{info}  elapsed {_clock(elapsed)}  eta {_clock(eta)}",
              file=sys.stderr, flush=True)  # fmt: skip
        state["shown"] = done

    def advance(n: int = 1, info: str | None = None) -> None:
        state["done"] += n
        state["info"] = info if info is not None else state["info"]
        if state["done"] // every > state["shown"] // every:
            line()

    yield advance
    if state["shown"] != state["done"]:
        line()


@contextlib.contextmanager
def progress(description: str, total: int, every: int | None = None) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr; yields ``advance(n=1, **fields)``. Silent on non-main ranks. When stderr is
    not a terminal, plain lines instead, every ``every`` units (by default about every 5 %)."""
    if quiet():
        yield lambda *a, **k: None
        return
    if not err.is_terminal:
        with plain_progress(description, total, every or max(1, total // 20)) as advance:
            yield advance
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
