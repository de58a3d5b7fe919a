"""Studies on per-layer score vectors (sections 7.2-7.5 of the Act-LoRA paper), pure Python (numpy/scipy,
no torch): cumulative-importance thresholds, seed stability, task agreement, and correlation with a
reference importance such as ablation. Each study module has a ``markdown(result)`` renderer;
report.write_study writes a result as a 'study' JSON artefact plus Markdown. Figures live in
``actlora_cli.analysis.plots`` (import it explicitly: it needs matplotlib)."""

from .agreement import task_agreement
from .correlation import correlate_with_reference
from .report import markdown_table, write_study
from .stability import seed_stability
from .thresholds import threshold_table

__all__ = [
    "correlate_with_reference",
    "markdown_table",
    "seed_stability",
    "task_agreement",
    "threshold_table",
    "write_study",
]
