"""One look for every progress bar: description, bar, count, elapsed, ETA, and a status text."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

_console = Console(stderr=True)


class _StatusColumn(ProgressColumn):
    """The task's optional `status` field (loss parts, learning rate, images/s)."""

    def render(self, task) -> Text:
        return Text(str(task.fields.get("status", "")))


def progress_bar(enabled: bool = True) -> Progress:
    """A rich Progress on stderr; nothing is drawn when `enabled` is False."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), _StatusColumn(),
        console=_console, disable=not enabled,
    )
