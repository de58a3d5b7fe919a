"""The run folder's safety rules, in one place:

- one writer at a time: every stage holds an exclusive advisory lock on ``<run>/.actlora.lock`` (rank 0 under
  torchrun; the kernel drops it when the process dies, even by kill -9, so no stale lock is ever left);
- nothing is deleted that actlora did not make: every folder it makes holds a ``.actlora`` marker, and only a
  folder with one is ever removed;
- nothing is written through a link planted in the run folder: a path that resolves outside ``output_dir`` is
  refused;
- a finished run is replaced only when asked (``--overwrite``), and then set aside in ``<run>/.replaced/``
  until the new run has finished, never deleted first.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .errors import ActloraError, ConfigError, Problem

MARKER = ".actlora"
LOCK = ".actlora.lock"
REPLACED = ".replaced"

F = TypeVar("F", bound=Callable[..., Any])


class RunFolderBusy(ActloraError):
    """Another actlora process holds the run folder."""


def prepare(run_dir: Path) -> Path:
    """Create the run folder (or check the given one is a folder we can write), before any work is done."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError([Problem("output_dir", f"'{run_dir}' is a file, not a folder", "choose a folder")])
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            [
                Problem(
                    "output_dir",
                    f"cannot write to '{run_dir}': {exc.strerror or exc}",
                    "choose a writable folder",
                )
            ]
        ) from None
    return run_dir


@contextlib.contextmanager
def locked(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold the run folder exclusively for the block; a second process fails at once, naming the holder.

    The lock file is removed when the block ends, and a run folder this call created is removed again when the
    block left it empty (a stage that failed before writing leaves nothing behind)."""
    if not enabled:
        yield
        return
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    prepare(run_dir)
    handle = _acquire(run_dir / LOCK)
    try:
        yield
    finally:
        # unlink while still holding it: a process that opened this file meanwhile sees it is gone and retries
        (run_dir / LOCK).unlink(missing_ok=True)
        handle.close()  # closing drops the lock
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty


def _acquire(path: Path):
    import fcntl

    for _ in range(10):
        handle = open(path, "a+")  # noqa: SIM115 (held open while the stage runs)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderBusy(
                Problem(
                    str(path.parent),
                    f"another actlora process is writing to this run folder ({holder})",
                    "wait for it to finish, or give this run another output_dir",
                )
            ) from None
        # the holder may have removed the file between our open and flock: then this lock guards nothing
        if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            return handle
        handle.close()
    raise RunFolderBusy(Problem(str(path.parent), "the run folder's lock keeps changing hands", "try again"))


def exclusive(stage: F) -> F:
    """Decorate a stage ``fn(cfg, ...)``: it runs holding its run folder (rank 0 only: other ranks write
    nothing there)."""

    @functools.wraps(stage)
    def wrapper(cfg, *args: Any, **kwargs: Any):
        with locked(cfg.run_dir, enabled=int(os.environ.get("RANK", "0")) == 0):
            return stage(cfg, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def inside(path: Path, run_dir: Path) -> Path:
    """``path``, after checking that it (following any links) stays inside ``run_dir``."""
    root = Path(run_dir).resolve()
    resolved = Path(path).resolve()
    if resolved != root and root not in resolved.parents:
        raise ConfigError(
            [
                Problem(
                    str(path),
                    f"leads outside the run folder (to {resolved}); actlora does not write through links",
                    "remove the link, or give the run another output_dir",
                )
            ]
        )
    return Path(path)


def mark(folder: Path) -> None:
    """Record that actlora made ``folder`` (so a later run may replace it)."""
    (Path(folder) / MARKER).write_text("made by actlora; a later run may replace this folder\n")


def ours(folder: Path) -> bool:
    return Path(folder).is_dir() and not Path(folder).is_symlink() and (Path(folder) / MARKER).is_file()


def remove(folder: Path, run_dir: Path) -> None:
    """Delete a folder actlora made; refuse one it did not make (no marker), whatever its name."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    require_ours(folder)
    shutil.rmtree(inside(folder, run_dir))


def require_ours(folder: Path) -> None:
    """Refuse a folder actlora did not make (no marker), whatever its name: it is the user's."""
    if not ours(folder):
        problem = Problem(
            str(folder),
            "was not made by actlora (no .actlora marker in it), so it is not replaced",
            "move it out of the run folder, or give the run another output_dir",
        )
        raise ConfigError([problem])


def set_aside(run_dir: Path, names: list[str]) -> Path | None:
    """Move the named outputs of an earlier run into ``<run>/.replaced/`` (renames: nothing is copied or
    deleted); folders among them must be actlora's. Returns that folder, or None when there was nothing.

    When ``.replaced`` is already there, an earlier replacement never finished: the finished run it holds is
    kept, and what the unfinished attempt left is removed instead."""
    run_dir = Path(run_dir)
    present = [run_dir / n for n in names if (run_dir / n).exists() or (run_dir / n).is_symlink()]
    if not present:
        return None
    for path in present:
        if path.is_dir():
            require_ours(path)
        inside(path, run_dir)
    aside = run_dir / REPLACED
    if aside.exists() or aside.is_symlink():
        require_ours(aside)
        for path in present:
            if path.is_dir():
                remove(path, run_dir)
            else:
                path.unlink()
        return aside
    aside.mkdir()
    mark(aside)
    for path in present:
        path.rename(aside / path.name)
    return aside
