"""Known, user-fixable errors. The CLI prints them without a traceback and exits with code 2."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem: where (a config key path, file or flag), what is wrong, and how to fix it."""

    where: str
    what: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" + (f"; {self.fix}" if self.fix else "")


class ActloraError(Exception):
    """Base of every error the user can fix; carries one or more problems."""

    exit_code = 2  # the command line's exit status for it (see cli._handled)

    def __init__(self, problems: list[Problem] | Problem | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("actlora", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(ActloraError):
    """The config (file, overrides or flags) is invalid."""


class ArtifactError(ActloraError):
    """An artefact is missing, of the wrong kind or version, or made for another model."""


class DataError(ActloraError):
    """Task data cannot be found or read."""


class ModelError(ActloraError):
    """The model cannot be loaded, or its architecture is not supported."""
