"""How a stage reports progress without knowing about the terminal.

Stages take a `Reporter`; the CLI passes one that draws rich progress bars on stderr (silenced by
`--quiet` or a non-TTY), tests and library callers get `NullReporter`.

    with reporter.task("recording", total=len(jobs)) as advance:
        for job in jobs:
            ...
            advance(1)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Protocol

log = logging.getLogger("vla")


class Reporter(Protocol):
    def task(self, description: str, total: float | None = None) -> contextlib.AbstractContextManager[Callable[[float], None]]:
        """A context manager yielding `advance(n)`; the bar is removed when the block exits."""

    def metrics(self, values: dict[str, float]) -> None:
        """Latest scalar values (e.g. losses) to show beside the bar; may be ignored."""


class NullReporter:
    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Callable[[float], None]]:
        yield lambda n=1: None

    def metrics(self, values: dict[str, float]) -> None:
        pass
