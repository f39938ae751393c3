"""`vla clean` on freshly recorded demo data (Meta-World), scored against the recorder's truth.

Slow (it records episodes): `python -m pytest -m slow tests/test_clean_sim.py`. Fault rates are
raised so that a small recording holds every fault kind; `bench/clean.py` scores default rates.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    pytest.importorskip("metaworld")
    from stages.sim import faults as F
    from stages.sim.record import RecordConfig, record

    rates = {k: 0.4 for k in F.ROW_KINDS} | {F.REDUNDANT: 0.2, F.PLACEHOLDER: 0.2, F.DUP_EPISODE: 0.1,
                                             F.NEAR_DUP: 0.1, F.EVAL_LEAK: 0.25}
    base = tmp_path_factory.mktemp("sim")
    config = RecordConfig(tasks=("reach", "push", "drawer-close"), episodes_per_task=6, eval_episodes_per_task=2,
                          workers=1, seed=5, faults=F.FaultConfig(rates=rates))
    record(config, base / "raw", base / "eval")
    return base


def test_clean_scores_on_recorded_demo_data(recorded, cli):
    from stages.artifacts import read_json
    from stages.cleaning.scoring import score

    result = cli("clean", recorded / "raw", "--out", recorded / "clean", "--eval", recorded / "eval", "--quiet")
    assert result.exit_code == 0, result.stderr
    report = read_json(recorded / "clean" / "clean_report.json", schema="clean-report")
    truth = read_json(recorded / "raw.truth.json", schema="truth")
    scores = score(report, truth)
    table = {k: (s.truth, s.findings, round(s.precision, 3), round(s.recall, 3)) for k, s in scores.items()}
    for s in scores.values():
        if s.truth:
            assert s.recall >= 0.95, table
        if s.findings:
            assert s.precision >= 0.95, table
