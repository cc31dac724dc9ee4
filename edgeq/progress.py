"""Progress bars on stderr (so `--json` output on stdout stays clean), shared by the stages."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[Progress]:
    with Progress(SpinnerColumn(), TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled) as bar:
        try:
            yield bar
        except BaseException:
            bar.live.transient = True  # on failure the error line alone is the output
            raise


def log_lines(bar: Progress) -> Callable[[str], None]:
    """Print a line above the bars (nothing when they are disabled, e.g. --quiet or --json)."""
    return bar.console.print if not bar.disable else (lambda _: None)
