"""Errors a stage raises on purpose; each maps to one exit code of the CLI.

A stage never prints its own errors. It raises one of these with a one-line message that names the
file and the field, optionally a `caused_by` line and a `hint` (the command that fixes it); the CLI
prints them uv-style and exits with `exit_code`:

    error: cannot read `data/raw/ep_0003/imu.parquet`
      caused by: column `t` is missing

    hint: vla clean data/raw --out data/clean
"""

from __future__ import annotations


class VlaError(Exception):
    """Base class. Anything else that escapes a stage is a bug (exit code 3)."""

    exit_code = 3

    def __init__(self, message: str, *, caused_by: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.caused_by = caused_by
        self.hint = hint

    def __str__(self) -> str:
        text = self.message
        if self.caused_by:
            text += f" (caused by: {self.caused_by})"
        return text


class BadInput(VlaError):
    """Bad input or usage: a file, field or option the user can fix. Nothing was written."""

    exit_code = 2


class NotImplementedYet(BadInput):
    """A stage of the design card that is not built yet: exit 2, never a fake success."""

    def __init__(self, command: str):
        super().__init__(f"`vla {command}` is not implemented yet")


class GateFailed(VlaError):
    """The stage ran, but its gate said no (probe below the pass mark, export refused)."""

    exit_code = 1
