"""Raw episodes as a robot logger exports them (ARCHITECTURE §3).

    <root>/<episode_id>/
      meta.json           validated by schema `raw-meta`
      <stream>.parquet    column `t` (float64 s, the sensor's own clock) + numeric columns
      <camera>.npy        uint8 [N, H, W, 3]; <camera>.parquet has `t` and `frame` (row -> frame index)

A `.parquet` with a `.npy` of the same stem is a camera; every other `.parquet` is a continuous
stream. An episode needs at least one camera and an `action` stream. Every problem found while
reading is a `BadInput` naming the file and the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.artifacts import read_json, write_json
from stages.errors import BadInput

META = "meta.json"
ACTION = "action"
FramesMode = Literal["mmap", "load", "none"]


@dataclass
class Camera:
    index: pd.DataFrame  # columns `t` float64, `frame` int64; one row per logged frame
    frames: np.ndarray | None  # uint8 [N, H, W, 3]; None when read with frames="none"
    shape: tuple[int, ...] = ()  # shape of the .npy, known even when frames are not loaded

    @property
    def t(self) -> np.ndarray:
        return self.index["t"].to_numpy()


@dataclass
class RawEpisode:
    episode_id: str
    meta: dict
    streams: dict[str, pd.DataFrame] = field(default_factory=dict)  # continuous: `t` + numeric columns
    cameras: dict[str, Camera] = field(default_factory=dict)
    path: Path | None = None

    def stream_names(self) -> list[str]:
        return sorted(self.streams) + sorted(self.cameras)


# ----------------------------------------------------------------------------- reading


def list_episodes(root: str | os.PathLike) -> list[Path]:
    """Episode folders under `root` (those holding a meta.json), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"cannot read raw dataset `{root}`", caused_by="not a directory")
    episodes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    episodes = [p for p in episodes if (p / META).exists()]
    if not episodes:
        raise BadInput(f"raw dataset `{root}` holds no episodes", caused_by=f"no `<episode>/{META}` below it")
    return episodes


def read_meta(episode_dir: str | os.PathLike) -> dict:
    episode_dir = Path(episode_dir)
    meta = read_json(episode_dir / META, schema="raw-meta")
    if meta["episode_id"] != episode_dir.name:
        raise BadInput(
            f"`{episode_dir / META}`: field `episode_id` is invalid",
            caused_by=f"{meta['episode_id']!r} differs from the folder name {episode_dir.name!r}",
        )
    return meta


def read_parquet(path: Path, *, required: dict[str, str] | None = None) -> pd.DataFrame:
    """Read one stream file; `required` maps column -> 'float' | 'int' and is checked."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise BadInput(f"cannot read `{path}`", caused_by="no such file") from None
    except (OSError, pa.ArrowException) as exc:
        raise BadInput(f"cannot read `{path}`", caused_by=f"not a readable parquet file: {exc}") from None
    df = table.to_pandas()
    for column, kind in (required or {}).items():
        if column not in df.columns:
            raise BadInput(f"`{path}`: field `{column}` is missing", caused_by=f"columns are {list(df.columns)}")
        dtype = df[column].dtype
        ok = pd.api.types.is_float_dtype(dtype) if kind == "float" else pd.api.types.is_integer_dtype(dtype)
        if not ok:
            raise BadInput(f"`{path}`: field `{column}` has dtype {dtype}", caused_by=f"expected {kind}")
    for column in df.columns:
        if not (pd.api.types.is_numeric_dtype(df[column].dtype) and not pd.api.types.is_bool_dtype(df[column].dtype)):
            raise BadInput(f"`{path}`: field `{column}` has dtype {df[column].dtype}", caused_by="expected a numeric column")
    if len(df) == 0:
        raise BadInput(f"`{path}`: stream is empty", caused_by="0 rows")
    return df


def _read_frames(path: Path, mode: FramesMode) -> tuple[np.ndarray | None, tuple[int, ...]]:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read `{path}`", caused_by=str(exc)) from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise BadInput(f"`{path}`: frames have dtype {arr.dtype} and shape {arr.shape}", caused_by="expected uint8 [N, H, W, 3]")
    shape = tuple(arr.shape)
    if mode == "none":
        return None, shape
    return (np.asarray(arr) if mode == "load" else arr), shape


def read_episode(episode_dir: str | os.PathLike, *, frames: FramesMode = "mmap") -> RawEpisode:
    episode_dir = Path(episode_dir)
    meta = read_meta(episode_dir)
    parquets = sorted(episode_dir.glob("*.parquet"))
    camera_names = [p.stem for p in parquets if (episode_dir / f"{p.stem}.npy").exists()]
    if not camera_names:
        raise BadInput(f"episode `{episode_dir}` has no camera", caused_by="expected `<camera>.npy` beside `<camera>.parquet`")
    if not (episode_dir / f"{ACTION}.parquet").exists():
        raise BadInput(f"episode `{episode_dir}` has no `{ACTION}` stream", caused_by=f"`{ACTION}.parquet` is missing")
    episode = RawEpisode(episode_id=meta["episode_id"], meta=meta, path=episode_dir)
    for p in parquets:
        if p.stem in camera_names:
            index = read_parquet(p, required={"t": "float", "frame": "int"})
            data, shape = _read_frames(episode_dir / f"{p.stem}.npy", frames)
            bad = (index["frame"] < 0) | (index["frame"] >= shape[0])
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise BadInput(f"`{p}`: field `frame` is out of range at row {row}", caused_by=f"the .npy holds {shape[0]} frames")
            episode.cameras[p.stem] = Camera(index=index, frames=data, shape=shape)
        else:
            df = read_parquet(p, required={"t": "float"})
            if df.shape[1] < 2:
                raise BadInput(f"`{p}`: stream has no value columns", caused_by="only `t`")
            episode.streams[p.stem] = df
    return episode


# ----------------------------------------------------------------------------- writing


def write_parquet(path: Path, df: pd.DataFrame) -> None:
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)


def write_episode(root: str | os.PathLike, episode: RawEpisode) -> Path:
    """Write one episode folder under `root` (the caller makes `root` atomic with `atomic_dir`)."""
    out = Path(root) / episode.episode_id
    out.mkdir(parents=True, exist_ok=False)
    write_json(out / META, episode.meta, schema="raw-meta")
    for name, df in episode.streams.items():
        write_parquet(out / f"{name}.parquet", df)
    for name, cam in episode.cameras.items():
        if cam.frames is None:
            raise ValueError(f"camera {name!r} of {episode.episode_id!r} has no frames to write")
        write_parquet(out / f"{name}.parquet", cam.index)
        np.save(out / f"{name}.npy", np.ascontiguousarray(cam.frames, dtype=np.uint8), allow_pickle=False)
    return out
