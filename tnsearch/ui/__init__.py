"""What a person sees on the console: lines (`Console`) and the live status line (`Progress`)."""

from tnsearch.ui.console import Console, error, warn
from tnsearch.ui.progress import Progress, Snapshot

__all__ = ["Console", "Progress", "Snapshot", "error", "warn"]
