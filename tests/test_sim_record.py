"""`vla sim record` end to end: layout, the rig's clocks, injected faults, copies, determinism, bad options.

Two small recordings are shared by the module (2 tasks x 2 episodes x 40 steps, plus an eval split):
`faulty` has every row and text fault switched on, `clean` has none but copies, constraints and a
second worker (reach only, window-close held out).
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stages.artifacts import read_json
from stages.data.raw import list_episodes, read_episode
from stages.sim import faults as F
from stages.sim.constraints import SPEED_LIMIT, WORKSPACE_BOUNDARY
from stages.sim.envs import ACTION_UNIT_MPS, CONTROL_DT
from stages.sim.lag import lag_ms
from stages.sim.record import RecordConfig, record, truth_path, with_rates
from stages.sim.rig import JITTER_CLIP

STEPS = 40
FAULTY_ARGS = [
    "--tasks", "reach,push", "--heldout-tasks", "button-press-topdown", "--episodes-per-task", "2", "--steps", str(STEPS), "--eval-episodes-per-task", "1",
    "--workers", "1", "--seed", "5", "--quiet", "--json",
    *[a for kind in F.ROW_KINDS for a in ("--fault-rate", f"{kind}=1")],
    "--fault-rate", "redundant_text=1", "--fault-rate", "placeholder_text=0.3",
]


def _clean_config(workers: int) -> RecordConfig:
    cfg = RecordConfig(tasks=("reach",), heldout_tasks=("window-close",), episodes_per_task=2, steps=STEPS,
                       eval_episodes_per_task=1, seed=3, workers=workers, constraint_share=0.5)
    rates = {k: 0.0 for k in F.FAULT_KINDS} | {F.DUP_EPISODE: 0.5, F.NEAR_DUP: 0.5, F.EVAL_LEAK: 0.5}
    return with_rates(cfg, rates)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> Path:
    from vlacli.app import app

    root = tmp_path_factory.mktemp("faulty")
    result = CliRunner().invoke(app, ["sim", "record", "--out", str(root / "raw"), "--eval-out", str(root / "eval"), *FAULTY_ARGS])
    assert result.exit_code == 0, result.stderr
    (root / "summary.json").write_text(result.stdout)
    return root / "raw"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    record(_clean_config(workers=2), root / "raw", root / "eval")
    return root / "raw"


def _truth(out: Path) -> dict:
    return read_json(truth_path(out), schema="truth")


# ----------------------------------------------------------------------------- layout


def test_layout_meta_and_truth_beside_the_folder(faulty):
    assert truth_path(faulty).is_file() and not (faulty / truth_path(faulty).name).exists()
    truth = _truth(faulty)
    episodes = list_episodes(faulty)
    assert sorted(p.name for p in episodes) == sorted(truth["episodes"])
    for path in episodes:
        ep = read_episode(path, frames="load")
        assert set(ep.streams) == {"state", "imu", "action"} and set(ep.cameras) == {"camera"}
        assert ep.cameras["camera"].frames.shape[1:] == (64, 64, 3)
        for key in ("episode_id", "instruction", "task", "scene", "robot_type", "split", "session", "language"):
            assert key in ep.meta, key
        t = truth["episodes"][path.name]
        assert ep.meta["session"] == t["session"] and ep.meta["task"] == t["task"]
        assert {name: len(df) for name, df in ep.streams.items()} | {"camera": len(ep.cameras["camera"].index)} == t["rows"]
    assert truth["robot"]["action_lag_ms"] > 0


def test_json_summary_on_stdout(faulty):
    summary = json.loads((faulty.parent / "summary.json").read_text())
    truth = _truth(faulty)
    assert summary["episodes"] == len(truth["episodes"]) and summary["truth"] == str(truth_path(faulty))
    assert summary["action_lag_ms"] == truth["robot"]["action_lag_ms"]
    assert set(summary["success_rate"]) == {"reach", "push"}
    counted = sum(len(t["faults"]) for t in truth["episodes"].values())
    assert sum(summary["faults"].values()) == counted


def test_eval_split_holds_open_set_tasks(faulty):
    evals = _truth(faulty.with_name("eval"))["episodes"]
    tasks = {t["task"]: t["open_set"] for t in evals.values()}
    assert tasks == {"reach": False, "push": False, "button-press-topdown": True}
    assert all(t["split"] == "eval" for t in evals.values())
    assert "button-press-topdown" not in {t["task"] for t in _truth(faulty)["episodes"].values()}


def test_instructions_in_both_languages(faulty):
    truth = _truth(faulty)["episodes"]
    by_lang = {lang: [t["instruction"] for t in truth.values() if t["language"] == lang] for lang in ("en", "zh")}
    assert by_lang["en"] and by_lang["zh"]
    assert all(text.isascii() for text in by_lang["en"])
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in text) for text in by_lang["zh"])


# ----------------------------------------------------------------------------- the rig's clocks


def test_timestamps_follow_the_truth_clock(clean):
    """t = t0 + t_true + offset + drift * t_true + jitter, at each stream's rate, jitter as stated."""
    truth = _truth(clean)
    residuals: dict[str, list[np.ndarray]] = {}
    for eid, t in truth["episodes"].items():
        if t["faults"]:  # copies repeat another episode's rows
            continue
        ep = read_episode(clean / eid, frames="none")
        tables = dict(ep.streams) | {"camera": ep.cameras["camera"].index}
        for name, df in tables.items():
            period = 1.0 / truth["streams"][name]["rate_hz"]
            t_true = np.arange(len(df)) * period
            expected = t["t0"] + t_true + t["offset_ms"][name] / 1000 + t["drift_ppm"][name] * 1e-6 * t_true
            r = df["t"].to_numpy() - expected
            jitter = truth["streams"][name]["jitter_ms"] / 1000
            assert np.all(np.abs(r) <= JITTER_CLIP * jitter + 1e-9), (eid, name)  # clipped at 3σ
            residuals.setdefault(name, []).append(r)
        session = truth["sessions"][t["session"]]
        for name, offset in t["offset_ms"].items():  # the session's offset plus its drift so far
            drifted = session["offset_ms"][name] + session["drift_ppm"][name] * 1e-6 * (t["t0"] - session["t0"]) * 1000
            assert offset == pytest.approx(drifted, abs=1e-5)  # offsets are stored to 1e-6 ms
    for name, rs in residuals.items():
        std = float(np.std(np.concatenate(rs)))
        # >= 40 samples per stream: the sample std of a clipped Gaussian lies within 35 % of σ
        assert std == pytest.approx(truth["streams"][name]["jitter_ms"] / 1000, rel=0.35), name


