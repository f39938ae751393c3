"""Terminal output: data to stdout, progress/logs/errors to stderr (STYLE §10–11).

Rich honours NO_COLOR; progress bars are drawn only when stderr is a terminal and `--quiet` is off.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from stages.errors import VlaError

out = Console(soft_wrap=True)  # data and --json
err = Console(stderr=True)  # progress, logs, summaries, errors


def debug_enabled() -> bool:
    return os.environ.get("VLA_DEBUG", "") not in ("", "0")


class RichReporter:
    """`stages.progress.Reporter` drawing one rich progress bar per task on stderr."""

    def __init__(self, quiet: bool = False):
        self.enabled = not quiet and err.is_terminal
        self._metrics: dict[str, float] = {}

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Callable[[float], None]]:
        if not self.enabled:
            yield lambda n=1: None
            return
        columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[metrics]}")]
        with Progress(*columns, console=err, transient=True) as progress:
            task_id = progress.add_task(description, total=total, metrics="")

            def advance(n: float = 1) -> None:
                text = "  ".join(f"{k}={v:.4g}" for k, v in self._metrics.items())
                progress.update(task_id, advance=n, metrics=text)

            yield advance

    def metrics(self, values: dict[str, float]) -> None:
        self._metrics = dict(values)


def setup(quiet: bool = False) -> RichReporter:
    """Configure the `vla` logger for one command run and return its progress reporter."""
    logger = logging.getLogger("vla")
    logger.handlers.clear()
    handler = RichHandler(console=err, show_time=False, show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    return RichReporter(quiet=quiet)


def print_error(exc: VlaError) -> None:
    lines = [f"error: {exc.message}"]
    if exc.caused_by:
        lines.append(f"  caused by: {exc.caused_by}")
    if exc.hint:
        lines += ["", f"hint: {exc.hint}"]
    err.print("\n".join(lines), style=None, markup=False, highlight=False)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map exceptions to exit codes: VlaError -> its code (0/1/2), anything else -> 3.

    A traceback is printed only with VLA_DEBUG=1.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except VlaError as exc:
            if debug_enabled():
                traceback.print_exc(file=sys.stderr)
            print_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted", markup=False)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the point of this wrapper
            if debug_enabled():
                traceback.print_exc(file=sys.stderr)
            else:
                err.print(f"error: internal error: {type(exc).__name__}: {exc}", markup=False, highlight=False)
                err.print("  this is a bug in vla; rerun with VLA_DEBUG=1 for the traceback", markup=False)
            raise typer.Exit(3) from None

    return wrapper


def summary(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    """A one-screen key/value summary on stderr."""
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(str(key), str(value))
    err.print(table)
