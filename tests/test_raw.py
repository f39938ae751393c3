"""Raw-episode reading and writing: round trip and every bad-input case names file and field."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stages.data.raw import Camera, RawEpisode, list_episodes, read_episode, write_episode, write_parquet
from stages.errors import BadInput


def make_episode(episode_id="ep_000", n=8):
    t = np.arange(n, dtype=np.float64) / 20
    frames = np.random.default_rng(0).integers(0, 255, size=(n, 4, 4, 3), dtype=np.uint8)
    return RawEpisode(
        episode_id=episode_id,
        meta={"episode_id": episode_id, "instruction": "reach the goal", "task": "reach"},
        streams={
            "action": pd.DataFrame({"t": t, "a0": np.linspace(0, 1, n)}),
            "state": pd.DataFrame({"t": t, "x": np.ones(n)}),
        },
        cameras={"camera": Camera(index=pd.DataFrame({"t": t, "frame": np.arange(n, dtype=np.int64)}), frames=frames)},
    )


def test_round_trip(tmp_path):
    ep = make_episode()
    write_episode(tmp_path, ep)
    assert [p.name for p in list_episodes(tmp_path)] == ["ep_000"]
    back = read_episode(tmp_path / "ep_000")
    assert back.meta == ep.meta
    pd.testing.assert_frame_equal(back.streams["action"], ep.streams["action"])
    np.testing.assert_array_equal(back.cameras["camera"].frames, ep.cameras["camera"].frames)
    assert back.stream_names() == ["action", "state", "camera"]
    assert read_episode(tmp_path / "ep_000", frames="none").cameras["camera"].shape == (8, 4, 4, 3)


@pytest.fixture
def episode_dir(tmp_path):
    write_episode(tmp_path, make_episode())
    return tmp_path / "ep_000"


def bad(episode_dir, *needles):
    with pytest.raises(BadInput) as info:
        read_episode(episode_dir)
    text = info.value.message + " " + (info.value.caused_by or "")
    for needle in needles:
        assert needle in text, (needle, text)


def test_missing_action_stream(episode_dir):
    (episode_dir / "action.parquet").unlink()
    bad(episode_dir, "no `action` stream")


def test_no_camera(episode_dir):
    (episode_dir / "camera.npy").unlink()
    (episode_dir / "camera.parquet").unlink()
    bad(episode_dir, "has no camera")


def test_corrupt_parquet(episode_dir):
    (episode_dir / "state.parquet").write_bytes(b"PAR1 garbage")
    bad(episode_dir, "state.parquet", "not a readable parquet")


def test_wrong_dtype(episode_dir):
    write_parquet(episode_dir / "state.parquet", pd.DataFrame({"t": np.arange(3, dtype=np.int64), "x": [1.0, 2.0, 3.0]}))
    bad(episode_dir, "state.parquet", "field `t`", "expected float")


def test_non_numeric_column(episode_dir):
    write_parquet(episode_dir / "state.parquet", pd.DataFrame({"t": [0.0, 0.1], "x": ["a", "b"]}))
    bad(episode_dir, "state.parquet", "field `x`")


def test_empty_stream(episode_dir):
    write_parquet(episode_dir / "action.parquet", pd.DataFrame({"t": np.array([], dtype=np.float64), "a0": np.array([])}))
    bad(episode_dir, "action.parquet", "empty")


def test_unreadable_meta(episode_dir):
    (episode_dir / "meta.json").write_text("{")
    bad(episode_dir, "meta.json", "cannot parse")


def test_meta_id_must_match_folder(episode_dir):
    (episode_dir / "meta.json").write_text(json.dumps({"episode_id": "other", "instruction": "x"}))
    bad(episode_dir, "episode_id", "folder name")


def test_frame_index_out_of_range(episode_dir):
    write_parquet(episode_dir / "camera.parquet", pd.DataFrame({"t": [0.0, 0.05], "frame": np.array([0, 99], dtype=np.int64)}))
    bad(episode_dir, "camera.parquet", "field `frame`", "row 1")


def test_frames_wrong_dtype(episode_dir):
    np.save(episode_dir / "camera.npy", np.zeros((8, 4, 4, 3), dtype=np.float32))
    bad(episode_dir, "camera.npy", "expected uint8")


def test_empty_dataset(tmp_path):
    with pytest.raises(BadInput, match="holds no episodes"):
        list_episodes(tmp_path)
