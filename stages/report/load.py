"""Read every artifact the report shows, validated against its schema.

A missing optional file is None (the section then says it is missing); a present but malformed one
is `BadInput` naming the file (and the line, for JSONL logs) and the first offending field, so a
report never draws a figure from a half-understood artifact.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import schemas
from stages.artifacts import read_json, schema_errors
from stages.errors import BadInput
from stages.report.discover import CLOSED_LOOP, MANIFEST, RunArtifacts

LOGS = {"metrics": ("metrics.jsonl", "metrics-log"), "gradients": ("gradients.jsonl", "gradient-log"),
        "buckets": ("buckets.jsonl", "bucket-log")}


FULL_CHECK_ROWS = 1000  # rows of a log checked against the full schema (≈1.5 ms each for a gradient row)


def _check_row(row: Any, schema: str, path: Path, number: int, *, full: bool) -> None:
    """BadInput naming the line and field. `full`: the whole schema; else the row is an object with
    the schema's required top-level fields (the cheap check every row of a long log gets)."""
    if full:
        errors = schema_errors(row, schema)
    elif not isinstance(row, dict):
        errors = [f"(root): {type(row).__name__} is not of type 'object'"]
    else:
        errors = [f"(root): '{k}' is a required property" for k in _required(schema) if k not in row]
    if errors:
        where, _, message = errors[0].partition(": ")
        raise BadInput(f"`{path}` line {number}: field `{where}` is invalid", caused_by=message)


@functools.cache
def _required(schema: str) -> tuple[str, ...]:
    return tuple(schemas.load(schema).get("required", ()))


def read_jsonl(path: Path, schema: str) -> list[dict]:
    """Rows of a JSONL log, validated; BadInput names `path`, the line and the field.

    Logs of up to FULL_CHECK_ROWS rows are checked row by row against the full schema; a longer log
    (a full-scale run) gets the full check on FULL_CHECK_ROWS rows spread evenly over the file, first
    and last included, and the required-fields check on every row, so that reading it stays seconds.
    """
    rows, numbers = [], []
    try:
        f = path.open(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read `{path}`", caused_by=str(exc)) from None
    with f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                if not line.endswith("\n"):
                    break  # the last line of a log still being written (or of a killed run): not a row yet
                raise BadInput(f"cannot parse `{path}` line {number}", caused_by=f"column {exc.colno}: {exc.msg}") from None
            rows.append(row)
            numbers.append(number)
    full = set(np.linspace(0, len(rows) - 1, min(len(rows), FULL_CHECK_ROWS)).round().astype(int).tolist()) if rows else set()
    for i, (row, number) in enumerate(zip(rows, numbers)):
        _check_row(row, schema, path, number, full=i in full)
    return rows


def _optional_json(path: Path, schema: str) -> Any:
    return read_json(path, schema=schema) if path.is_file() else None


@dataclass
class Checkpoint:
    """A training stage's checkpoint directory: its logs, schedule and state (each may be absent)."""

    path: Path
    name: str
    slug: str = ""  # unique among the run's checkpoints; figure and section ids use it
    metrics: list[dict] | None = None
    gradients: list[dict] | None = None
    buckets: list[dict] | None = None
    schedule: dict | None = None
    state: dict | None = None
    closed_loop: dict | None = None

    def rows(self, kind: str) -> list[dict]:
        return [r for r in self.metrics or [] if r["kind"] == kind]


@dataclass
class Probe:
    path: Path
    report: dict


@dataclass
class Bundle:
    path: Path
    manifest: dict


@dataclass
class RunData:
    """Everything the report shows, read and validated."""

    found: RunArtifacts
    clean: list[tuple[Path, dict]] = field(default_factory=list)
    aligned: list[tuple[Path, dict]] = field(default_factory=list)
    truth: dict[str, dict] = field(default_factory=dict)  # dataset name -> truth document
    checkpoints: list[Checkpoint] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    closed_loop: list[tuple[Path, dict]] = field(default_factory=list)  # outside checkpoints
    bundles: list[Bundle] = field(default_factory=list)


def load_checkpoint(path: Path, name: str) -> Checkpoint:
    ck = Checkpoint(path=path, name=name)
    for attr, (filename, schema) in LOGS.items():
        log = path / "logs" / filename
        if log.is_file():
            setattr(ck, attr, read_jsonl(log, schema))
    ck.schedule = _optional_json(path / "schedule.json", "schedule")
    ck.state = _optional_json(path / "trainer_state.json", "trainer-state")
    ck.closed_loop = _optional_json(path / CLOSED_LOOP, "closed-loop-eval")
    return ck


def _checkpoint_names(found: RunArtifacts) -> list[str]:
    """Folder names, or run-relative paths where two checkpoints share a folder name."""
    names = [p.name for p in found.checkpoints]
    return [found.rel(p) if names.count(p.name) > 1 else p.name for p in found.checkpoints]


def load_run(found: RunArtifacts) -> RunData:
    """Read and validate every artifact `discover` found (BadInput on the first malformed one)."""
    data = RunData(found=found)
    data.clean = [(p, read_json(p / "clean_report.json", schema="clean-report")) for p in found.clean]
    data.aligned = [(p, read_json(p / "align_report.json", schema="align-report")) for p in found.aligned]
    for path in found.truth:
        doc = read_json(path, schema="truth")
        data.truth[doc["dataset"]] = doc
    data.checkpoints = [load_checkpoint(p, n) for p, n in zip(found.checkpoints, _checkpoint_names(found))]
    seen: set[str] = set()
    for ck in data.checkpoints:
        base = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in ck.name)
        ck.slug = next(s for s in (base, *(f"{base}-{i}" for i in range(2, len(seen) + 3))) if s not in seen)
        seen.add(ck.slug)
    data.probes = [Probe(p, read_json(p, schema="probe-report")) for p in found.probes]
    data.closed_loop = [(p, read_json(p, schema="closed-loop-eval")) for p in found.closed_loop]
    data.bundles = [Bundle(p, read_json(p / MANIFEST, schema="export-manifest")) for p in found.bundles]
    if not data.probes:  # a bundle carries the probe report of its weights; show it when none stands alone
        for b in data.bundles:
            bundled = b.path / "probe_report.json"
            if bundled.is_file():
                data.probes.append(Probe(bundled, read_json(bundled, schema="probe-report")))
    return data
