"""Choosing checks, reading `--thresholds`, judging measurements and shaping the report (schema `probe-report`).

Thresholds file (YAML or JSON, schema `probe-thresholds`): keys are check names; a number sets the
gate, an object sets the gate and/or the check's parameters:

    latency_robustness: 40            # ms
    spectral_smoothness:
      threshold: 1.2
      bandwidth_hz: 3.0
    constraint_compliance:
      action_unit_mps: 0.8

Unknown checks or parameters are bad input (exit 2), before anything runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


from stages.artifacts import read_yaml, validate
from stages.errors import BadInput
from stages.probes import CHECKS, Check, Measurement, by_id, ordered
from stages.probes.check import params_from


def select(only: str | list[str] | None) -> list[Check]:
    """Checks named by `--only` (numbers or names, comma-separated), in the chapter's order; all by default."""
    if only is None:
        return ordered()
    items = only.split(",") if isinstance(only, str) else [p for item in only for p in str(item).split(",")]
    chosen = []
    for raw in items:
        key = raw.strip()
        if not key:
            continue
        check = by_id(int(key)) if key.isdigit() else (CHECKS.get(key) if key in CHECKS else None)
        if check is None:
            known = ", ".join(f"{c.spec.id} ({c.spec.name})" for c in ordered())
            raise BadInput(f"--only: unknown check `{key}`", caused_by=f"known: {known}")
        if check not in chosen:
            chosen.append(check)
    if not chosen:
        raise BadInput("--only names no check", caused_by="give numbers 1-10 or names, comma-separated")
    return sorted(chosen, key=lambda c: c.spec.id)


def read_thresholds(path: Path | None) -> dict[str, Any]:
    """{check name: Params} for every check, the file's overrides applied; nothing but names and params allowed."""
    overrides: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        doc = read_yaml(path, what="thresholds")
        doc = {} if doc is None else doc
        if not isinstance(doc, dict):
            raise BadInput(f"`{path}`: expected a mapping of check names", caused_by=f"got {type(doc).__name__}")
        for key in doc:
            if str(key) not in CHECKS and key != "schema_version":
                raise BadInput(f"`{path}`: unknown check `{key}`", caused_by=f"known: {', '.join(c.spec.name for c in ordered())}")
        validate(doc, "probe-thresholds", source=path)
        overrides = {k: v for k, v in doc.items() if k != "schema_version"}
    params = {}
    for check in ordered():
        entry = overrides.get(check.spec.name, {})
        if not isinstance(entry, dict):
            entry = {"threshold": entry}
        params[check.spec.name] = params_from(check, entry, source=str(path))
    return params


def judge(check: Check, params: Any, m: Measurement, seconds: float) -> dict:
    """One entry of the report's `checks`: value, gate, status and, when it fails, the suggestion."""
    value = m.value if m.value is not None and math.isfinite(m.value) else None
    passed = not m.skipped and check.passes(value, params.threshold)
    status = "skipped" if m.skipped else ("pass" if passed else "fail")
    return {
        "id": check.spec.id,
        "name": check.spec.name,
        "title": check.spec.title,
        "what": check.spec.what,
        "status": status,
        "passed": passed,
        "value": value,
        "threshold": float(params.threshold),
        "comparator": check.spec.comparator,
        "unit": check.spec.unit,
        "suggestion": None if passed else check.spec.suggestion,
        "reason": m.reason,
        "episodes": int(m.episodes),
        "samples": int(m.samples),
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(params).items()},
        "details": m.details,
        "seconds": round(seconds, 3),
    }


def summary(entries: list[dict], min_pass: int) -> dict:
    passed = sum(e["passed"] for e in entries)
    return {
        "run": len(entries),
        "passed": passed,
        "failed": sum(e["status"] == "fail" for e in entries),
        "skipped": sum(e["status"] == "skipped" for e in entries),
        "min_pass": min_pass,
        "gate_passed": passed >= min_pass,
    }


def format_value(entry: dict) -> str:
    v = entry["value"]
    if v is None:
        return "—"
    if entry["name"] == "data_leak_scan":
        return f"{int(v)}"
    return f"{v:.4g}"


def table_rows(report: dict) -> list[tuple[str, ...]]:
    """(#, check, value, gate, status, why the value is missing) per check, for the CLI's table."""
    rows = []
    for e in report["checks"]:
        gate = f"{e['comparator']} {e['threshold']:g} {e['unit']}"
        rows.append((str(e["id"]), e["title"], format_value(e), gate, e["status"], e["reason"] or ""))
    return rows
