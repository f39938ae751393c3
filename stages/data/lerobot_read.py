"""Read LeRobot datasets: v3.0 (ours and LeRobot-made) and v2.1 (and v2.0) by their documented layouts.

Every problem is a `BadInput` naming the file and the field. Non-image columns are read once into
one Arrow table; image features are served from the uint8 memory-mapped cache (`stages.data.cache`),
so PNG bytes are decoded once per dataset, never in a training loop.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.artifacts import read_json, sha256_file
from stages.data import lerobot_format as fmt
from stages.data.cache import frame_cache
from stages.data.lerobot_write import data_digest
from stages.data.stats import aggregate_stats, stats_from_json, vector_stats
from stages.errors import BadInput
from stages.progress import NullReporter, Reporter

_REQUIRED_INFO = ("codebase_version", "fps", "features", "total_episodes", "total_frames", "data_path")
_NUMERIC_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"}


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise BadInput(f"cannot read `{path}`", caused_by="no such file") from None
    except (OSError, pa.ArrowException) as exc:
        raise BadInput(f"cannot read `{path}`", caused_by=f"not a readable parquet file: {exc}") from None


def _read_jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BadInput(f"cannot read `{path}`", caused_by="no such file") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BadInput(f"cannot parse `{path}`", caused_by=f"line {number}: {exc.msg}") from None
    return rows


def _check_info(info: object, path: Path) -> dict:
    if not isinstance(info, dict):
        raise BadInput(f"`{path}`: expected a JSON object")
    for key in _REQUIRED_INFO:
        if key not in info:
            raise BadInput(f"`{path}`: field `{key}` is missing")
    version = info["codebase_version"]
    if version not in fmt.READABLE_VERSIONS:
        raise BadInput(f"`{path}`: field `codebase_version` is {version!r}", caused_by=f"supported: {', '.join(fmt.READABLE_VERSIONS)}")
    if not isinstance(info["fps"], (int, float)) or info["fps"] <= 0:
        raise BadInput(f"`{path}`: field `fps` is {info['fps']!r}", caused_by="expected a positive number")
    if not isinstance(info["features"], dict):
        raise BadInput(f"`{path}`: field `features` is not an object")
    for key, ft in info["features"].items():
        if not isinstance(ft, dict) or "dtype" not in ft or "shape" not in ft:
            raise BadInput(f"`{path}`: field `features.{key}` needs `dtype` and `shape`")
        if ft["dtype"] not in _NUMERIC_DTYPES | {"image", "video", "string"}:
            raise BadInput(f"`{path}`: field `features.{key}.dtype` is {ft['dtype']!r}", caused_by="unknown dtype")
    for key in fmt.DEFAULT_FEATURES:
        if key not in info["features"]:
            raise BadInput(f"`{path}`: field `features.{key}` is missing", caused_by="every LeRobot dataset has it")
    return info


def _arrow_matches(feature: dict, typ: pa.DataType) -> bool:
    """Is the parquet column's type a faithful storage of the declared feature?"""
    dtype = feature["dtype"]
    if dtype in fmt.IMAGE_DTYPES:
        return pa.types.is_struct(typ) and typ.get_field_index("bytes") >= 0
    if dtype == "string":
        return pa.types.is_string(typ) or pa.types.is_large_string(typ)
    shape = list(feature["shape"])
    if shape != [1] and (pa.types.is_list(typ) or pa.types.is_fixed_size_list(typ) or pa.types.is_large_list(typ)):
        typ = typ.value_type
    elif shape != [1]:
        return False
    if pa.types.is_list(typ) or pa.types.is_fixed_size_list(typ):  # shape [1] stored as a 1-list
        typ = typ.value_type
    if dtype == "bool":
        return pa.types.is_boolean(typ)
    if dtype.startswith("float"):
        return pa.types.is_floating(typ)
    return pa.types.is_integer(typ)


