"""The report's parts: artifact discovery by contents, JSONL reading, derived series, HTML helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages.errors import BadInput
from stages.report import html as h
from stages.report.discover import discover
from stages.report.load import read_jsonl
from stages.report.plotting import label
from stages.report.series import bucket_series, gradient_stats, phase_spans, retrieval_keys, retrieval_metric_names
from tests.fixtures import report_run


def _touch(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_discovery_goes_by_contents_not_names(tmp_path):
    run = tmp_path / "run"
    _touch(run / "my-data" / "cleaned" / "clean_report.json")
    _touch(run / "my-data" / "cleaned" / "ep_0000" / "meta.json")
    _touch(run / "lerobot" / "align_report.json")
    _touch(run / "lerobot" / "meta" / "info.json")
    _touch(run / "models" / "stage2" / "logs" / "metrics.jsonl", "")
    _touch(run / "models" / "stage2" / "checkpoints" / "step-000010" / "trainer_state.json")  # a snapshot, not a run
    _touch(run / "models" / "policy" / "trainer_state.json")
    _touch(run / "models" / "policy" / "closed_loop.json")  # read with its checkpoint
    _touch(run / "sft" / "trainer_state.json")
    _touch(run / ".sft.tmp-123-abcd" / "trainer_state.json")  # a half-written atomic output
    _touch(run / "bundle" / "manifest.json", json.dumps({"format": "vla-policy"}))
    _touch(run / "bundle" / "probe_report.json")  # the bundle's copy
    _touch(run / "other" / "manifest.json", json.dumps({"format": "something-else"}))
    _touch(run / "reports" / "checkup.json", json.dumps({"checks": [], "health": {}, "summary": {}}))
    _touch(run / "probe-sft.json", json.dumps({"checks": "a malformed report: reading it will say so"}))
    _touch(run / "probe-broken.json", '{"checks": [')  # truncated: claims to be a report
    _touch(run / "probe-thresholds.json", json.dumps({"latency_robustness": 40}))  # `vla probe --thresholds`, not a report
    _touch(run / "notes.json", json.dumps({"checks": []}))
    _touch(run / "sim" / "closed_loop.json")
    _touch(run / "raw" / "ep_0001" / "meta.json")
    _touch(run / "raw" / "ep_0001" / "state.parquet", "")
    _touch(run / "raw.truth.json")
    found = discover(run)
    rel = lambda paths: [found.rel(p) for p in paths]  # noqa: E731
    assert rel(found.clean) == ["my-data/cleaned"]
    assert rel(found.aligned) == ["lerobot"]
    assert rel(found.checkpoints) == ["sft", "models/policy", "models/stage2"]  # pipeline names first, then by path
    assert rel(found.bundles) == ["bundle"]
    assert rel(found.probes) == ["probe-broken.json", "probe-sft.json", "reports/checkup.json"]
    assert rel(found.closed_loop) == ["sim/closed_loop.json"]
    assert rel(found.truth) == ["raw.truth.json"]


def test_discovery_refuses_what_is_not_a_directory(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        discover(tmp_path / "nope")
    _touch(tmp_path / "file")
    with pytest.raises(BadInput, match="is not a directory"):
        discover(tmp_path / "file")
    assert discover(tmp_path).empty()


def test_jsonl_reader_skips_a_partial_last_line_and_names_bad_ones(tmp_path):
    log = tmp_path / "buckets.jsonl"
    row = {"schema_version": 1, "step": 10, "buckets": [{"name": "a", "capacity": 10.0, "remaining": 5.0, "used": 5.0,
                                                          "consumed_total": 5.0, "p": 1.0}]}
    log.write_text(json.dumps(row) + "\n" + json.dumps(row)[:25])  # a writer still at work on line 2
    assert [r["step"] for r in read_jsonl(log, "bucket-log")] == [10]
    log.write_text(json.dumps(row)[:25] + "\n" + json.dumps(row) + "\n")
    with pytest.raises(BadInput, match="line 1"):
        read_jsonl(log, "bucket-log")
    bad = json.loads(json.dumps(row))
    bad["buckets"][0]["p"] = 1.5
    log.write_text(json.dumps(row) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(BadInput, match=r"line 2: field `buckets\[0\].p` is invalid"):
        read_jsonl(log, "bucket-log")


def test_phase_spans_follow_the_logged_windows():
    rows = [{"step": s, "phase": p, "kind": "train", "window": 10}
            for s, p in ((10, "A"), (20, "A"), (30, "B"), (40, "B"), (50, "B"), (60, "C"))]
    # a row at step s summarises (s − 10, s]: A starts at 0, B at 20, C at 50
    assert phase_spans(rows) == [("A", 0.0, 20.0), ("B", 20.0, 50.0), ("C", 50.0, 60.0)]
    schedule = {"phases": [{"name": "A", "start": 0, "end": 5}, {"name": "B", "start": 5, "end": 9}]}
    assert phase_spans([], schedule=schedule) == [("A", 0.0, 5.0), ("B", 5.0, 9.0)]


def test_gradient_stats_pool_cosines_and_leave_out_disjoint_pairs():
    def row(step, cos, hit):
        return {"step": step, "combiner": "pcgrad", "grad_norms": {"a": 1.0, "b": 2.0, "c": 0.5},
                "cosines": [{"a": "a", "b": "b", "cos": cos}, {"a": "a", "b": "c", "cos": 0.0}, {"a": "b", "b": "c", "cos": 0.5}],
                "pcgrad_hit_rate": hit}

    stats = gradient_stats([row(1, -0.5, 0.5), row(2, -0.1, None), row(3, 0.3, 0.0)])
    assert stats.disjoint == 3  # a–c never shares parameters
    assert sorted(stats.cosines.tolist()) == [-0.5, -0.1, 0.3, 0.5, 0.5, 0.5]
    assert stats.conflict_share == pytest.approx(2 / 6)
    assert stats.mean_hit_rate == pytest.approx(0.25)  # rows without a hit rate do not count
    pairs = {(a, b): (m, s, n) for a, b, m, s, n in stats.pairs}
    assert set(pairs) == {("a", "b"), ("b", "c")}
    assert pairs[("a", "b")] == (pytest.approx(-0.1), pytest.approx(2 / 3), 3)


def test_bucket_series_keeps_names_and_last_state():
    def row(step, p):
        return {"step": step, "buckets": [{"name": "x", "capacity": 10.0, "remaining": 10.0 - step, "used": float(step),
                                           "consumed_total": float(step), "p": p},
                                          {"name": "y", "capacity": 4.0, "remaining": 4.0, "used": 0.0,
                                           "consumed_total": 0.0, "p": 1 - p}]}

    series = bucket_series([row(1, 0.9), row(2, 0.7)])
    assert series.names == ["x", "y"]
    assert series.p.shape == (2, 2)
    assert series.final() == [("x", 10.0, 8.0, 2.0, 0.7), ("y", 4.0, 4.0, 0.0, pytest.approx(0.3))]


def test_retrieval_keys_are_read_from_the_eval_metric_names():
    metrics = {"v2l_r1": 0.1, "v2l_r5": 0.2, "v2l_r10": 0.3, "v2l_mrr": 0.2, "v2l_chance_r1": 0.1,
               "a2l_r1": 0.1, "a2l_mrr": 0.1, "para_R@1": 0.5, "mi_vl": 0.3, "log_n": 4.0, "jerk_r2": 1.0}
    assert retrieval_keys(metrics) == (["v2l", "a2l"], [1, 5, 10])
    names = retrieval_metric_names(metrics)
    assert {"v2l_chance_r1", "mi_vl", "log_n", "a2l_mrr"} <= names and "para_R@1" not in names and "jerk_r2" not in names
    assert retrieval_metric_names({"bc_mae": 1.0}) == set()


def test_html_helpers_escape_and_format():
    assert h.num(0.123456) == "0.1235" and h.num(None) == "—" and h.num(float("nan")) == "—" and h.num(7) == "7"
    assert h.pct(0.875) == "87.5%" and h.pct(None) == "—"
    assert "&lt;script&gt;" in h.table(["<b>"], [["<script>"]])
    assert h.Cell("a<b", "fail").render() == '<td class="fail">a&lt;b</td>'


def test_labels_never_need_a_missing_font():
    assert label("vision-easy") == "vision-easy" and label("τ") == "τ"
    from stages.report.plotting import cjk_font

    if cjk_font() is None:
        assert label("把冰球") == "\\u628a\\u51b0\\u7403"


def test_fixture_schedule_probe_is_schema_valid():
    from stages.artifacts import schema_errors

    assert schema_errors(report_run.probe_doc(), "probe-report") == []
    assert schema_errors(report_run.closed_loop_doc(), "closed-loop-eval") == []
    assert np.isclose(report_run.closed_loop_doc()["tasks"]["push"]["success_rate"], 0.75)


def test_sparse_artifacts_render_without_figures_they_cannot_have(tmp_path):
    """Logs with only the required fields, empty gradient stats, one bucket row, an expert-only
    closed-loop evaluation: the page still renders, and draws only what the data supports."""
    from stages.artifacts import write_json
    from stages.report import build_page
    from stages.sim.closed_loop import ClosedLoopConfig, aggregate, config_json
    from stages.training.metrics import RunLogs

    ck = tmp_path / "run" / "ckpt" / "sft"
    logs = RunLogs(ck / "logs")
    logs["metrics"].write({"step": 5, "kind": "train", "phase": "main", "time_s": 1.0, "losses": {"bc": 1.0}, "loss": 1.0,
                           "lr": 1e-3, "grad_norm": None, "window": 5})
    logs["metrics"].write({"step": 5, "kind": "eval", "phase": "main", "time_s": 1.0, "metrics": {}})
    logs["gradients"].write({"step": 5, "combiner": "fixed", "losses": {"bc": 1.0}, "weights": {"bc": 1.0},
                             "grad_norms": {}, "cosines": []})
    logs["buckets"].write({"step": 5, "buckets": [{"name": "only", "capacity": 1.0, "remaining": 1.0, "used": 0.0,
                                                    "consumed_total": 0.0, "p": 1.0}]})
    logs.close()
    episode = {"task": "reach", "index": 0, "seed": 2**32, "language": "en", "constraint": None, "instruction": "reach",
               "steps": 10}
    score = {"success": True, "success_step": 3, "steps": 10, "constraint_steps": 0, "violation_steps": 0, "jerk_integral": 1.0}
    rows = [{"episode": episode, "expert": score}]
    write_json(ck / "closed_loop.json", {"schema_version": 1, "config": config_json(ClosedLoopConfig(episodes_per_task=1)),
                                         "episodes": rows, "tasks": {"reach": aggregate(rows)}, "overall": aggregate(rows),
                                         "seconds": 0.1}, schema="closed-loop-eval")
    page, index = build_page(tmp_path / "run")
    assert set(index["figures"]) == {"loss-sft", "buckets-sft", "closed-loop-0"}
    status = {s["id"]: s["status"] for s in index["sections"]}
    assert status["gradients"] == "ok" and status["retrieval"] == "missing" and status["closed-loop"] == "ok"
    assert "100.0%" in page  # the expert's success rate, beside a policy column of —