def test_offsets_are_drawn_per_session_within_bounds(clean):
    truth = _truth(clean)
    for session in truth["sessions"].values():
        assert all(abs(v) <= 300 for v in session["offset_ms"].values())
        assert all(abs(v) <= 50 for v in session["drift_ppm"].values())
        assert len(set(session["offset_ms"].values())) == 4  # each stream has its own clock


def test_episode_lag_is_the_xcorr_of_the_written_streams(clean):
    """Row for row, the written action and state streams reproduce each episode's stated lag."""
    truth = _truth(clean)
    for eid, t in truth["episodes"].items():
        if t["faults"]:
            continue
        ep = read_episode(clean / eid, frames="none")
        action = ep.streams["action"][["dx", "dy", "dz"]].to_numpy()
        motion = ep.streams["state"][["ee_vx", "ee_vy", "ee_vz"]].to_numpy()
        assert lag_ms(action, motion, CONTROL_DT) == pytest.approx(t["action_lag_ms"], abs=1e-6)
    # the demo robot: 25 ms transport delay + a 7.5 ms servo; the stated lag must reflect both
    assert 30.0 < truth["robot"]["action_lag_ms"] < 55.0


# ----------------------------------------------------------------------------- faults


def _signature(kind: str, ep, fault: dict, period: float) -> bool:
    """Does the written data show `kind` at the truth's rows?"""
    a, b = fault["rows"]
    name = fault["stream"]
    table = ep.cameras[name].index if name in ep.cameras else ep.streams[name]
    t = table["t"].to_numpy()
    if kind == F.DROPPED:
        return b - a == 2 and t[a + 1] - t[a] > 2.5 * period
    if kind == F.DUP_TS:
        return b - a == 2 and t[a] == t[a + 1]
    if kind == F.NON_MONO:
        return b - a == 2 and t[a + 1] < t[a]
    if kind == F.FROZEN:
        frames = ep.cameras[name].frames[a:b]
        return b - a >= 5 and all(np.array_equal(frames[0], f) for f in frames[1:]) and np.all(np.diff(t[a:b]) > 0)
    x = table[fault["column"]].to_numpy()
    if kind == F.NAN_INF:
        return not np.isfinite(x[a:b]).any()
    if kind == F.NEG_SPEED:
        return bool(np.all(x[a:b] < 0))
    if kind == F.SPIKE:
        lo, hi = min(x[a - 1], x[a + 1]), max(x[a - 1], x[a + 1])
        out = max(x[a] - hi, lo - x[a])
        return out >= 8 * fault["detail"]["local_sigma"] and out > 0
    raise AssertionError(kind)