class LeRobotDataset:
    """A LeRobot dataset on disk (CONTRACTS §B). Construct with `open_dataset(root)`."""

    def __init__(self, root: Path, info: dict, episodes: pd.DataFrame, tasks: list[str], data_files: list[Path],
                 raw_stats: dict | None, episode_stats: list[dict] | None, vla: dict | None, cache_dir: Path | None,
                 reporter: Reporter = NullReporter()):
        self.root, self.info, self.episodes, self.tasks = root, info, episodes, tasks
        self.data_files = data_files
        self.vla = vla
        self.cache_dir = cache_dir
        self.reporter = reporter  # progress of the one-time frame-cache build
        self.stats_path = root / (fmt.LEGACY_EPISODES_STATS_PATH if episode_stats is not None else fmt.STATS_PATH)
        self._raw_stats, self._episode_stats = raw_stats, episode_stats
        self._images: dict[str, np.ndarray] = {}

    # -- header -------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.info["codebase_version"]

    @property
    def fps(self) -> float:
        return self.info["fps"]

    @property
    def features(self) -> dict:
        return self.info["features"]

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return int(self.episodes["length"].sum())

    @property
    def image_keys(self) -> list[str]:
        return fmt.image_keys(self.features)

    @property
    def vector_keys(self) -> list[str]:
        return fmt.vector_keys(self.features)

    def __repr__(self) -> str:
        return f"LeRobotDataset({str(self.root)!r}, {self.version}, {self.num_episodes} episodes, {self.num_frames} frames)"

    # -- metadata -----------------------------------------------------------------------------
    @cached_property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """feature -> {min, max, mean, std, count, q01..q99}; {} when the dataset has none."""
        if self._raw_stats is not None:
            stats = stats_from_json(self._raw_stats)
        elif self._episode_stats:
            per_feature: dict[str, list] = {}
            for entry in self._episode_stats:
                for feature, st in stats_from_json(entry).items():
                    per_feature.setdefault(feature, []).append(st)
            stats = {feature: aggregate_stats(items) for feature, items in per_feature.items()}
        else:
            return {}
        if self.version.startswith("v2"):  # v2.x stores no quantiles: add them from the frames (exact)
            for key in self.vector_keys:
                if key in stats and any(q not in stats[key] for q in fmt.QUANTILE_KEYS):
                    exact = vector_stats(self.column(key))
                    stats[key] = {**{q: exact[q] for q in fmt.QUANTILE_KEYS}, **stats[key]}
        return stats

    def episode_meta(self, i: int) -> dict:
        if self.vla is None:
            return {}
        entries = self.vla.get("episodes", [])
        return dict(entries[i]) if 0 <= i < len(entries) else {}

    def task_name(self, i: int) -> str:
        """The episode's task family (vla meta `task_name`), else its LeRobot task string."""
        name = self.episode_meta(i).get("task_name")
        return str(name) if name else str(self.episodes["task"].iloc[i])

    # -- frames -------------------------------------------------------------------------------
    @cached_property
    def _table(self) -> pa.Table:
        """All non-image columns of all data files, in row order. [N rows]"""
        columns = [k for k, ft in self.features.items() if ft["dtype"] not in fmt.IMAGE_DTYPES]
        tables = [_read_parquet(path, columns=columns) for path in self.data_files]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        expected = np.repeat(self.episodes["episode_index"].to_numpy(), self.episodes["length"].to_numpy())
        got = table.column("episode_index").to_numpy()
        if len(got) != len(expected) or not np.array_equal(got, expected):
            where = self.data_files[0] if len(self.data_files) == 1 else self.root / fmt.DATA_DIR
            raise BadInput(f"`{where}`: field `episode_index` disagrees with the episode metadata",
                           caused_by=f"{len(got)} rows for {len(expected)} frames in the episodes' lengths")
        return table

    def frames(self) -> pd.DataFrame:
        """All non-image columns as a DataFrame (vector features hold one array per row)."""
        return self._table.to_pandas()

    def column(self, key: str) -> np.ndarray:
        """One non-image feature as an array: [N] for scalars, [N, D] for vectors."""
        if key not in self.features:
            raise BadInput(f"`{self.root / fmt.INFO_PATH}`: feature `{key}` is missing", caused_by=f"features: {', '.join(self.features)}")
        if self.features[key]["dtype"] in fmt.IMAGE_DTYPES:
            raise ValueError(f"`{key}` is an image feature: use images()")
        col = self._table.column(key).combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
            width = int(self.features[key]["shape"][0])
            values = col.flatten().to_numpy(zero_copy_only=False)
            if len(values) != len(col) * width:
                raise BadInput(f"`{self.root / fmt.DATA_DIR}`: field `{key}` has rows of varying length", caused_by=f"declared shape [{width}]")
            return values.reshape(len(col), width)
        return col.to_numpy(zero_copy_only=False)

    def image_batches(self, key: str):
        """Yield (first_row, PNG-bytes list) per row group of `key`, in row order (bounded memory)."""
        if self.features.get(key, {}).get("dtype") == "video":
            raise BadInput(f"`{self.root / fmt.INFO_PATH}`: feature `{key}` is stored as video",
                           caused_by="vla reads image features (PNG in parquet) only", hint="re-export the dataset with image features")
        row = 0
        for path in self.data_files:
            try:
                handle = pq.ParquetFile(path)
            except (OSError, pa.ArrowException) as exc:
                raise BadInput(f"cannot read `{path}`", caused_by=str(exc)) from None
            for group in range(handle.num_row_groups):
                col = handle.read_row_group(group, columns=[key]).column(0).combine_chunks()
                data = col.field("bytes").to_pylist()
                paths = col.field("path").to_pylist() if col.type.get_field_index("path") >= 0 else [None] * len(data)
                for i, blob in enumerate(data):
                    if blob is None:  # not embedded: LeRobot keeps a path relative to the dataset root
                        if not paths[i] or not (self.root / paths[i]).is_file():
                            raise BadInput(f"`{path}`: field `{key}` has no bytes at row {row + i}", caused_by=f"path {paths[i]!r} is not a file")
                        data[i] = (self.root / paths[i]).read_bytes()
                yield row, data
                row += len(data)

    def images(self, key: str) -> np.ndarray:
        """uint8 memmap [N, H, W, 3] of an image feature, from the frame cache (built once)."""
        if key not in self._images:
            if key not in self.features:
                raise BadInput(f"`{self.root / fmt.INFO_PATH}`: feature `{key}` is missing", caused_by=f"image features: {', '.join(self.image_keys) or 'none'}")
            self._images[key] = frame_cache(self, key, cache_dir=self.cache_dir, reporter=self.reporter)
        return self._images[key]

    @cached_property
    def digest(self) -> str:
        """sha256 over the data files' contents (the cache key; same formula as meta/vla.json)."""
        return data_digest({path.relative_to(self.root).as_posix(): sha256_file(path) for path in self.data_files})

    def file_signature(self) -> list[list]:
        """(relative path, size, mtime_ns) of each data file: a cheap check that nothing changed."""
        out = []
        for path in self.data_files:
            st = path.stat()
            out.append([path.relative_to(self.root).as_posix(), st.st_size, st.st_mtime_ns])
        return out


