"""The uint8 memory-mapped frame cache: decode a dataset's PNGs once, memory-map them afterwards.

    <cache>/<feature>.u8.npy     uint8 [N, H, W, 3], row i = frame at row i of the data files
    <cache>/<feature>.u8.json    schema `frame-cache`: the dataset digest it was built from, shape,
                                 and the data files' (path, size, mtime) signature

Where <cache> is, first match wins:
  1. `open_dataset(root, cache_dir=...)`              that directory;
  2. environment `VLA_CACHE_DIR`                      `$VLA_CACHE_DIR/<dataset name>-<hash of its path>`;
  3. `<root>/cache`                                   when writable (or already holding a valid cache);
  4. `~/.cache/vla/frames/<name>-<hash>`              for a read-only dataset (logged).

A cache is valid when its recorded digest equals the dataset digest (sha256 of the data files);
the signature lets an unchanged dataset skip the hashing. A stale or missing cache is rebuilt
under a file lock (several ranks opening one dataset build it once) and published atomically:
the .npy is written to a temporary name and renamed, then its .json.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.artifacts import atomic_file, read_json, write_json
from stages.data.png import PngError, decode_png
from stages.errors import BadInput
from stages.progress import NullReporter, Reporter

if TYPE_CHECKING:
    from stages.data.lerobot_read import LeRobotDataset

log = logging.getLogger("vla")
ENV_CACHE_DIR = "VLA_CACHE_DIR"


def _path_key(root: Path) -> str:
    return f"{root.resolve().name}-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]}"


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK | os.X_OK)


def cache_dir_for(dataset: LeRobotDataset, override: str | os.PathLike | None = None) -> Path:
    """Where `dataset`'s frame cache lives (see the module docstring for the order)."""
    if override is not None:
        return Path(override)
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env) / _path_key(dataset.root)
    local = dataset.root / "cache"
    if _writable(local) or local.is_dir():
        return local
    fallback = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vla" / "frames" / _path_key(dataset.root)
    log.warning("dataset `%s` is read-only: frame cache goes to `%s` (set %s to choose)", dataset.root, fallback, ENV_CACHE_DIR)
    return fallback


def cache_paths(directory: Path, key: str) -> tuple[Path, Path]:
    return directory / f"{key}.u8.npy", directory / f"{key}.u8.json"


def _expected_shape(dataset: LeRobotDataset, key: str) -> list[int]:
    shape = [int(s) for s in dataset.features[key]["shape"]]
    names = dataset.features[key].get("names") or []
    if len(shape) == 3 and names and names[0] in ("channel", "channels"):  # some ported datasets say CHW
        shape = [shape[1], shape[2], shape[0]]
    return [dataset.num_frames, *shape]


def is_valid(dataset: LeRobotDataset, key: str, directory: Path) -> bool:
    """Does `directory` hold a cache of `key` built from exactly this dataset's data files?"""
    npy, meta_path = cache_paths(directory, key)
    if not (npy.is_file() and meta_path.is_file()):
        return False
    try:
        meta = read_json(meta_path, schema="frame-cache")
    except BadInput:
        return False
    if meta["shape"] != _expected_shape(dataset, key):
        return False
    if meta["signature"] == dataset.file_signature():
        return True
    return meta["digest"] == dataset.digest  # files touched or copied: compare contents


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, builds may repeat but stay atomic
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(dataset: LeRobotDataset, key: str, directory: Path, *, reporter: Reporter = NullReporter()) -> None:
    """Decode every PNG of `key` once into `<directory>/<key>.u8.npy` (atomic publish)."""
    shape = _expected_shape(dataset, key)
    npy, meta_path = cache_paths(directory, key)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_file(npy) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=tuple(shape))
        with reporter.task(f"caching {key}", total=shape[0]) as advance:
            for start, blobs in dataset.image_batches(key):
                for i, blob in enumerate(blobs):  # one-time decode; the training path never gets here
                    try:
                        frame = decode_png(blob)
                    except PngError as exc:
                        raise BadInput(f"`{dataset.root}`: field `{key}` has an unreadable image at row {start + i}", caused_by=str(exc)) from None
                    if list(frame.shape) != shape[1:]:
                        raise BadInput(f"`{dataset.root}`: field `{key}` has a {list(frame.shape)} image at row {start + i}",
                                       caused_by=f"meta/info.json declares {shape[1:]}")
                    out[start + i] = frame
                advance(len(blobs))
        out.flush()
        del out
    meta = {"schema_version": 1, "feature": key, "digest": dataset.digest, "shape": shape, "signature": dataset.file_signature()}
    write_json(meta_path, meta, schema="frame-cache")
    log.info("built frame cache `%s` (%d frames)", npy, shape[0])


def frame_cache(dataset: LeRobotDataset, key: str, *, cache_dir: str | os.PathLike | None = None,
                reporter: Reporter = NullReporter()) -> np.ndarray:
    """uint8 memmap [N, H, W, 3] of image feature `key`, built first when missing or stale."""
    if dataset.features[key]["dtype"] not in ("image", "video"):
        raise BadInput(f"`{dataset.root}/meta/info.json`: feature `{key}` has dtype {dataset.features[key]['dtype']}", caused_by="expected an image feature")
    directory = cache_dir_for(dataset, cache_dir)
    if not is_valid(dataset, key, directory):
        if not _writable(directory):
            raise BadInput(f"cannot write frame cache `{directory}`", caused_by="not writable", hint=f"set {ENV_CACHE_DIR} to a writable directory")
        directory.mkdir(parents=True, exist_ok=True)
        with _lock(directory / f"{key}.lock"):
            if not is_valid(dataset, key, directory):  # another process may have built it meanwhile
                build(dataset, key, directory, reporter=reporter)
    return np.load(cache_paths(directory, key)[0], mmap_mode="r", allow_pickle=False)