@pytest.mark.parametrize("split", ["raw", "eval"])
def test_every_fault_kind_is_where_the_truth_says(faulty, split):
    root = faulty.with_name(split)
    truth = _truth(root)
    seen = set()
    for eid, t in truth["episodes"].items():
        ep = read_episode(root / eid, frames="load")
        for fault in t["faults"]:
            kind = fault["kind"]
            seen.add(kind)
            if kind in F.TEXT_KINDS:
                assert ep.meta["instruction"] == fault["detail"]["written"] != t["instruction"]
                continue
            period = 1.0 / truth["streams"][fault["stream"]]["rate_hz"]
            assert _signature(kind, ep, fault, period), (eid, fault)
    assert seen >= set(F.ROW_KINDS), sorted(set(F.ROW_KINDS) - seen)


def test_both_text_faults_are_injected(faulty):
    kinds = {f["kind"] for split in ("raw", "eval") for t in _truth(faulty.with_name(split))["episodes"].values() for f in t["faults"]}
    assert kinds >= set(F.TEXT_KINDS), "seed 5 draws both text faults over the 7 episodes"


def test_no_fault_signature_outside_the_truth(faulty):
    """The data holds no timestamp glitch, non-finite value or negative speed that the truth omits."""
    truth = _truth(faulty)
    for eid, t in truth["episodes"].items():
        ep = read_episode(faulty / eid, frames="none")
        tables = dict(ep.streams) | {"camera": ep.cameras["camera"].index}
        for name, df in tables.items():
            rows = [f["rows"] for f in t["faults"] if f.get("stream") == name]
            covered = np.zeros(len(df), dtype=bool)
            for a, b in rows:
                covered[a:b] = True
            dt = np.diff(df["t"].to_numpy())
            period = 1.0 / truth["streams"][name]["rate_hz"]
            odd = np.flatnonzero((dt <= 0) | (dt > 2.5 * period))
            assert all(covered[i] and covered[i + 1] for i in odd), (eid, name, odd)
            values = df.drop(columns=["t", "frame"], errors="ignore").to_numpy()
            bad = ~np.isfinite(values).all(axis=1)
            if "ee_speed" in df:
                bad |= df["ee_speed"].to_numpy() < 0
            assert not (bad & ~covered).any(), (eid, name)


def test_faults_never_overlap(faulty):
    for t in _truth(faulty)["episodes"].values():
        by_stream: dict[str, list] = {}
        for f in t["faults"]:
            if f.get("rows"):
                by_stream.setdefault(f["stream"], []).append(f["rows"])
        for rows in by_stream.values():
            rows.sort()
            assert all(b[0] >= a[1] for a, b in zip(rows, rows[1:])), rows


def test_copies_duplicates_near_duplicates_and_leaks(clean):
    truth = _truth(clean)
    eval_root = clean.with_name("eval")
    copies = {eid: t["faults"][0] for eid, t in truth["episodes"].items() if t["faults"]}
    kinds = sorted(f["kind"] for f in copies.values())
    assert kinds == sorted([F.DUP_EPISODE, F.NEAR_DUP, F.EVAL_LEAK])
    originals = [eid for eid, t in truth["episodes"].items() if not t["faults"]]
    assert min(copies) > max(originals)  # a keep-the-first detector flags exactly the copies
    for eid, fault in copies.items():
        source = (eval_root if fault["kind"] == F.EVAL_LEAK else clean) / fault["of"]
        names = ["state.parquet", "imu.parquet", "action.parquet", "camera.parquet", "camera.npy"]
        same, differ, _ = filecmp.cmpfiles(source, clean / eid, names, shallow=False)
        meta = json.loads((clean / eid / "meta.json").read_text())
        assert meta["episode_id"] == eid and meta["split"] == "train"
        if fault["kind"] == F.NEAR_DUP:
            assert "camera.parquet" in same  # same timestamps ...
            a = read_episode(source, frames="load")
            b = read_episode(clean / eid, frames="load")
            x, y = a.streams["action"]["dy"].to_numpy(), b.streams["action"]["dy"].to_numpy()
            assert not np.array_equal(x, y)
            assert np.max(np.abs(x - y)) < 0.1 * np.std(x)  # ... values within a few % of the spread
            assert np.abs(a.cameras["camera"].frames.astype(int) - b.cameras["camera"].frames).max() <= 2
            assert (b.streams["state"]["ee_speed"] >= 0).all()  # noise must not fake a negative-speed fault
        else:
            assert sorted(same) == sorted(names), differ


