"""`vla probe` through the Typer app: exit codes (0 pass, 1 gate failed after writing, 2 bad input
with nothing written), the report file, `--json` and the on-screen table."""

from __future__ import annotations

import json

import pytest

from stages.artifacts import read_json
from tests.fixtures import flat, probe_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return probe_data.build(tmp_path_factory.mktemp("probe_cli"))


def test_gate_failure_writes_the_report_then_exits_1(cli, world, tmp_path):
    report = tmp_path / "probe.json"
    result = cli("probe", world["ckpt"], "--data", world["data"], "--eval", world["eval"], "--report", report,
                 "--only", "4,10", "--quiet")
    assert result.exit_code == 1
    assert "1 of 2 checks passed, fewer than the pass mark 2" in flat(result.stderr)
    assert "Cycle" in result.stderr and "│ fail" in result.stderr  # the table
    assert result.stdout == ""
    written = read_json(report, schema="probe-report")
    assert [c["status"] for c in written["checks"]] == ["fail", "pass"]
    assert written["config"]["only"] == ["cycle_consistency", "data_leak_scan"]


def test_passing_gate_exits_0_and_json_goes_to_stdout(cli, world, tmp_path):
    report = tmp_path / "probe.json"
    result = cli("probe", world["ckpt"], "--data", world["data"], "--eval", world["eval"], "--report", report,
                 "--only", "10", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == read_json(report, schema="probe-report")
    assert printed["summary"]["gate_passed"] is True


def test_leak_fails_through_the_cli(cli, world, tmp_path):
    result = cli("probe", world["ckpt"], "--data", world["leaky"], "--eval", world["eval"], "--report", tmp_path / "r.json",
                 "--only", "data_leak_scan", "--quiet")
    assert result.exit_code == 1
    leak = read_json(tmp_path / "r.json", schema="probe-report")["checks"][0]
    assert leak["value"] == 1.0 and leak["details"]["leaked"] == [world["leaked_id"]]
    assert "Deduplicate by fingerprint" in leak["suggestion"]


def test_damaged_checkpoint_exit_code(cli, world, tmp_path):
    result = cli("probe", world["damaged"], "--data", world["data"], "--report", tmp_path / "r.json", "--only", "7", "--quiet")
    assert result.exit_code == 1
    assert read_json(tmp_path / "r.json", schema="probe-report")["checks"][0]["status"] == "fail"


@pytest.mark.parametrize("extra, message", [
    (["--only", "3,11"], "--only: unknown check `11`"),
    (["--only", "open_set"], "--only: unknown check `open_set`"),
    (["--min-pass", "12"], "--min-pass is 12"),
])
def test_bad_options_exit_2_and_write_nothing(cli, world, tmp_path, extra, message):
    report = tmp_path / "r.json"
    result = cli("probe", world["ckpt"], "--data", world["data"], "--report", report, *extra)
    assert result.exit_code == 2
    assert message in flat(result.stderr)
    assert not report.exists()


def test_unknown_threshold_check_exits_2(cli, world, tmp_path):
    thresholds = tmp_path / "t.yaml"
    thresholds.write_text("open_set_rejection: 0.8\nteacher_consistancy: 0.4\n", encoding="utf-8")
    result = cli("probe", world["ckpt"], "--data", world["data"], "--report", tmp_path / "r.json", "--thresholds", thresholds)
    assert result.exit_code == 2
    assert "unknown check `teacher_consistancy`" in flat(result.stderr)
    assert not (tmp_path / "r.json").exists()


def test_checkpoint_missing_files_exits_2(cli, world, tmp_path):
    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((world["ckpt"] / "model.safetensors").read_bytes())
    result = cli("probe", broken, "--data", world["data"], "--report", tmp_path / "r.json")
    assert result.exit_code == 2
    assert "`config.json` is missing" in flat(result.stderr)
    assert not (tmp_path / "r.json").exists()


def test_existing_report_needs_overwrite(cli, world, tmp_path):
    report = tmp_path / "r.json"
    report.write_text("{}", encoding="utf-8")
    result = cli("probe", world["ckpt"], "--data", world["data"], "--report", report, "--only", "10")
    assert result.exit_code == 2 and "already exists" in flat(result.stderr)
    assert report.read_text(encoding="utf-8") == "{}"
