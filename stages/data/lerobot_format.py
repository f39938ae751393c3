"""The on-disk layout of LeRobot datasets (v3.0 written and read, v2.1 read), in one place.

v3.0 (what `write_dataset` produces, ARCHITECTURE §4):

    meta/info.json                              codebase_version "v3.0", fps, features, path templates
    meta/stats.json                             feature -> {min, max, mean, std, count, q01, q10, q50, q90, q99}
    meta/tasks.parquet                          index `task` (the string), column `task_index`
    meta/episodes/chunk-000/file-000.parquet    one row per episode (+ flattened per-episode stats)
    data/chunk-000/file-000.parquet             one row per frame, one row group per episode
    meta/vla.json                               vla extras (schema `vla-dataset-meta`)

v2.1 (read only): meta/info.json, meta/episodes.jsonl, meta/tasks.jsonl, meta/episodes_stats.jsonl,
data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet.
"""

from __future__ import annotations

import json

import pyarrow as pa

CODEBASE_VERSION = "v3.0"
READABLE_VERSIONS = ("v3.0", "v2.1", "v2.0")

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
VLA_META_PATH = "meta/vla.json"
EPISODES_DIR = "meta/episodes"
DATA_DIR = "data"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
DATA_PATH = DATA_DIR + "/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"

LEGACY_EPISODES_PATH = "meta/episodes.jsonl"
LEGACY_TASKS_PATH = "meta/tasks.jsonl"
LEGACY_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"
LEGACY_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"

DEFAULT_CHUNK_SIZE = 1000  # files per chunk folder (LeRobot's default)
DEFAULT_DATA_FILE_SIZE_IN_MB = 100  # a data file rolls over to the next past this size
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 500

# Per-frame bookkeeping columns every LeRobot dataset has.
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
WEIGHT = "vla.weight"  # float32 sample weight, 0 = masked
VALID = "vla.valid"  # bool, False where clean/align masked the frame
VLA_FEATURES = {
    WEIGHT: {"dtype": "float32", "shape": [1], "names": None},
    VALID: {"dtype": "bool", "shape": [1], "names": None},
}
IMAGE_DTYPES = ("image", "video")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # what LeRobot's compute_stats writes
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)

IMAGE_ARROW = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF datasets' Image() storage


def chunk_file(episode_or_file: int, chunks_size: int) -> tuple[int, int]:
    """Sequential file number -> (chunk_index, file_index), `chunks_size` files per chunk."""
    return episode_or_file // chunks_size, episode_or_file % chunks_size


def arrow_type(feature: dict) -> pa.DataType:
    """Arrow storage of a feature as HF datasets writes it (Value, fixed-length Sequence, Image)."""
    dtype = feature["dtype"]
    if dtype in IMAGE_DTYPES:
        return IMAGE_ARROW
    value = pa.bool_() if dtype == "bool" else pa.from_numpy_dtype(dtype)
    shape = list(feature["shape"])
    if shape == [1]:
        return value
    if len(shape) == 1:
        return pa.list_(value, shape[0])
    raise ValueError(f"feature shape {shape} is not supported (scalars and vectors only)")


def hf_feature(feature: dict) -> dict:
    """The `huggingface` schema-metadata entry for a feature, so `datasets` decodes columns."""
    dtype = feature["dtype"]
    if dtype in IMAGE_DTYPES:
        return {"_type": "Image"}
    value = {"dtype": dtype, "_type": "Value"}
    shape = list(feature["shape"])
    return value if shape == [1] else {"feature": value, "length": shape[0], "_type": "Sequence"}


def data_schema(features: dict) -> pa.Schema:
    """Arrow schema of a data file: one column per non-video feature, in info.json order."""
    fields = [pa.field(key, arrow_type(ft)) for key, ft in features.items() if ft["dtype"] != "video"]
    hf = {"info": {"features": {key: hf_feature(ft) for key, ft in features.items() if ft["dtype"] != "video"}}}
    return pa.schema(fields, metadata={b"huggingface": json.dumps(hf, sort_keys=True).encode()})


def image_keys(features: dict) -> list[str]:
    return [key for key, ft in features.items() if ft["dtype"] in IMAGE_DTYPES]


def vector_keys(features: dict) -> list[str]:
    """Numeric per-frame features other than LeRobot's bookkeeping and vla's extras."""
    skip = set(DEFAULT_FEATURES) | set(VLA_FEATURES)
    return [k for k, ft in features.items() if k not in skip and ft["dtype"] not in IMAGE_DTYPES and ft["dtype"] != "string"]
