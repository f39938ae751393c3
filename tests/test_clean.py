"""`vla clean` end to end through the CLI: scored against injected truth, input untouched, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.artifacts import read_json
from stages.cleaning.config import default_config, documented_yaml, load_config
from stages.cleaning.masks import episode_masks, masked
from stages.cleaning.scoring import score, worst
from stages.cleaning.synthetic import SyntheticConfig, make_dataset
from stages.data.raw import list_episodes, read_episode, write_parquet
from tests.fixtures import flat

ROOT = Path(__file__).resolve().parents[1]


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    base = tmp_path_factory.mktemp("clean")
    truth = make_dataset(base / "raw", SyntheticConfig(episodes=16, fault_rate=0.5, seed=11), eval_root=base / "eval")
    return base, truth


@pytest.fixture(scope="module")
def cleaned(faulty, cli_module):
    base, truth = faulty
    before = tree_digest(base / "raw")
    result = cli_module("clean", base / "raw", "--out", base / "clean", "--eval", base / "eval", "--json")
    return base, truth, before, result


@pytest.fixture(scope="module")
def cli_module():
    from typer.testing import CliRunner

    from vlacli.app import app

    runner = CliRunner()

    def run(*args):
        r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return r

    return run


def test_scores_against_injected_truth(cleaned):
    base, truth, _, result = cleaned
    assert result.exit_code == 0, result.stderr
    report = read_json(base / "clean" / "clean_report.json", schema="clean-report")
    scores = score(report, truth)
    table = {k: (s.truth, s.findings, round(s.precision, 3), round(s.recall, 3)) for k, s in scores.items()}
    assert all(s.truth > 0 for s in scores.values()), table  # every kind was injected at least once
    precision, recall = worst(scores)
    assert precision >= 0.95 and recall >= 0.95, table
    assert scores["duplicate_episode"].of_agree == scores["duplicate_episode"].recalled


def test_json_output_is_the_report(cleaned):
    base, _, _, result = cleaned
    assert json.loads(result.stdout) == read_json(base / "clean" / "clean_report.json", schema="clean-report")


def test_input_untouched_and_output_readable(cleaned):
    base, truth, before, _ = cleaned
    assert tree_digest(base / "raw") == before
    report = read_json(base / "clean" / "clean_report.json", schema="clean-report")
    kept = sorted(e for e, v in report["episodes"].items() if v["status"] == "kept")
    assert [p.name for p in list_episodes(base / "clean")] == kept
    for path in list_episodes(base / "clean"):
        ep = read_episode(path)
        for name, df in ep.streams.items():
            assert np.all(np.diff(df["t"].to_numpy()) > 0), (path.name, name)  # clocks fixed
            assert np.isfinite(df.to_numpy()).all(), (path.name, name)
        assert np.all(np.diff(ep.cameras["camera"].t) > 0)
        assert (ep.streams["state"]["speed"] >= 0).all()
        assert ep.meta["clean"]["rows_in"]["state"] >= ep.meta["clean"]["rows_out"]["state"]
    dropped = {e for e, v in report["episodes"].items() if v["status"] == "dropped"}
    must_drop = {e for e, t in truth["episodes"].items()
                 if any(f["kind"] in ("placeholder_text", "duplicate_episode", "near_duplicate_episode", "eval_leak") for f in t["faults"])}
    assert must_drop == dropped


def test_masks_round_trip(cleaned):
    base, truth, _, _ = cleaned
    frozen = [(e, f) for e, t in truth["episodes"].items() for f in t["faults"] if f["kind"] == "frozen_camera"]
    checked = 0
    for episode_id, fault in frozen:
        path = base / "clean" / episode_id
        if not path.exists():
            continue
        ep = read_episode(path)
        masks = episode_masks(ep.meta)
        raw_t = read_episode(base / "raw" / episode_id).cameras["camera"].t
        frozen_t = raw_t[fault["rows"][0] : fault["rows"][1]]
        assert masked(frozen_t, masks, "camera").all()  # every frozen frame is masked
        assert not masked(frozen_t, masks, "state").any()
        checked += 1
    assert checked


def test_instruction_cleanup_in_meta(cleaned):
    base, truth, _, _ = cleaned
    for episode_id, t in truth["episodes"].items():
        if any(f["kind"] == "redundant_text" for f in t["faults"]) and (base / "clean" / episode_id).exists():
            meta = json.loads((base / "clean" / episode_id / "meta.json").read_text())
            assert meta["instruction"] == t["instruction"]  # the instruction before the text fault
            assert meta["clean"]["instruction_raw"] != meta["instruction"]
            assert meta["constraints"] == []


def test_existing_output_refused(cleaned, cli):
    base, *_ = cleaned
    result = cli("clean", base / "raw", "--out", base / "clean", "--quiet")
    assert result.exit_code == 2 and "already exists" in flat(result.stderr)


def test_output_inside_input_refused(faulty, cli):
    base, _ = faulty
    result = cli("clean", base / "raw", "--out", base / "raw" / "clean")
    assert result.exit_code == 2 and "overlaps the input" in flat(result.stderr)


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def small(tmp_path):
    make_dataset(tmp_path / "raw", SyntheticConfig(episodes=3, fault_rate=0.0, copies=0, seed=2))
    return tmp_path


def _bad(cli, small, *needles, rules=None):
    args = ["clean", small / "raw", "--out", small / "out"]
    if rules is not None:
        args += ["--rules", rules]
    result = cli(*args)
    assert result.exit_code == 2, result.stderr
    line = result.stderr.strip().splitlines()[0]
    for needle in needles:
        assert needle in flat(result.stderr), (needle, result.stderr)
    assert line.startswith("error: ")
    assert not (small / "out").exists()
    assert not [p for p in small.iterdir() if p.name.startswith(".out")]  # no temporary left behind


def test_missing_action_stream(cli, small):
    (small / "raw" / "ep_0001" / "action.parquet").unlink()
    _bad(cli, small, "ep_0001", "no `action` stream")


def test_no_camera(cli, small):
    (small / "raw" / "ep_0002" / "camera.npy").unlink()
    _bad(cli, small, "ep_0002", "has no camera")


def test_corrupt_parquet(cli, small):
    (small / "raw" / "ep_0002" / "imu.parquet").write_bytes(b"PAR1 not really")
    _bad(cli, small, "ep_0002/imu.parquet", "not a readable parquet")


def test_wrong_dtype(cli, small):
    write_parquet(small / "raw" / "ep_0000" / "state.parquet", pd.DataFrame({"t": np.arange(10), "x": np.ones(10)}))
    _bad(cli, small, "ep_0000/state.parquet", "field `t`")


def test_empty_episode(cli, small):
    write_parquet(small / "raw" / "ep_0001" / "imu.parquet", pd.DataFrame({"t": np.zeros(0), "ax": np.zeros(0)}))
    _bad(cli, small, "ep_0001/imu.parquet", "empty")


def test_unreadable_meta(cli, small):
    (small / "raw" / "ep_0000" / "meta.json").write_text("{not json")
    _bad(cli, small, "ep_0000/meta.json")


@pytest.mark.parametrize(("text", "needles"), [
    ("rules:\n  values.spkie: {enabled: false}\n", ["rules.values.spkie", "values.spike"]),
    ("rules:\n  values.spike: {params: {windw: 5}}\n", ["rules.values.spike.params.windw", "window"]),
    ("rules:\n  values.spike: {params: {window: five}}\n", ["rules.values.spike.params.window", "expected int"]),
    ("rules:\n  values.spike: {action: drop}\n", ["rules.values.spike.action", "fix, mask, flag"]),
    ("rules:\n  values.spike: {severity: loud}\n", ["rules.values.spike.severity"]),
    ("rules: [\n", ["cannot parse rules", "line"]),
    ("match: {trajectry: 1}\n", ["match.trajectry"]),
])
def test_bad_rules_yaml_names_the_key(cli, small, text, needles):
    rules = small / "rules.yaml"
    rules.write_text(text)
    _bad(cli, small, str(rules.name), *needles, rules=rules)


def test_rules_yaml_changes_behaviour(cli, small):
    rules = small / "rules.yaml"
    rules.write_text("rules:\n  text.placeholder: {action: fix}\n")
    meta = small / "raw" / "ep_0000" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "instruction": "TODO"}))
    result = cli("clean", small / "raw", "--out", small / "out", "--rules", rules, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads((small / "out" / "ep_0000" / "meta.json").read_text())["instruction"] == "reach"


def test_example_rules_file_is_the_defaults():
    """examples/rules.yaml documents every rule with its default values (regenerate it with
    `python -c "import stages.cleaning as c; print(c.config.documented_yaml(), end='')" > examples/rules.yaml`)."""
    text = (ROOT / "examples" / "rules.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(text) == json.loads(json.dumps(default_config().to_json()))
    assert text == documented_yaml()
    assert load_config(ROOT / "examples" / "rules.yaml").to_json() == default_config().to_json()
