"""Append-only JSONL logs of a run: `logs/metrics.jsonl`, `logs/gradients.jsonl`, `logs/buckets.jsonl`.

One JSON object per line, each validated against its schema before it is written (a violation is a
bug, exit 3). Only rank 0 writes; on other ranks the writer is a no-op, so callers never branch on
rank. Lines are flushed as they are written: a killed run keeps every complete line, and a resumed
run restores the logs from its snapshot so that rows after the snapshot's step are not duplicated.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import torch

import schemas
from stages.artifacts import schema_errors
from stages.errors import VlaError


def scalar(value: Any) -> Any:
    """JSON-ready copy of `value`: tensors and numpy scalars to Python numbers, NaN/Inf to None."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): scalar(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scalar(v) for v in value]
    return value


class JsonlLog:
    """A validated, line-flushed JSONL file; a no-op when `enabled` is False (ranks > 0)."""

    def __init__(self, path: Path, *, schema: str | None, enabled: bool = True):
        self.path = Path(path)
        self.schema = schema if schema in schemas.names() else None
        self.enabled = enabled
        self._file: io.TextIOBase | None = None

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        row = scalar({"schema_version": 1, **row})
        if self.schema is not None:
            errors = schema_errors(row, self.schema)
            if errors:
                raise VlaError(f"refusing to write a row to `{self.path}`: it violates schema `{self.schema}`", caused_by=errors[0])
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RunLogs:
    """The three logs of a run under `<out>/logs/`, created lazily on first write."""

    NAMES = {"metrics": "metrics-log", "gradients": "gradient-log", "buckets": "bucket-log"}

    def __init__(self, logs_dir: Path, *, enabled: bool = True):
        self.dir = Path(logs_dir)
        self.enabled = enabled
        self._logs = {name: JsonlLog(self.dir / f"{name}.jsonl", schema=schema, enabled=enabled) for name, schema in self.NAMES.items()}

    def __getitem__(self, name: str) -> JsonlLog:
        if name not in self._logs:
            # Recipes may add their own logs (one file each); they are validated only if a schema
            # named `<name>-log` ships with vla.
            self._logs[name] = JsonlLog(self.dir / f"{name}.jsonl", schema=f"{name}-log", enabled=self.enabled)
        return self._logs[name]

    def close(self) -> None:
        for log in self._logs.values():
            log.close()


def read_jsonl(path: Path) -> list[dict]:
    """All rows of a JSONL log (tests and reports)."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
