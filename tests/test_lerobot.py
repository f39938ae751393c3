"""LeRobot v3.0 writing and reading: round trip, stats, layout, determinism, LeRobot-doctor."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import weakref

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.data.lerobot import open_dataset
from stages.data.stats import aggregate_stats, image_stats, quantiles_from_histogram, vector_stats
from stages.errors import BadInput
from tests.fixtures.lerobot_datasets import CAMERA, TASKS, make_episodes, write_ours


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    episodes = make_episodes(splits=["train", "train", "val", "train"])
    root = write_ours(tmp_path_factory.mktemp("lr") / "aligned", episodes)
    return root, episodes


def test_round_trip_values_and_dtypes(written):
    root, episodes = written
    ds = open_dataset(root)
    assert (ds.version, ds.fps, ds.num_episodes, ds.num_frames) == ("v3.0", 20, 4, sum(e.length for e in episodes))
    for key in ("observation.state", "action"):
        np.testing.assert_array_equal(ds.column(key), np.concatenate([e.vectors[key] for e in episodes]))
        assert ds.column(key).dtype == np.float32
    np.testing.assert_array_equal(ds.images(CAMERA), np.concatenate([e.images[CAMERA] for e in episodes]))
    schema = pq.read_schema(root / "data/chunk-000/file-000.parquet")
    assert schema.field("timestamp").type == pa.float32()
    for key in ("frame_index", "episode_index", "index", "task_index"):
        assert schema.field(key).type == pa.int64()
    assert schema.field("vla.weight").type == pa.float32() and schema.field("vla.valid").type == pa.bool_()
    assert schema.field(CAMERA).type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert ds.features["action"]["names"] == ["dx", "dy", "dz"]
    assert ds.tasks == [TASKS["reach"], TASKS["push"]]
    assert ds.episodes["to_index"].tolist() == np.cumsum([e.length for e in episodes]).tolist()
    assert [ds.task_name(i) for i in range(4)] == ["reach", "push", "reach", "push"]
    assert ds.episode_meta(2)["split"] == "val" and ds.episode_meta(0)["offsets_ms"] == {"camera": 12.5}
    frames = ds.frames()
    assert CAMERA not in frames.columns and list(frames["index"]) == list(range(ds.num_frames))


def test_timestamp_is_frame_index_over_fps(written):
    ds = open_dataset(written[0])
    frame_index = ds.column("frame_index")
    np.testing.assert_array_equal(ds.column("timestamp"), (frame_index / 20).astype(np.float32))
    starts = ds.episodes["from_index"].to_numpy()
    assert (frame_index[starts] == 0).all()


def test_stats_match_numpy(written):
    root, episodes = written
    ds = open_dataset(root)
    action = np.concatenate([e.vectors["action"] for e in episodes]).astype(np.float64)
    st = ds.stats["action"]
    # float64 sums of the same float32 values in a different order: 1e-12 covers the rounding
    np.testing.assert_allclose(st["mean"], action.mean(0), atol=1e-12)
    np.testing.assert_allclose(st["std"], action.std(0), atol=1e-12)
    np.testing.assert_array_equal(st["min"], action.min(0))
    np.testing.assert_array_equal(st["count"], [len(action)])
    # dataset quantiles = count-weighted mean of exact per-episode quantiles (LeRobot's aggregate)
    per_ep = [np.quantile(e.vectors["action"].astype(np.float64), 0.9, axis=0) for e in episodes]
    weights = np.array([e.length for e in episodes], float)
    np.testing.assert_allclose(st["q90"], (weights[:, None] * per_ep).sum(0) / weights.sum(), atol=1e-12)
    img = np.concatenate([e.images[CAMERA] for e in episodes]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(ds.stats[CAMERA]["mean"].reshape(3), img.mean(0), atol=1e-12)
    assert ds.stats[CAMERA]["q50"].shape == (3, 1, 1)
    assert set(ds.stats) >= {"timestamp", "index", "vla.weight", "vla.valid", "observation.state"}


def test_quantiles_known_answers():
    st = vector_stats(np.arange(101, dtype=np.float64))
    assert [float(st[k][0]) for k in ("q01", "q10", "q50", "q90", "q99")] == [1.0, 10.0, 50.0, 90.0, 99.0]
    assert float(st["std"][0]) == pytest.approx(np.sqrt((101**2 - 1) / 12))  # variance of 0..100: (n²-1)/12
    rng = np.random.default_rng(3)
    samples = rng.integers(0, 256, size=(3, 997))
    counts = np.stack([np.bincount(s, minlength=256) for s in samples])
    qs = [0.0, 0.01, 0.1, 0.333, 0.5, 0.9, 0.99, 1.0]
    np.testing.assert_allclose(quantiles_from_histogram(counts, qs), np.quantile(samples, qs, axis=1), atol=1e-9)
    frames = rng.integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)
    ist = image_stats(frames)
    np.testing.assert_allclose(ist["q10"].reshape(3), np.quantile(frames.reshape(-1, 3), 0.1, axis=0) / 255, atol=1e-12)
    np.testing.assert_allclose(ist["max"].reshape(3), frames.reshape(-1, 3).max(0) / 255)
    a, b = vector_stats(np.array([1.0, 2, 3])), vector_stats(np.array([10.0, 20]))
    agg = aggregate_stats([a, b])
    assert float(agg["mean"][0]) == pytest.approx(np.mean([1, 2, 3, 10, 20]))
    assert float(agg["std"][0]) == pytest.approx(np.std([1, 2, 3, 10, 20]))
    assert float(agg["q50"][0]) == pytest.approx((3 * 2 + 2 * 15) / 5)  # LeRobot: count-weighted mean of medians


def test_layout_matches_lerobot(written):
    root, episodes = written
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_tasks"] == 2 and info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["features"][CAMERA]["dtype"] == "image" and info["features"][CAMERA]["shape"] == [16, 16, 3]
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert tasks.index.name == "task" and tasks.loc[TASKS["push"], "task_index"] == 1
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    for col in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                "dataset_to_index", "stats/action/mean", "stats/action/q99", f"stats/{CAMERA}/mean", "meta/episodes/chunk_index"):
        assert col in eps.column_names, col
    assert eps.column("dataset_to_index").to_pylist()[-1] == sum(e.length for e in episodes)
    stats = json.loads((root / "meta/stats.json").read_text())
    assert sorted(stats["action"]) == sorted(["min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"])
    hf = json.loads(pq.read_schema(root / "data/chunk-000/file-000.parquet").metadata[b"huggingface"])
    assert hf["info"]["features"][CAMERA] == {"_type": "Image"}


def test_writing_is_deterministic(tmp_path):
    a = write_ours(tmp_path / "a")
    b = write_ours(tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_writer_streams_episodes(tmp_path):
    alive = []

    def stream():
        pending = make_episodes(lengths=(8,) * 6)
        for i in range(len(pending)):
            ep = pending.pop(0)
            gc.collect()
            # the writer holds no earlier episode: only the one just handed over may still be referenced
            assert sum(ref() is not None for ref in alive[: max(i - 1, 0)]) == 0
            alive.append(weakref.ref(ep))
            yield ep

    gen = stream()
    root = write_ours(tmp_path / "stream", gen)
    assert open_dataset(root).num_episodes == 6


def test_data_files_roll_over(tmp_path):
    episodes = make_episodes(lengths=(30, 30, 30), size=32)
    root = write_ours(tmp_path / "roll", episodes, data_files_size_in_mb=0.001)  # ~1 kB: every episode starts a file
    ds = open_dataset(root)
    assert len(ds.data_files) == 3 and ds.data_files[2].name == "file-002.parquet"
    np.testing.assert_array_equal(ds.images(CAMERA)[60:], episodes[2].images[CAMERA])
    assert ds.vla["files"].keys() == {"data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet", "data/chunk-000/file-002.parquet"}


def test_write_rejects_bad_episodes(tmp_path):
    episodes = make_episodes(lengths=(5, 6))
    episodes[1].vectors["action"][2, 1] = np.nan
    with pytest.raises(BadInput, match=r"episode `ep_0001`: field `action` has NaN"):
        write_ours(tmp_path / "nan", episodes)
    assert not (tmp_path / "nan").exists()  # atomic_dir: nothing left behind
    episodes = make_episodes(lengths=(5, 6))
    episodes[1].vectors["action"] = episodes[1].vectors["action"][:, :2]
    episodes[1].names["action"] = ["dx", "dy"]
    with pytest.raises(BadInput, match=r"ep_0001.*`action` has shape \[2\]"):
        write_ours(tmp_path / "shape", episodes)
    episodes = make_episodes(lengths=(5, 6))
    episodes[0].meta["split"] = "validation"
    with pytest.raises(BadInput, match=r"episode `ep_0000`: field `meta.split` is invalid"):
        write_ours(tmp_path / "split", episodes)


@pytest.mark.skipif(shutil.which("lerobot-doctor") is None, reason="lerobot-doctor not installed (dev extra)")
def test_lerobot_doctor_passes(written):
    root, _ = written
    proc = subprocess.run(["lerobot-doctor", "check", str(root), "--ci"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    fails = [m for c in report["checks"] for m in c["messages"] if m["severity"] == "FAIL"]
    assert fails == [] and report["format_version"] == "v3" and report["total_frames"] == open_dataset(root).num_frames


def test_one_dimensional_vector_round_trip(tmp_path):
    """A shape-[1] feature is a plain Value column (as LeRobot stores it) and still loads as [N, 1]."""
    from stages.data.loader import LoaderConfig, build_loader

    episodes = make_episodes((10, 12, 9))
    for ep in episodes:
        ep.vectors["observation.state"] = ep.vectors["observation.state"][:, :1]  # a 1-axis proprio sensor
        ep.names["observation.state"] = ep.names["observation.state"][:1]
    ds = open_dataset(write_ours(tmp_path / "ds", episodes))
    assert ds.features["observation.state"]["shape"] == [1]
    expected = np.concatenate([ep.vectors["observation.state"][:, 0] for ep in episodes])
    np.testing.assert_array_equal(ds.column("observation.state"), expected)
    loader = build_loader(ds, LoaderConfig(batch_size=4, history=1, chunk=2), split="train", seed=0)
    batch = next(iter(loader))
    assert tuple(batch["state"].shape) == (4, 1)
