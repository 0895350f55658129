"""What a person sees on the console: lines (`Console`) and the live status line (`Progress`),
and the names and rounding of every figure people read (`names`).

Room rule: ui/ may import only config, objectives and the lowest floors (files, threads); it
knows no Optuna, MLflow or torch: the rooms above hand it plain values or typed records that
meet its Protocols (`console.Figures`).
"""

from tnsearch.ui.console import Console, error, warn
from tnsearch.ui.progress import Progress, Snapshot, Steps

__all__ = ["Console", "Progress", "Snapshot", "Steps", "error", "warn"]
