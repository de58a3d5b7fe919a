"""Study output: Markdown tables with uniform number formatting, links to the charts that exist, and the
study's JSON artefact (kind 'study') plus its Markdown and HTML page, side by side."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from .. import __version__, html_report
from ..artifacts import atomic_write_text, write_artifact
from ..errors import ActloraError, Problem


def format_value(value: Any) -> str:
    """A table cell: floats to 4 decimals (3 significant digits below 0.001, where 4 decimals would read as
    0), None and NaN as 'n/a', anything else as str()."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"
    return str(value)


def mean_std(summary: dict[str, Any]) -> str:
    """'mean ± std' of a {"mean", "std"} summary, or 'n/a' when the mean is undefined."""
    if summary["mean"] is None:
        return "n/a"
    return f"{format_value(summary['mean'])} ± {format_value(summary['std'])}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table; cells are formatted with format_value and '|' is escaped."""
    bad = [i for i, row in enumerate(rows) if len(row) != len(headers)]
    if bad:
        raise ValueError(f"rows {bad} do not have {len(headers)} cells like the headers {headers}")

    def line(cells: list[Any]) -> str:
        return "| " + " | ".join(format_value(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *map(line, rows)]) + "\n"


def image(folder: Path, name: str, alt: str) -> str:
    """A Markdown image line for the chart ``name`` beside the report, or nothing when there is no such file
    (a report links only what it can show)."""
    return f"\n![{alt}]({name})\n" if (Path(folder) / name).is_file() else ""


def write_study(
    out_dir: Path | str, name: str, result: dict[str, Any], markdown: str
) -> tuple[Path, Path, Path]:
    """Write ``<out_dir>/<name>.json`` (a 'study' artefact holding ``result``), ``<name>.md`` and its page
    ``<name>.html`` (html_report), each atomically; returns their paths. A NaN or infinity in ``result`` is
    refused: it is not valid JSON."""
    out_dir = Path(out_dir)
    try:
        json.dumps(result, allow_nan=False)
    except ValueError:
        raise ActloraError(
            Problem(
                f"study '{name}'",
                "result holds NaN or infinity, which is not valid JSON",
                "report an undefined value as None with its reason",
            )
        ) from None
    payload = {
        "study": name,
        "actlora": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "result": result,
    }
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    write_artifact(json_path, "study", payload)
    markdown = markdown if markdown.endswith("\n") else markdown + "\n"
    atomic_write_text(md_path, markdown)
    return json_path, md_path, html_report.write(md_path, markdown, study_title(name, result))


def study_title(name: str, result: dict[str, Any]) -> str:
    """A study page's title: the study, and the model when the result names it (the task is not always one:
    the tasks study ranges over several)."""
    model = result.get("model")
    return f"{name} study" + (f": {model}" if isinstance(model, str) else "")
