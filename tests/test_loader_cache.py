"""The uint8 frame cache: built once, rebuilt when the dataset digest changes, placed as documented."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from stages.data import cache
from stages.data.lerobot import open_dataset
from tests.fixtures.lerobot_datasets import CAMERA, make_episodes, write_ours

DATA = "data/chunk-000/file-000.parquet"


@pytest.fixture
def builds(monkeypatch):
    """Count cache builds."""
    calls = []
    real = cache.build

    def counting(dataset, key, directory, **kw):
        calls.append(directory)
        return real(dataset, key, directory, **kw)

    monkeypatch.setattr(cache, "build", counting)
    return calls


def test_built_once_then_memory_mapped(tmp_path, builds, monkeypatch):
    monkeypatch.delenv(cache.ENV_CACHE_DIR, raising=False)
    episodes = make_episodes(lengths=(6, 7))
    root = write_ours(tmp_path / "ds", episodes)
    first = open_dataset(root).images(CAMERA)
    assert isinstance(first, np.memmap) and first.dtype == np.uint8 and first.shape == (13, 16, 16, 3)
    np.testing.assert_array_equal(first, np.concatenate([e.images[CAMERA] for e in episodes]))
    assert (root / "cache" / f"{CAMERA}.u8.npy").is_file() and len(builds) == 1
    open_dataset(root).images(CAMERA)
    assert len(builds) == 1  # unchanged dataset: memory-mapped, not rebuilt


def test_rebuilt_when_digest_changes_not_when_only_touched(tmp_path, builds, monkeypatch):
    monkeypatch.delenv(cache.ENV_CACHE_DIR, raising=False)
    root = write_ours(tmp_path / "ds", make_episodes(lengths=(6, 7)))
    open_dataset(root).images(CAMERA)
    stamp = (root / DATA).stat()
    os.utime(root / DATA, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))  # same bytes, new mtime
    open_dataset(root).images(CAMERA)
    assert len(builds) == 1  # signature differs, contents (digest) do not
    other = make_episodes(lengths=(6, 7))
    other[1].images[CAMERA][3] = 0  # same shapes, one frame different
    shutil.copy(write_ours(tmp_path / "other", other) / DATA, root / DATA)
    ds = open_dataset(root)
    frames = ds.images(CAMERA)
    assert len(builds) == 2 and frames[6 + 3].max() == 0
    meta = cache.read_json(root / "cache" / f"{CAMERA}.u8.json", schema="frame-cache")
    assert meta["digest"] == ds.digest


def test_digest_matches_vla_meta(tmp_path):
    ds = open_dataset(write_ours(tmp_path / "ds", make_episodes(lengths=(3, 4))))
    assert ds.digest == ds.vla["digest"]


def test_cache_dir_override_and_env(tmp_path, monkeypatch):
    root = write_ours(tmp_path / "ds", make_episodes(lengths=(3, 4)))
    explicit = tmp_path / "explicit"
    open_dataset(root, cache_dir=explicit).images(CAMERA)
    assert (explicit / f"{CAMERA}.u8.npy").is_file() and not (root / "cache").exists()
    monkeypatch.setenv(cache.ENV_CACHE_DIR, str(tmp_path / "shared"))
    open_dataset(root).images(CAMERA)
    made = list((tmp_path / "shared").glob(f"ds-*/{CAMERA}.u8.npy"))
    assert len(made) == 1 and not (root / "cache").exists()


def test_stale_partial_cache_is_replaced(tmp_path, builds, monkeypatch):
    monkeypatch.delenv(cache.ENV_CACHE_DIR, raising=False)
    root = write_ours(tmp_path / "ds", make_episodes(lengths=(3, 4)))
    (root / "cache").mkdir()
    np.save(root / "cache" / f"{CAMERA}.u8.npy", np.zeros((2, 16, 16, 3), np.uint8))  # a killed build's leftover, no sidecar
    frames = open_dataset(root).images(CAMERA)
    assert len(builds) == 1 and frames.shape == (7, 16, 16, 3)