def test_same_seed_same_bytes_whatever_the_worker_count(clean, tmp_path):
    record(_clean_config(workers=1), tmp_path / "raw", tmp_path / "eval")
    for name in ("raw", "eval"):
        mine, theirs = clean.with_name(name), tmp_path / name
        cmp = filecmp.dircmp(mine, theirs)
        assert not cmp.left_only and not cmp.right_only
        for sub in cmp.common_dirs:
            files = [p.name for p in (mine / sub).iterdir()]
            _, differ, errors = filecmp.cmpfiles(mine / sub, theirs / sub, files, shallow=False)
            assert not differ and not errors, (sub, differ)
        assert truth_path(mine).read_bytes() == truth_path(theirs).read_bytes()


def test_constraint_episodes_obey_their_constraint(clean):
    truth = _truth(clean)
    kinds = set()
    for eid, t in truth["episodes"].items():
        c = t["constraint"]
        if not c:
            continue
        kinds.add(c["kind"])
        ep = read_episode(clean / eid, frames="none")
        if c["kind"] == SPEED_LIMIT:
            cmd = np.linalg.norm(ep.streams["action"][["dx", "dy", "dz"]].to_numpy(), axis=1) * ACTION_UNIT_MPS
            assert cmd.max() <= c["value"] + 1e-9
            # measured speed: the servo tracks the command; near-duplicate noise adds ~1 % of the std
            assert ep.streams["state"]["ee_speed"].max() <= 1.05 * c["value"]
        else:
            assert c["kind"] == WORKSPACE_BOUNDARY
            # the hand tracks its mocap floor to within 2 mm (servo overshoot, measured <= 1 mm)
            assert ep.streams["state"]["ee_z"].min() >= c["value"] - 0.002
    assert kinds, "the clean recording should hold constraint episodes"


# ----------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "reach,fly"], "unknown task `fly`"),
        (["--fault-rate", "spike=-0.1"], "fault rate `spike=-0.1` is out of range"),
        (["--fault-rate", "sparks=0.1"], "unknown fault kind `sparks`"),
        (["--fault-rate", "spike"], "is not KIND=RATE"),
        (["--heldout-tasks", "reach"], "overlaps `--tasks`"),
        (["--steps", "10"], "is too short"),
        (["--camera", "nose"], "unknown camera `nose`"),
        (["--episodes-per-task", "0"], ""),
    ],
)
def test_bad_options_exit_2_and_write_nothing(cli, tmp_path, args, message):
    result = cli("sim", "record", "--out", tmp_path / "raw", "--eval-out", tmp_path / "eval", "--tasks", "reach", *args)
    assert result.exit_code == 2, result.stderr
    assert message in " ".join(result.stderr.split())  # rich wraps long lines
    assert list(tmp_path.iterdir()) == []


def test_existing_or_unwritable_output_exits_2(cli, tmp_path):
    (tmp_path / "raw").mkdir()
    result = cli("sim", "record", "--out", tmp_path / "raw", "--tasks", "reach")
    assert result.exit_code == 2 and "already exists" in " ".join(result.stderr.split())
    assert [p.name for p in tmp_path.iterdir()] == ["raw"] and not any((tmp_path / "raw").iterdir())
    result = cli("sim", "record", "--out", tmp_path / "new", "--eval-out", tmp_path / "raw", "--tasks", "reach")
    assert result.exit_code == 2 and not (tmp_path / "new").exists()
    result = cli("sim", "record", "--out", "/proc/vla-raw", "--tasks", "reach")  # unwritable even for root
    assert result.exit_code == 2 and "cannot write" in result.stderr
