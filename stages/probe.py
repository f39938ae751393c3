"""`vla probe`: the transferability check-up of a checkpoint (ch07 §7.10) with the alignment health
report (ch05 §5.8).

At the end of pretraining, keep only checkpoints that are friendly to the RL and Sim-to-Real stages
that follow. The recipe:

1. Validate everything first (checkpoint files, thresholds, the choice of checks): bad input leaves
   nothing behind.
2. Load the model from the checkpoint and the episodes it is examined on: held-out episodes of the
   tasks it trained on, episodes of tasks it never saw (open set), the training split (leak scan,
   prototypes) — `stages.probes.context`.
3. Run the chosen checks (`stages.probes.CHECKS`, one module per item), each measured, compared
   with its gate and, when it fails, paired with the chapter's remedy.
4. Add the health metrics (retrieval R@K / MRR per direction, the InfoNCE MI bound, AMat, V–A
   spectral coherence, calibration) and return the report (schema `probe-report`).

The gate — at least `min_pass` checks pass (the chapter asks for 8 of 10) — is the caller's to
enforce, after the report is written, so that a failing checkpoint still leaves its report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from stages.artifacts import schema_errors, sha256_file
from stages.errors import BadInput, VlaError
from stages.probes import Check
from stages.probes.context import ProbeConfig
from stages.probes.health import health_report
from stages.probes.outputs import ProbeContext
from stages.probes.report import judge, read_thresholds, select, summary
from stages.progress import NullReporter, Reporter
from stages.training import checkpoint

log = logging.getLogger("vla")

DEFAULT_MIN_PASS = 8  # ch07 §7.10: 建议至少通过 8/10


def plan(ckpt: Path, data: Path, eval_dir: Path | None, *, only: str | list[str] | None, thresholds: Path | None,
         min_pass: int) -> tuple[list[Check], dict, int]:
    """Everything checked before any work: (checks to run, their params, effective min_pass)."""
    checkpoint.check_files(Path(ckpt), checkpoint.INIT_FILES)
    for path, what in ((data, "--data"), (eval_dir, "--eval")):
        if path is not None and not Path(path).is_dir():
            raise BadInput(f"{what}: dataset `{path}` does not exist or is not a directory")
    checks = select(only)
    params = read_thresholds(thresholds)
    if not 0 <= min_pass <= 10:
        raise BadInput(f"--min-pass is {min_pass}", caused_by="expected 0..10")
    effective = min(min_pass, len(checks))
    if effective < min_pass:
        log.info("--only runs %d check(s): the gate asks all of them to pass", len(checks))
    return checks, params, effective


def run_probe(ckpt: Path, data: Path, *, eval_dir: Path | None = None, only: str | list[str] | None = None,
              thresholds: Path | None = None, min_pass: int = DEFAULT_MIN_PASS, config: ProbeConfig = ProbeConfig(),
              reporter: Reporter = NullReporter(), created_by: str = "vla probe") -> dict:
    """Run the check-up and return the report (validated against `probe-report`)."""
    start = time.perf_counter()
    checks, params, effective = plan(ckpt, data, eval_dir, only=only, thresholds=thresholds, min_pass=min_pass)
    ctx = ProbeContext(Path(ckpt), Path(data), Path(eval_dir) if eval_dir is not None else None, config, reporter)
    for check in checks:
        if check.prepare is not None:
            check.prepare(ctx, params[check.spec.name])
    entries = []
    with reporter.task("probe checks", total=len(checks) + 1) as advance:
        for check in checks:
            t0 = time.perf_counter()
            measurement = check.measure(ctx, params[check.spec.name])
            entry = judge(check, params[check.spec.name], measurement, time.perf_counter() - t0)
            entries.append(entry)
            log.info("check %d %s: %s (value %s)", check.spec.id, check.spec.name, entry["status"], entry["value"])
            advance(1)
        t0 = time.perf_counter()
        health = health_report(ctx)
        ctx.timing["health_s"] = time.perf_counter() - t0
        advance(1)
    report = {
        "schema_version": 1,
        "created_by": created_by,
        "checkpoint": _checkpoint_info(Path(ckpt), ctx),
        "data": _data_info(ctx),
        "config": {**asdict(config), "only": [c.spec.name for c in checks],
                   "thresholds_file": str(thresholds) if thresholds is not None else None, "min_pass_requested": min_pass},
        "checks": entries,
        "summary": summary(entries, effective),
        "health": health,
        "timing_s": {"total": round(time.perf_counter() - start, 3), **{k: round(v, 3) for k, v in ctx.timing.items()}},
    }
    errors = schema_errors(report, "probe-report")
    if errors:
        raise VlaError("the probe report violates schema `probe-report`", caused_by=errors[0])
    return report


def _checkpoint_info(ckpt: Path, ctx: ProbeContext) -> dict:
    ck = ctx.checkpoint
    return {
        "path": str(ckpt),
        "step": int(ck.step),
        "preset": ck.preset,
        "config_digest": ck.metadata.get("config_digest"),
        "model_sha256": sha256_file(ckpt / checkpoint.MODEL),
    }


def _data_info(ctx: ProbeContext) -> dict:
    d = ctx.data

    def describe(ds) -> dict | None:
        if ds is None:
            return None
        return {"path": str(ds.root), "episodes": int(ds.num_episodes), "frames": int(ds.num_frames), "fps": float(ds.fps)}

    return {
        "train": describe(d.data),
        "eval": describe(d.eval),
        "train_episodes": len(d.train),
        "train_tasks": d.train_tasks,
        "heldout_episodes": len(d.all_heldout),
        "heldout_used": len(d.heldout),
        "unknown_episodes": len(d.all_unknown),
        "unknown_used": len(d.unknown),
        "unknown_tasks": sorted({e.task for e in d.all_unknown}),
        "robot_type": d.robot_type(),
    }