# ----------------------------------------------------------------------------- opening


def _check_data_schema(path: Path, features: dict) -> None:
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise BadInput(f"cannot read `{path}`", caused_by="no such file (listed by the episode metadata)") from None
    except (OSError, pa.ArrowException) as exc:
        raise BadInput(f"cannot read `{path}`", caused_by=f"not a readable parquet file: {exc}") from None
    for key, ft in features.items():
        if ft["dtype"] == "video":
            continue
        index = schema.get_field_index(key)
        if index < 0:
            raise BadInput(f"`{path}`: field `{key}` is missing", caused_by="declared in meta/info.json")
        typ = schema.field(index).type
        if not _arrow_matches(ft, typ):
            raise BadInput(f"`{path}`: field `{key}` has type {typ}", caused_by=f"meta/info.json declares {ft['dtype']} {list(ft['shape'])}")


def _tasks_v3(root: Path) -> list[str]:
    path = root / fmt.TASKS_PATH
    df = _read_parquet(path).to_pandas()
    if "task_index" not in df.columns:
        raise BadInput(f"`{path}`: field `task_index` is missing")
    if "task" in df.columns:  # written without the pandas index metadata
        df = df.set_index("task")
    order = np.argsort(df["task_index"].to_numpy(), kind="stable")
    indices = df["task_index"].to_numpy()[order]
    if not np.array_equal(indices, np.arange(len(df))):
        raise BadInput(f"`{path}`: field `task_index` is not 0..{len(df) - 1}")
    return [str(t) for t in df.index.to_numpy()[order]]


def _episodes_v3(root: Path) -> tuple[pd.DataFrame, list[Path]]:
    files = sorted((root / fmt.EPISODES_DIR).glob("*/*.parquet"))
    if not files:
        raise BadInput(f"cannot read `{root / fmt.EPISODES_DIR}`", caused_by="no chunk-*/file-*.parquet below it")
    frames = []
    for path in files:
        names = pq.read_schema(path).names
        table = _read_parquet(path, columns=[n for n in names if not n.startswith("stats/")])
        for key in ("episode_index", "length", "tasks", "data/chunk_index", "data/file_index"):
            if key not in table.column_names:
                raise BadInput(f"`{path}`: field `{key}` is missing")
        frames.append(table.to_pandas())
    return pd.concat(frames, ignore_index=True).sort_values("episode_index", kind="stable").reset_index(drop=True), files


