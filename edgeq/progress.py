"""Progress bars on stderr (so `--json` output on stdout stays clean), shared by the stages, and
the consoles everything else prints through."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def plain_console(stderr: bool = False) -> Console:
    """A console that prints text as it is: user-supplied names (a model path, a class, a target's
    description) may contain rich markup such as "[/]", which must neither style nor crash."""
    return Console(stderr=stderr, markup=False, highlight=False)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[Progress]:
    with Progress(SpinnerColumn(), TextColumn("{task.description:<40}", markup=False), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=plain_console(stderr=True),
                  disable=not enabled) as bar:
        try:
            yield bar
        except BaseException:
            bar.live.transient = True  # on failure the error line alone is the output
            raise


def log_lines(bar: Progress) -> Callable[[str], None]:
    """Print a line above the bars (nothing when they are disabled, e.g. --quiet or --json)."""
    return bar.console.print if not bar.disable else (lambda _: None)
