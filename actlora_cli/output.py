"""--quiet and --json on every command, declared once: ``Typer`` is typer.Typer whose ``command`` adds the two
flags to each command it registers and runs the command in that output mode (ui.output_mode). The renderers
(render.py) read the mode: quiet shows nothing but warnings and errors; json writes the result as one JSON
document on stdout. A command under --json that ends without writing exactly one document is a bug of
actlora's (a renderer that does not know --json), and fails loudly rather than print nothing or two.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from . import ui

QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress bars, notes or result tables; warnings and errors still go to stderr.",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Write the result (the artefact the command wrote) as one JSON document on stdout, and nothing "
        "else there; implies --quiet.",
    ),
]


def with_output_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with ``--quiet/-q`` and ``--json`` added to its options, run in that output mode."""
    signature = inspect.signature(command, eval_str=True)
    assert not {"quiet", "json_output"} & set(signature.parameters), command.__name__

    @functools.wraps(command)
    def run(*args: Any, quiet: bool = False, json_output: bool = False, **kwargs: Any) -> Any:
        with ui.output_mode(quiet=quiet, as_json=json_output):
            result = command(*args, **kwargs)
            if ui.json_output() and ui.main_rank() and ui.documents() != 1:
                raise RuntimeError(
                    f"{command.__name__} wrote {ui.documents()} JSON documents under --json, not one: its "
                    "renderer must be a render._result"
                )
        return result

    added = {"quiet": QuietOpt, "json_output": JsonOpt}
    flags = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=annotation)
        for name, annotation in added.items()
    ]
    run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *flags])
    # typer reads the annotations too: the evaluated ones (not the command's strings), with the two flags
    run.__annotations__ = {**{p.name: p.annotation for p in signature.parameters.values()}, **added}
    return run


def _flags_take_no_value() -> None:
    """typer's rich help (0.29) shows a ``<bool>`` type beside every flag (--help included), as if it took a
    value; its plain help and click show none. Show none there too: a flag's type column stays empty."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_flags_take_no_value", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._flags_take_no_value = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()


class Typer(typer.Typer):
    """typer.Typer whose every command takes --quiet/-q and --json (with_output_flags)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)

        def decorator(command: Callable[..., Any]) -> Callable[..., Any]:
            register(with_output_flags(command))
            return command

        return decorator
