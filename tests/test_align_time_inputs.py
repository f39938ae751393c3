"""`vla align-time` on bad input: exit 2, one message naming the file and the field, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stages.data.raw import write_episode, write_parquet
from tests.test_align_time_rigs import ARM, make_episode


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / "raw"
    for e in range(2):
        write_episode(root, make_episode(ARM, f"ep_{e}", offsets_ms={"camera": 60.0}, seed=e, seconds=3.0))
    return root


def _break_meta(ep):
    (ep / "meta.json").write_text("{not json")


def _corrupt_parquet(ep):
    (ep / "imu.parquet").write_bytes(b"PAR1 this is not a parquet file")


def _int_timestamps(ep):
    df = pd.read_parquet(ep / "imu.parquet")
    df["t"] = (df["t"] * 1000).astype(np.int64)
    write_parquet(ep / "imu.parquet", df)


def _empty_stream(ep):
    df = pd.read_parquet(ep / "state.parquet")
    write_parquet(ep / "state.parquet", df.iloc[:0])


def _backwards_time(ep):
    df = pd.read_parquet(ep / "imu.parquet")
    df.loc[50, "t"] = df.loc[10, "t"]
    write_parquet(ep / "imu.parquet", df)


def _text_column(ep):
    df = pd.read_parquet(ep / "action.parquet")
    df["note"] = "x"
    write_parquet(ep / "action.parquet", df)


CASES = {
    "missing action stream": (lambda ep: (ep / "action.parquet").unlink(), ["no `action` stream"]),
    "no camera": (lambda ep: (ep / "camera.npy").unlink(), ["has no camera"]),
    "corrupt parquet": (_corrupt_parquet, ["imu.parquet", "not a readable parquet"]),
    "wrong dtype": (_int_timestamps, ["imu.parquet", "field `t` has dtype int64"]),
    "empty episode": (_empty_stream, ["state.parquet", "stream is empty"]),
    "unreadable meta.json": (_break_meta, ["meta.json", "cannot parse"]),
    "non-numeric column": (_text_column, ["action.parquet", "field `note`"]),
    "time going backwards": (_backwards_time, ["imu.parquet", "field `t` does not increase at row 50"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_and_writes_nothing(case, raw, tmp_path, cli):
    mutate, needles = CASES[case]
    mutate(raw / "ep_1")
    out = tmp_path / "aligned"
    result = cli("align-time", raw, "--out", out)
    assert result.exit_code == 2, result.stderr
    text = "".join(result.stderr.split())  # the console wraps long lines, even inside a path
    assert text.startswith("error:")
    for needle in needles:
        assert "".join(needle.split()) in text, (needle, result.stderr)
    assert "ep_1" in text.split("causedby")[0]  # the message names the episode's file
    assert not out.exists() and not list(tmp_path.glob(".aligned*"))


def test_unknown_reference_stream(raw, tmp_path, cli):
    result = cli("align-time", raw, "--out", tmp_path / "o", "--reference", "odom")
    text = " ".join(result.stderr.split())
    assert result.exit_code == 2
    assert "no reference stream `odom`" in text and "--reference" in text
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_overwrite(raw, tmp_path, cli):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("align-time", raw, "--out", out)
    text = " ".join(result.stderr.split())
    assert result.exit_code == 2 and "already exists" in text and "--overwrite" in text
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args, needle", [
    (["--max-residual-ms", "0"], "--max-residual-ms"),
    (["--max-offset-ms", "-5"], "--max-offset-ms"),
    (["--action-lag-ms", "nan"], "--action-lag-ms"),
    (["--fps", "0"], "--fps"),
])
def test_bad_options(args, needle, raw, tmp_path, cli):
    result = cli("align-time", raw, "--out", tmp_path / "o", *args)
    assert result.exit_code == 2 and needle in " ".join(result.stderr.split())
    assert not (tmp_path / "o").exists()


def test_conflicting_lags_in_meta(raw, tmp_path, cli):
    for e, lag in ((0, 30.0), (1, 45.0)):
        path = raw / f"ep_{e}" / "meta.json"
        meta = json.loads(path.read_text())
        meta["action_lag_ms"] = lag
        path.write_text(json.dumps(meta))
    result = cli("align-time", raw, "--out", tmp_path / "o")
    text = " ".join(result.stderr.split())
    assert result.exit_code == 2 and "action_lag_ms" in text and "--action-lag-ms" in text


def test_lag_stated_in_meta_is_used(raw, tmp_path, cli):
    for e in range(2):
        path = raw / f"ep_{e}" / "meta.json"
        meta = json.loads(path.read_text())
        meta["action_lag_ms"] = 40.0
        path.write_text(json.dumps(meta))
    result = cli("align-time", raw, "--out", tmp_path / "o", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    lag = json.loads(result.stdout)["action_lag"]
    assert lag["ms"] == 40.0 and lag["source"] == "meta"
