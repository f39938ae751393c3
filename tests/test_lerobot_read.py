"""Reading datasets we did not write (LeRobot v2.1, LeRobot-style v3.0) and refusing bad ones."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.data.lerobot import open_dataset
from stages.data.loader import LoaderConfig, build_loader
from stages.data.png import decode_png, encode_png
from stages.errors import BadInput
from tests.fixtures.lerobot_datasets import CAMERA, TASKS, make_episodes, write_lerobot_v3, write_ours, write_v21


def test_v21_fixture_reads(tmp_path):
    episodes = make_episodes()
    ds = open_dataset(write_v21(tmp_path / "v21", episodes))
    assert (ds.version, ds.fps, ds.num_episodes, ds.tasks) == ("v2.1", 10, 4, [TASKS["reach"], TASKS["push"]])
    assert [p.name for p in ds.data_files] == [f"episode_{i:06d}.parquet" for i in range(4)]
    np.testing.assert_array_equal(ds.column("action"), np.concatenate([e.vectors["action"] for e in episodes]))
    np.testing.assert_array_equal(ds.images("observation.image"), np.concatenate([e.images[CAMERA] for e in episodes]))
    state = np.concatenate([e.vectors["observation.state"] for e in episodes]).astype(np.float64)
    # aggregated from episodes_stats.jsonl by the parallel-variance formula: exact up to float64 rounding
    np.testing.assert_allclose(ds.stats["observation.state"]["std"], state.std(0), atol=1e-12)
    np.testing.assert_allclose(ds.stats["observation.state"]["q50"], np.quantile(state, 0.5, axis=0), atol=1e-7)  # float32 column
    assert ds.vla is None and ds.task_name(1) == TASKS["push"] and ds.episode_meta(1) == {}
    batch = build_loader(ds, LoaderConfig(batch_size=4, history=2, chunk=4), seed=0).batch(0)
    assert batch["frames"].shape == (4, 2, 3, 16, 16) and batch["action"].shape == (4, 4, 3)


def test_lerobot_style_v3_reads(tmp_path):
    episodes = make_episodes()
    ds = open_dataset(write_lerobot_v3(tmp_path / "lr3", episodes))
    assert ds.version == "v3.0" and ds.image_keys == ["observation.images.top"] and ds.vla is None
    np.testing.assert_array_equal(ds.column("observation.state"), np.concatenate([e.vectors["observation.state"] for e in episodes]))
    np.testing.assert_array_equal(ds.images("observation.images.top")[-1], episodes[-1].images[CAMERA][-1])
    assert "vla.weight" not in ds.features
    batch = build_loader(ds, LoaderConfig(batch_size=3, history=1, chunk=2), seed=1).batch(0)
    assert batch["weight"].tolist() == [1.0, 1.0, 1.0]  # no vla.weight: every sample weighs 1


def test_foreign_png_filters_decode_without_pillow():
    image = pytest.importorskip("PIL.Image")
    import io

    y, x = np.mgrid[0:24, 0:20]
    frame = np.stack([x * 9, y * 7, (x * y) % 256], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    image.fromarray(frame).save(buf, format="PNG")  # Pillow picks Paeth/Average rows for gradients
    np.testing.assert_array_equal(decode_png(buf.getvalue(), allow_pillow=False), frame)
    np.testing.assert_array_equal(decode_png(encode_png(frame), allow_pillow=False), frame)


@pytest.fixture
def ours(tmp_path):
    return write_ours(tmp_path / "ds", make_episodes(lengths=(5, 6)))


def _edit_json(path, edit):
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


def test_missing_meta_files(ours):
    shutil.copy(ours / "meta/info.json", ours / "info.bak")
    (ours / "meta/info.json").unlink()
    with pytest.raises(BadInput, match=r"meta/info.json`.*no such file"):
        open_dataset(ours)
    shutil.copy(ours / "info.bak", ours / "meta/info.json")
    (ours / "meta/tasks.parquet").unlink()
    with pytest.raises(BadInput, match=r"meta/tasks.parquet`.*no such file"):
        open_dataset(ours)


def test_unsupported_version(ours):
    _edit_json(ours / "meta/info.json", lambda o: o.update(codebase_version="v1.6"))
    with pytest.raises(BadInput, match=r"meta/info.json`: field `codebase_version` is 'v1.6'"):
        open_dataset(ours)


def test_missing_feature_column(ours):
    path = ours / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["action"]), path)
    with pytest.raises(BadInput, match=r"file-000.parquet`: field `action` is missing"):
        open_dataset(ours)


def test_wrong_dtype(ours):
    path = ours / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    index = table.schema.get_field_index("timestamp")
    table = table.set_column(index, "timestamp", pa.array([str(v) for v in table.column("timestamp").to_pylist()]))
    pq.write_table(table, path)
    with pytest.raises(BadInput, match=r"file-000.parquet`: field `timestamp` has type string"):
        open_dataset(ours)


def test_missing_info_field_and_feature(ours):
    _edit_json(ours / "meta/info.json", lambda o: o.pop("fps"))
    with pytest.raises(BadInput, match=r"meta/info.json`: field `fps` is missing"):
        open_dataset(ours)
    _edit_json(ours / "meta/info.json", lambda o: (o.update(fps=20), o["features"].pop("frame_index")))
    with pytest.raises(BadInput, match=r"field `features.frame_index` is missing"):
        open_dataset(ours)


def test_frame_count_mismatch(ours):
    _edit_json(ours / "meta/info.json", lambda o: o.update(total_frames=99))
    with pytest.raises(BadInput, match=r"field `total_frames`/`total_episodes` is 99/2"):
        open_dataset(ours)


def test_v21_missing_episodes_jsonl(tmp_path):
    root = write_v21(tmp_path / "v21", make_episodes(lengths=(4, 4)))
    (root / "meta/episodes.jsonl").unlink()
    with pytest.raises(BadInput, match=r"meta/episodes.jsonl`.*no such file"):
        open_dataset(root)


def test_video_feature_is_refused_for_frames(tmp_path):
    root = write_lerobot_v3(tmp_path / "vid", make_episodes(lengths=(4, 4)))
    _edit_json(root / "meta/info.json", lambda o: o["features"].update({"observation.images.wrist": {"dtype": "video", "shape": [8, 8, 3], "names": None}}))
    ds = open_dataset(root)
    with pytest.raises(BadInput, match=r"feature `observation.images.wrist` is stored as video"):
        ds.images("observation.images.wrist")