def _open_v3(root: Path, info: dict) -> tuple[pd.DataFrame, list[str], list[Path], dict | None, list | None]:
    tasks = _tasks_v3(root)
    episodes, _ = _episodes_v3(root)
    pairs = episodes[["data/chunk_index", "data/file_index"]].drop_duplicates().itertuples(index=False)
    data_files = [root / info["data_path"].format(chunk_index=int(c), file_index=int(f)) for c, f in pairs]
    stats_path = root / fmt.STATS_PATH
    raw_stats = read_json(stats_path, schema=None) if stats_path.exists() else None
    return episodes, tasks, data_files, raw_stats, None


def _open_v2(root: Path, info: dict) -> tuple[pd.DataFrame, list[str], list[Path], dict | None, list | None]:
    task_rows = _read_jsonl(root / fmt.LEGACY_TASKS_PATH)
    by_index = {}
    for row in task_rows:
        if "task_index" not in row or "task" not in row:
            raise BadInput(f"`{root / fmt.LEGACY_TASKS_PATH}`: field `task_index`/`task` is missing")
        by_index[int(row["task_index"])] = str(row["task"])
    tasks = [by_index[i] for i in sorted(by_index)]
    rows = _read_jsonl(root / fmt.LEGACY_EPISODES_PATH)
    for row in rows:
        for key in ("episode_index", "length", "tasks"):
            if key not in row:
                raise BadInput(f"`{root / fmt.LEGACY_EPISODES_PATH}`: field `{key}` is missing")
    episodes = pd.DataFrame(rows).sort_values("episode_index", kind="stable").reset_index(drop=True)
    chunks = int(info.get("chunks_size", fmt.DEFAULT_CHUNK_SIZE))
    data_files = [root / info["data_path"].format(episode_chunk=int(e) // chunks, episode_index=int(e)) for e in episodes["episode_index"]]
    raw_stats, episode_stats = None, None
    if (root / fmt.LEGACY_EPISODES_STATS_PATH).exists():
        episode_stats = [row["stats"] for row in _read_jsonl(root / fmt.LEGACY_EPISODES_STATS_PATH) if "stats" in row]
    elif (root / fmt.STATS_PATH).exists():  # v2.0 kept one stats.json
        raw_stats = read_json(root / fmt.STATS_PATH, schema=None)
    return episodes, tasks, data_files, raw_stats, episode_stats


def open_dataset(root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 reporter: Reporter = NullReporter()) -> LeRobotDataset:
    """Open a LeRobot v3.0 or v2.1 dataset; `cache_dir` overrides where the frame cache lives
    (see `stages.data.cache`), `reporter` shows the one-time cache build."""
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"cannot read dataset `{root}`", caused_by="not a directory")
    info_path = root / fmt.INFO_PATH
    info = _check_info(read_json(info_path, schema=None), info_path)
    opener = _open_v3 if info["codebase_version"].startswith("v3") else _open_v2
    episodes, tasks, data_files, raw_stats, episode_stats = opener(root, info)
    if len(episodes) == 0:
        raise BadInput(f"dataset `{root}` has no episodes")
    episodes["length"] = episodes["length"].astype(np.int64)
    ends = np.cumsum(episodes["length"].to_numpy())
    episodes["from_index"] = ends - episodes["length"].to_numpy()
    episodes["to_index"] = ends
    episodes["task"] = [list(t)[0] if len(t) else "" for t in episodes["tasks"]]
    if int(info["total_frames"]) != int(ends[-1]) or int(info["total_episodes"]) != len(episodes):
        raise BadInput(f"`{info_path}`: field `total_frames`/`total_episodes` is {info['total_frames']}/{info['total_episodes']}",
                       caused_by=f"the episode metadata lists {int(ends[-1])} frames in {len(episodes)} episodes")
    for path in data_files:
        _check_data_schema(path, info["features"])
    vla_path = root / fmt.VLA_META_PATH
    vla = read_json(vla_path, schema="vla-dataset-meta") if vla_path.exists() else None
    if vla is not None and len(vla["episodes"]) != len(episodes):
        raise BadInput(f"`{vla_path}`: field `episodes` has {len(vla['episodes'])} entries", caused_by=f"the dataset has {len(episodes)} episodes")
    return LeRobotDataset(root, info, episodes, tasks, data_files, raw_stats, episode_stats, vla,
                          Path(cache_dir) if cache_dir is not None else None, reporter)
