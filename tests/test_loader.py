"""The training loader: batch contents, normalisation, masking, determinism per seed/rank/workers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stages.data.lerobot import open_dataset
from stages.data.loader import LoaderConfig, build_loader, split_episodes
from stages.errors import BadInput
from tests.fixtures.lerobot_datasets import CAMERA, make_episodes, write_ours

LENGTHS = (12, 20, 9, 15, 11, 13)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    episodes = make_episodes(lengths=LENGTHS, splits=["train", "train", "val", "train", "train", "train"], masked={3: slice(4, 8)})
    return open_dataset(write_ours(tmp_path_factory.mktemp("ld") / "aligned", episodes))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_batch_contents(ds):
    cfg = LoaderConfig(batch_size=8, history=3, history_stride=2, chunk=5, near_max=2)
    batch = build_loader(ds, cfg, seed=0).batch(0)
    frames = ds.images(CAMERA)
    start = ds.episodes["from_index"].to_numpy()[batch["episode_index"].numpy()]
    rows = start + batch["frame_index"].numpy()
    assert batch["frames"].shape == (8, 3, 3, 16, 16) and batch["frames"].dtype == torch.uint8
    for i, row in enumerate(rows):
        expected = frames[np.maximum(row + np.array([-4, -2, 0]), start[i])].transpose(0, 3, 1, 2)  # clamp to the episode start
        np.testing.assert_array_equal(batch["frames"][i].numpy(), expected)
        assert not torch.equal(batch["frames_near"][i, -1], batch["frames"][i, -1])  # Δ ≠ 0 and frames move
    assert batch["instruction"] == [ds.tasks[t] for t in ds.column("task_index")[rows]]
    names = sorted({ds.task_name(i) for i in range(ds.num_episodes)})
    assert batch["task_id"].tolist() == [names.index(ds.task_name(e)) for e in batch["episode_index"].tolist()]
    assert batch["weight"].dtype == torch.float32 and batch["episode_index"].dtype == torch.int64


def test_near_frames_shift_within_episode(ds):
    loader = build_loader(ds, LoaderConfig(batch_size=32, history=1, near_max=3), seed=4)
    images = ds.images(CAMERA).reshape(ds.num_frames, -1)
    starts = ds.episodes["from_index"].to_numpy()
    ends = starts + ds.episodes["length"].to_numpy()
    for k in range(4):
        b = loader.batch(k)
        ep = b["episode_index"].numpy()
        row = starts[ep] + b["frame_index"].numpy()
        for i in range(len(row)):
            # rows of the sample's episode showing the near frame (the fixture's frames repeat every 13)
            same = np.flatnonzero((images[starts[ep[i]] : ends[ep[i]]] == b["frames_near"][i, 0].permute(1, 2, 0).reshape(-1).numpy()).all(1))
            delta = same + starts[ep[i]] - row[i]
            assert ((np.abs(delta) >= 1) & (np.abs(delta) <= 3)).any()


def test_normalisation_uses_dataset_stats(ds):
    loader = build_loader(ds, LoaderConfig(batch_size=4, chunk=3), seed=0)
    b = loader.batch(1)
    rows = ds.episodes["from_index"].to_numpy()[b["episode_index"].numpy()] + b["frame_index"].numpy()
    st = ds.stats["observation.state"]
    expected = (ds.column("observation.state")[rows] - st["mean"]) / st["std"]
    np.testing.assert_allclose(b["state"].numpy(), expected, rtol=1e-6, atol=1e-6)  # float32 result of a float64 formula
    norm = loader.norm_stats()
    assert norm["action"]["mean"] == pytest.approx(ds.stats["action"]["mean"].tolist())
    json.dumps(norm)  # saved with the model config


def test_action_chunk_masked_at_episode_end(ds):
    loader = build_loader(ds, LoaderConfig(batch_size=16, chunk=16), seed=0)
    action = ds.column("action")
    mean, std = (np.array(loader.norm_stats()["action"][k]) for k in ("mean", "std"))
    lengths = ds.episodes["length"].to_numpy()
    seen_end = False
    for k in range(20):
        b = loader.batch(k)
        left = lengths[b["episode_index"].numpy()] - b["frame_index"].numpy()  # frames from the sample to the end
        for i in range(16):
            valid = b["action_valid"][i].numpy()
            if b["episode_index"][i] != 3:  # episode 3 has masked frames, checked below
                assert valid.tolist() == [h < left[i] for h in range(16)]
            last = ds.episodes["to_index"].to_numpy()[b["episode_index"][i]] - 1
            if left[i] == 1:
                seen_end = True
                np.testing.assert_allclose(b["action"][i].numpy(), np.repeat(((action[last] - mean) / std)[None], 16, 0), rtol=1e-5, atol=1e-6)
    assert seen_end


def test_masked_frames_not_sampled_and_invalid_in_chunks(ds):
    loader = build_loader(ds, LoaderConfig(batch_size=16, chunk=6), seed=2)
    for k in range(12):
        b = loader.batch(k)
        assert (b["weight"] > 0).all()
        ep3 = b["episode_index"] == 3
        for i in np.flatnonzero(ep3.numpy()):
            f = int(b["frame_index"][i])
            assert not (4 <= f < 8)
            for h in range(6):
                if 4 <= f + h < 8:
                    assert not b["action_valid"][i, h]


def test_missing_stat_raises_naming_feature(tmp_path):
    root = write_ours(tmp_path / "ds", make_episodes(lengths=(5, 6)))
    stats = json.loads((root / "meta/stats.json").read_text())
    del stats["action"]
    (root / "meta/stats.json").write_text(json.dumps(stats))
    with pytest.raises(BadInput, match=r"meta/stats.json`: feature `action` has no statistics"):
        build_loader(open_dataset(root), LoaderConfig(batch_size=2), seed=0)
    stats["action"] = {"mean": [0, 0, 0]}
    (root / "meta/stats.json").write_text(json.dumps(stats))
    with pytest.raises(BadInput, match=r"field `action.std` is missing"):
        build_loader(open_dataset(root), LoaderConfig(batch_size=2), seed=0)


def test_missing_feature_raises(ds):
    with pytest.raises(BadInput, match=r"feature `observation.proprio` is missing"):
        build_loader(ds, LoaderConfig(state_key="observation.proprio"), seed=0)


def test_deterministic_per_seed(ds):
    cfg = LoaderConfig(batch_size=6, history=2, chunk=4)
    a, b, c = (build_loader(ds, cfg, seed=s) for s in (7, 7, 8))
    assert all(_equal(a.batch(k), b.batch(k)) for k in range(10))
    assert not _equal(a.batch(0), c.batch(0))


def test_ranks_union_is_global_batch(ds):
    cfg = LoaderConfig(batch_size=8, history=2, chunk=4)
    whole = build_loader(ds, cfg, seed=3)
    parts = [build_loader(ds, cfg, seed=3, rank=r, world_size=4) for r in range(4)]
    for k in range(12):
        shards = [p.batch(k) for p in parts]
        merged = {key: torch.cat([s[key] for s in shards]) if isinstance(shards[0][key], torch.Tensor) else sum((s[key] for s in shards), [])
                  for key in shards[0]}
        assert _equal(merged, whole.batch(k))


def test_workers_give_the_same_batches(ds):
    cfg = LoaderConfig(batch_size=8, history=2, chunk=4)
    plain = build_loader(ds, cfg, seed=5)
    workers = build_loader(ds, LoaderConfig(batch_size=8, history=2, chunk=4, num_workers=2), seed=5)
    for k, batch in zip(range(6), workers):
        assert _equal(batch, plain.batch(k))


def test_epochs_cover_every_sample_once_and_reshuffle(ds):
    loader = build_loader(ds, LoaderConfig(batch_size=5), seed=0)
    n = len(loader.samples)
    positions = np.arange(2 * n)
    rows, _ = loader.source.rows_and_shifts(positions)
    assert sorted(rows[:n]) == sorted(loader.samples) and sorted(rows[n:]) == sorted(loader.samples)
    assert not np.array_equal(rows[:n], rows[n:])
    # batches straddle the epoch boundary without dropping samples
    got = np.concatenate([loader.batch(k)["frame_index"].numpy() for k in range(-(-n // 5))])[:n]
    starts = ds.episodes["from_index"].to_numpy()
    assert len(got) == n and got.dtype == np.int64 and starts.size == ds.num_episodes


def test_resume_continues_the_stream(ds):
    cfg = LoaderConfig(batch_size=4)
    first = build_loader(ds, cfg, seed=9)
    it = iter(first)
    consumed = [next(it) for _ in range(5)]
    resumed = build_loader(ds, cfg, seed=9)
    resumed.load_state_dict(first.state_dict())
    assert first.state_dict() == {"next_batch": 5}
    assert _equal(next(iter(resumed)), first.batch(5)) and _equal(consumed[4], first.batch(4))


def test_splits(ds):
    splits = split_episodes(ds, 0.5)
    assert splits["heldout"].tolist() == [2] and 2 not in splits["train"]
    held = build_loader(ds, LoaderConfig(batch_size=4, history=1), split="heldout", seed=0)
    eps = torch.cat([b["episode_index"] for b in held]).tolist()
    assert eps == [2] * LENGTHS[2] and len(held) == 3  # one pass, in order, last batch partial
    train = build_loader(ds, LoaderConfig(batch_size=64), seed=0)
    assert 2 not in train.batch(0)["episode_index"].tolist()


def test_fraction_split_without_meta(tmp_path):
    root = write_ours(tmp_path / "ds", make_episodes(lengths=(4,) * 10))
    ds = open_dataset(root)
    first, again = split_episodes(ds, 0.2), split_episodes(open_dataset(root), 0.2)
    assert len(first["heldout"]) == 2 and first["heldout"].tolist() == again["heldout"].tolist()
    assert sorted(first["train"].tolist() + first["heldout"].tolist()) == list(range(10))


def test_bad_options(ds):
    with pytest.raises(BadInput, match="`chunk` is 17"):
        build_loader(ds, LoaderConfig(chunk=17), seed=0)
    with pytest.raises(BadInput, match="`batch_size` is 6"):
        build_loader(ds, LoaderConfig(batch_size=6), seed=0, rank=0, world_size=4)
