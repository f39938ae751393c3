"""`vla align-time CLEAN --out ALIGNED`: estimate clock offsets, resample onto one grid, write LeRobot v3.0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlacli import console
from vlacli.options import JsonOut, OutDir, Overwrite, Quiet, examples

HELP = (
    "Estimate each stream's clock offset against the reference stream (FFT cross-correlation of what both "
    "observe, pooled per session, refined per episode), resample every stream onto one grid at --fps, "
    "downweight or drop episodes left misaligned beyond --max-residual-ms, and write a LeRobot v3.0 dataset "
    "with align_report.json inside."
)
EXAMPLES = examples(
    "vla align-time data/clean --out data/aligned",
    "vla align-time data/clean --out data/aligned --fps 20 --reference state --action-lag-ms 40",
    "vla align-time data/calib --out /tmp/calib --action-lag-ms 0 --json --quiet | jq .action_lag.apparent_ms",
)


def command(
    src: Annotated[Path, typer.Argument(help="Raw or cleaned dataset: one folder per episode (meta.json + stream files).", show_default=False)],
    out: OutDir,
    fps: Annotated[int, typer.Option("--fps", min=1, help="Rate of the common grid (frames per second).")] = 20,
    reference: Annotated[str, typer.Option("--reference", help="Stream whose clock the dataset keeps; every offset is against it.")] = "state",
    max_residual_ms: Annotated[float, typer.Option("--max-residual-ms",
                                                   help="Misalignment left after correction beyond which an episode is downweighted (beyond twice: dropped).")] = 150.0,
    action_lag_ms: Annotated[float | None, typer.Option("--action-lag-ms", show_default="meta.json `action_lag_ms`, else 0 with a warning",
                                                        help="Plant response lag of the action stream (ms): taken out of its correlation with the measured motion, leaving the clock offset.")] = None,
    max_offset_ms: Annotated[float, typer.Option("--max-offset-ms", help="Largest clock offset searched for (±ms).")] = 1000.0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    reporter = console.setup(quiet)
    from stages.align_time import AlignTimeConfig, align_time  # heavy imports only when the command runs
    from stages.timealign.estimate import EstimateConfig

    cfg = AlignTimeConfig(fps=fps, reference=reference, max_residual_ms=max_residual_ms, action_lag_ms=action_lag_ms,
                          estimate=EstimateConfig(max_offset_ms=max_offset_ms))
    report = align_time(src, out, cfg, overwrite=overwrite, reporter=reporter)
    report.pop("dataset", None)
    console.summary(f"vla align-time: {src} -> {out}", summary_rows(report))
    if json_out:
        console.out.out(json.dumps(report, indent=2, ensure_ascii=False), highlight=False)


def _ms(stats: dict) -> str:
    if not stats or stats.get("p50") is None:
        return "-"
    return f"{stats['p50']:.1f} / {stats['p95']:.1f}"


def summary_rows(report: dict) -> list[tuple[str, str]]:
    s = report["summary"]
    lag = report["action_lag"]
    rows = [
        ("episodes", f"{s['episodes']} read, {s['kept']} kept, {s['downweighted']} downweighted, {s['dropped']} dropped"),
        ("frames", f"{s['frames']} at {report['fps']} fps ({s.get('valid_frames', 0)} valid)"),
        ("reference", report["reference"]),
        ("action lag", f"{lag['ms']:g} ms ({lag['source']})"),
    ]
    for name, st in report["streams"].items():
        if st["status"] == "aligned":
            rows.append((name, f"|offset| P50/P95 {_ms(st.get('offset_abs_ms'))} ms, residual P50/P95 {_ms(st.get('residual_ms'))} ms"))
        elif st["status"] == "left_out":
            rows.append((name, f"left out: {st['reason']}"))
    for item in report["dropped"][:5]:
        rows.append((f"dropped {item['episode_id']}", item["reason"]))
    if len(report["dropped"]) > 5:
        rows.append(("dropped", f"... and {len(report['dropped']) - 5} more (see align_report.json)"))
    return rows


def register(app: typer.Typer) -> None:
    app.command("align-time", help=HELP, epilog=EXAMPLES)(console.guarded(command))
