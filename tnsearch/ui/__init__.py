"""What a person sees on the console: lines (`Console`) and the live status line (`Progress`)."""

from tnsearch.ui.console import Console, error, warn
from tnsearch.ui.progress import Progress, Snapshot, Steps

__all__ = ["Console", "Progress", "Snapshot", "Steps", "error", "warn"]
