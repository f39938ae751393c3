"""The scorer: the match rule and per-kind precision/recall on a hand-made report and truth."""

from __future__ import annotations

from stages.cleaning.scoring import matches, score, worst


def finding(kind, stream=None, rows=None, of=None):
    f = {"rule": "r", "kind": kind, "severity": "warning", "action": "fix", "stream": stream, "column": None}
    if rows is not None:
        f["rows"] = rows
    if of is not None:
        f["of"] = of
    return f


def fault(kind, stream=None, rows=None, of=None):
    out = {"kind": kind, "stream": stream, "column": None}
    if rows is not None:
        out["rows"] = rows
    if of is not None:
        out["of"] = of
    return out


def test_match_rule():
    assert matches(finding("spike", "state", [10, 12]), fault("spike", "state", [11, 12]))
    assert not matches(finding("spike", "state", [10, 11]), fault("spike", "state", [11, 12]))  # half-open: no overlap
    assert not matches(finding("spike", "imu", [10, 12]), fault("spike", "state", [10, 12]))  # another stream
    assert not matches(finding("nan_inf", "state", [10, 12]), fault("spike", "state", [10, 12]))  # another kind
    assert matches(finding("duplicate_episode", of="a"), fault("duplicate_episode", of="b"))  # episode-level: id only


def test_score_counts_each_side():
    truth = {"episodes": {
        "e1": {"faults": [fault("spike", "state", [5, 6]), fault("spike", "state", [50, 51]), fault("nan_inf", "imu", [3, 4])]},
        "e2": {"faults": [fault("duplicate_episode", of="e1")]},
        "e3": {"faults": []},
        "ev": {"faults": [fault("spike", "state", [1, 2])]},  # not in the report (another split): ignored
    }}
    report = {"episodes": {
        "e1": {"findings": [finding("spike", "state", [5, 6]), finding("spike", "state", [5, 7]), finding("jerk_outlier", "action", [1, 2])]},
        "e2": {"findings": [finding("duplicate_episode", of="e1")]},
        "e3": {"findings": [finding("spike", "imu", [9, 10]), finding("duplicate_episode", of="e2")]},
    }}
    s = score(report, truth)
    assert (s["spike"].truth, s["spike"].recalled, s["spike"].findings, s["spike"].correct) == (2, 1, 3, 2)
    assert s["spike"].recall == 0.5 and s["spike"].precision == 2 / 3
    assert (s["nan_inf"].truth, s["nan_inf"].recalled, s["nan_inf"].findings) == (1, 0, 0)
    assert s["nan_inf"].precision == 1.0 and s["nan_inf"].recall == 0.0
    d = s["duplicate_episode"]
    assert (d.truth, d.recalled, d.findings, d.correct, d.of_agree) == (1, 1, 2, 1, 1)
    assert "jerk_outlier" not in s  # kinds outside the truth vocabulary are not scored
    assert worst(s) == (0.5, 0.0)
