"""Episode fingerprints and near-duplicate matching (ch05 §5.7 gotcha 7: 指纹/哈希去重).

An episode is summarised by four cheap views:

  digest      sha256 of the sensor content: every value column except the clock `t`, and the bytes
              of every camera frame in row order (ids, clocks and text excluded, so a copy logged in
              another session or renamed still matches)
  frames      K frames sampled evenly over the camera rows -> 8x8 grey thumbnails [K, 8, 8] and
              64-bit difference hashes [K]
  trajectory  the chosen continuous streams resampled at M points of normalised time -> [M, D]
  text        the normalised instruction -> MinHash signature of its character 3-grams

`clean` uses them to drop duplicate episodes and to scan for eval episodes leaked into train; the
probe's data-leak check reuses the same functions:

    fps = [episode_fingerprint(read_episode(p)) for p in list_episodes(root)]
    pairs = near_duplicates(fps, MatchConfig())                 # within one dataset
    leaks = cross_matches(train_fps, eval_fps, MatchConfig())   # query = train, reference = eval

The search never loops over pairs in Python: candidates come from exact-digest groups and from
E2LSH buckets (random projections of the z-scored trajectory sketch quantised at a width tied to the
match threshold, Datar et al. 2004), then every candidate pair is verified in one vectorised pass.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from stages.data.raw import RawEpisode

THUMB = 8  # thumbnail side; a dHash of an 8x9 grid is 64 bits
MINHASH_SIZE = 64
_MERSENNE = np.uint64((1 << 61) - 1)


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class FingerprintConfig:
    frames: int = 16  # K frames sampled evenly over the camera rows
    points: int = 32  # M points of normalised time for the trajectory sketch
    intervals: int = 32  # first sample intervals of every stream kept as the timing pattern
    streams: tuple[str, ...] = ("action", "state")  # continuous streams in the sketch; missing ones are skipped
    camera: str | None = None  # camera to fingerprint; None = the first by name


@dataclass(frozen=True)
class MatchConfig:
    trajectory: float = 0.05  # max RMS distance of z-scored trajectory sketches for a near duplicate
    frames: float = 2.0  # max mean absolute grey difference (0-255) of the thumbnails
    text: float = 0.0  # min text similarity (Jaccard of 3-grams); 0 = text is reported, not required
    same_timing: bool = True  # near duplicates must share the sample-timing pattern (copies of one recording)
    timing_tolerance_s: float = 1e-5  # max difference of corresponding sample intervals for "the same timing"
    tables: int = 16  # E2LSH hash tables
    projections: int = 4  # projections per table (concatenated into one key)
    width: float = 4.0  # bucket width in units of `trajectory`
    seed: int = 0


# ----------------------------------------------------------------------------- fingerprints


@dataclass
class EpisodeFingerprint:
    episode_id: str
    digest: str  # sensor-content sha256 (hex)
    thumbs: np.ndarray  # float32 [K, 8, 8] grey thumbnails, 0-255
    hashes: np.ndarray  # uint64 [K] difference hashes of the same frames
    trajectory: np.ndarray  # float32 [M, D] streams resampled over normalised time
    columns: tuple[str, ...]  # the D sketch columns as "stream.column"
    text: str  # normalised instruction
    minhash: np.ndarray  # uint64 [MINHASH_SIZE]
    timing: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float64 [S * intervals] sample intervals, NaN-padded
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """A compact JSON form (hashes as hex) for reports and `meta/vla.json`."""
        return {
            "digest": self.digest,
            "frame_hashes": [f"{int(h):016x}" for h in self.hashes],
            "text": self.text,
            "columns": list(self.columns),
        }


def grey_thumbnails(frames: np.ndarray, side: int = THUMB, *, width: int | None = None) -> np.ndarray:
    """Block-mean grey thumbnails: uint8 [N, H, W, 3] -> float32 [N, side, width or side].

    Area averaging through an integral image, so any H, W works (no divisibility needed).
    """
    width = width or side
    grey = frames.astype(np.float32).mean(axis=-1)  # [N, H, W]
    n, h, w = grey.shape
    integral = np.zeros((n, h + 1, w + 1), np.float64)
    integral[:, 1:, 1:] = grey.cumsum(1).cumsum(2)
    ys = np.linspace(0, h, side + 1).round().astype(int)
    xs = np.linspace(0, w, width + 1).round().astype(int)
    y0, y1, x0, x1 = ys[:-1, None], ys[1:, None], xs[None, :-1], xs[None, 1:]
    sums = integral[:, y1, x1] - integral[:, y0, x1] - integral[:, y1, x0] + integral[:, y0, x0]
    area = np.maximum((y1 - y0) * (x1 - x0), 1)
    return (sums / area).astype(np.float32)


def frame_hashes(frames: np.ndarray) -> np.ndarray:
    """64-bit difference hashes (dHash): uint8 [N, H, W, 3] -> uint64 [N]."""
    if len(frames) == 0:
        return np.zeros(0, np.uint64)
    grid = grey_thumbnails(frames, THUMB, width=THUMB + 1)  # [N, 8, 9]
    bits = (grid[:, :, 1:] > grid[:, :, :-1]).reshape(len(frames), 64)
    packed = np.packbits(bits, axis=1)  # [N, 8] big-endian bytes
    return np.ascontiguousarray(packed).view(">u8").reshape(-1).astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences of uint64 arrays (broadcast), as int."""
    x = np.bitwise_xor(a, b)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """NFKC, lower case, punctuation dropped, whitespace collapsed (language-agnostic)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch if not unicodedata.category(ch).startswith("P") else " " for ch in text)
    return _SPACE.sub(" ", text).strip()


def _minhash_params() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20240531)
    a = rng.integers(1, int(_MERSENNE), size=MINHASH_SIZE, dtype=np.uint64)
    b = rng.integers(0, int(_MERSENNE), size=MINHASH_SIZE, dtype=np.uint64)
    return a, b


_MH_A, _MH_B = _minhash_params()


def text_minhash(text: str) -> np.ndarray:
    """MinHash signature uint64 [64] of the character 3-grams of `normalise_text(text)`."""
    norm = normalise_text(text)
    grams = {norm[i : i + 3] for i in range(max(len(norm) - 2, 1))} or {""}
    ids = np.array([int.from_bytes(hashlib.blake2b(g.encode(), digest_size=7).digest(), "little") for g in sorted(grams)], np.uint64)
    # (a * x + b) mod p with x < 2^56: the product wraps uint64, which keeps it a fixed random map
    return ((ids[:, None] * _MH_A[None, :] + _MH_B[None, :]) % _MERSENNE).min(axis=0)


def text_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of MinHash signatures (broadcast over leading axes)."""
    return (a == b).mean(axis=-1)


def trajectory_sketch(t: np.ndarray, values: np.ndarray, points: int) -> np.ndarray:
    """Resample values [N, D] given at times t [N] onto `points` evenly spaced instants of normalised
    time -> float32 [points, D]. Non-finite samples are skipped per column (a sketch, not a repair)."""
    t = np.asarray(t, np.float64)
    order = np.argsort(t, kind="stable")
    t, values = t[order], np.asarray(values, np.float64)[order]
    grid = np.linspace(t[0], t[-1], points) if len(t) > 1 else np.full(points, t[0] if len(t) else 0.0)
    out = np.zeros((points, values.shape[1]), np.float32)
    for d in range(values.shape[1]):  # loop over columns (a handful), never over samples
        ok = np.isfinite(values[:, d]) & np.isfinite(t)
        if ok.any():
            out[:, d] = np.interp(grid, t[ok], values[ok, d])
    return out


Columns = Mapping[str, np.ndarray]  # column name -> [n]; `t` is the stream's clock


def content_digest(streams: Mapping[str, Columns], cameras: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """sha256 of every value column (all but `t`) and of each camera's frames in row order.

    `cameras` maps name -> (rows int [n], frames uint8 [F, H, W, 3]). Ids, clocks and text are left
    out, so a renamed copy or one logged on another clock has the same digest.
    """
    h = hashlib.sha256()
    for name in sorted(streams):
        for col, values in streams[name].items():
            if col != "t":
                h.update(f"{name}.{col}".encode())
                h.update(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    for name in sorted(cameras):
        rows, frames = cameras[name]
        h.update(name.encode())
        for start in range(0, len(rows), 256):  # chunks bound memory for large frames
            h.update(np.ascontiguousarray(frames[rows[start : start + 256]]).tobytes())
    return h.hexdigest()


def timing_pattern(clocks: Mapping[str, np.ndarray], intervals: int) -> np.ndarray:
    """The first `intervals` sample intervals (s) of every stream, streams in name order:
    float64 [S * intervals], NaN where a stream is shorter. Clock jitter makes this pattern unique
    to one recording, and a constant clock offset leaves it unchanged."""
    out = np.full((len(clocks), intervals), np.nan)
    for k, name in enumerate(sorted(clocks)):
        dt = np.diff(np.asarray(clocks[name], np.float64)[: intervals + 1])
        out[k, : len(dt)] = dt
    return out.reshape(-1)


def fingerprint(episode_id: str, instruction: str, streams: Mapping[str, Columns],
                cameras: Mapping[str, tuple[np.ndarray, np.ndarray]], config: FingerprintConfig = FingerprintConfig(),
                *, digest: str | None = None, clocks: Mapping[str, np.ndarray] | None = None) -> EpisodeFingerprint:
    """All views of one episode given as arrays: `streams` name -> columns (with `t`), `cameras`
    name -> (rows int [n], frames uint8 [F, H, W, 3], memory-mapped is fine). `digest` and `clocks`
    (stream -> `t` as recorded) override what is derived from `streams` (e.g. to use the recording
    as it was before cleaning)."""
    rows, frames = cameras[config.camera or sorted(cameras)[0]]
    pick = rows[np.linspace(0, len(rows) - 1, config.frames).round().astype(int)]
    sample = np.asarray(frames[pick])  # [K, H, W, 3]
    parts, columns = [], []
    for name in config.streams:
        if name not in streams:
            continue
        cols = [c for c in streams[name] if c != "t"]
        values = np.stack([streams[name][c] for c in cols], axis=1)  # [n, D]
        parts.append(trajectory_sketch(streams[name]["t"], values, config.points))
        columns += [f"{name}.{c}" for c in cols]
    traj = np.concatenate(parts, axis=1) if parts else np.zeros((config.points, 0), np.float32)
    return EpisodeFingerprint(
        episode_id=episode_id,
        digest=digest or content_digest(streams, cameras),
        thumbs=grey_thumbnails(sample),
        hashes=frame_hashes(sample),
        trajectory=traj,
        columns=tuple(columns),
        text=normalise_text(instruction),
        minhash=text_minhash(instruction),
        timing=timing_pattern(clocks if clocks is not None else {n: c["t"] for n, c in streams.items()}, config.intervals),
    )


def episode_fingerprint(episode: RawEpisode, config: FingerprintConfig = FingerprintConfig()) -> EpisodeFingerprint:
    """All views of a `RawEpisode` (read with frames="mmap" or "load")."""
    streams = {name: {c: df[c].to_numpy() for c in df.columns} for name, df in episode.streams.items()}
    cameras = {}
    for name, cam in episode.cameras.items():
        if cam.frames is None:
            raise ValueError(f"episode {episode.episode_id!r}: fingerprints need frames (read with frames='mmap')")
        cameras[name] = (cam.index["frame"].to_numpy(), cam.frames)
    clocks = {**{n: c["t"] for n, c in streams.items()}, **{n: cam.index["t"].to_numpy() for n, cam in episode.cameras.items()}}
    return fingerprint(episode.episode_id, str(episode.meta.get("instruction", "")), streams, cameras, config, clocks=clocks)


# ----------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Match:
    """`a` is the reference (earlier in the list, or the eval episode), `b` the suspected copy."""

    a: str
    b: str
    exact: bool
    trajectory: float  # RMS distance of z-scored sketches (0 = identical)
    frames: float  # mean absolute thumbnail difference, grey levels
    text: float  # estimated Jaccard similarity of the instructions
    timing: float = 0.0  # largest difference of corresponding sample intervals, s (0 = same timing)

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "exact": self.exact, "trajectory": round(self.trajectory, 6),
                "frames": round(self.frames, 4), "text": round(self.text, 4), "timing_s": float(f"{self.timing:.3g}")}


@dataclass
class _Stacked:
    traj: np.ndarray  # float32 [N, M*D] z-scored sketches
    thumbs: np.ndarray  # float32 [N, K*64]
    minhash: np.ndarray  # uint64 [N, 64]
    timing: np.ndarray  # float64 [N, S*intervals], NaN-padded
    groups: np.ndarray  # int64 [N] comparable groups
    ids: list[str]
    digests: list[str]


def _pad(rows: list[np.ndarray], fill: float, dtype) -> np.ndarray:
    out = np.full((len(rows), max((r.size for r in rows), default=0)), fill, dtype)
    for i, r in enumerate(rows):
        out[i, : r.size] = r.reshape(-1)
    return out


def _stack(fps: Sequence[EpisodeFingerprint]) -> _Stacked:
    """Every view as one array; trajectory sketches z-scored per comparable group.

    Episodes whose sketch columns or shapes differ cannot be compared: each shape gets its own group id.
    """
    keys = [(fp.columns, fp.trajectory.shape, fp.thumbs.shape, fp.timing.shape) for fp in fps]
    group_of = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    groups = np.array([group_of[k] for k in keys], np.int64)
    traj = np.zeros((len(fps), max(fp.trajectory.size for fp in fps)), np.float32)
    for g in range(len(group_of)):  # one z-scoring per comparable group
        idx = np.flatnonzero(groups == g)
        block = np.stack([fps[i].trajectory for i in idx]).astype(np.float64)  # [n, M, D]
        flat = block.reshape(-1, block.shape[-1])
        scale = flat.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)  # a dead dimension contributes nothing, never NaN
        z = (block - flat.mean(axis=0)) / scale
        traj[idx, : z[0].size] = z.reshape(len(idx), -1)
    return _Stacked(traj, _pad([fp.thumbs for fp in fps], 0.0, np.float32), np.stack([fp.minhash for fp in fps]),
                    _pad([fp.timing for fp in fps], np.nan, np.float64), groups,
                    [fp.episode_id for fp in fps], [fp.digest for fp in fps])


def _bucket_pairs(keys: np.ndarray) -> np.ndarray:
    """All index pairs (i < j) that share a key: keys int/uint [N] -> int64 [P, 2].

    Sort once, then compare each element with the one d places later for d = 1, 2, ... up to the
    largest bucket: a vectorised pass per offset, never a loop over pairs.
    """
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    out = []
    d = 1
    while d < len(sk):
        same = sk[d:] == sk[:-d]
        if not same.any():
            break
        i = np.flatnonzero(same)
        out.append(np.stack([order[i], order[i + d]], axis=1))
        d += 1
    if not out:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(out)
    return np.sort(pairs, axis=1)


def candidate_pairs(traj: np.ndarray, digests: Sequence[str], groups: np.ndarray, config: MatchConfig) -> np.ndarray:
    """Index pairs [P, 2] (i < j) worth verifying: same digest, or the same E2LSH bucket in any table."""
    n, dim = traj.shape
    found = [_bucket_pairs(np.unique(np.asarray(digests), return_inverse=True)[1].astype(np.int64))]
    rng = np.random.default_rng(config.seed)
    w = config.width * config.trajectory * np.sqrt(max(dim, 1))  # sketch distance is an RMS over dim entries
    mult = rng.integers(1, 2**62, size=config.projections, dtype=np.int64).astype(np.uint64) | np.uint64(1)
    for _ in range(config.tables):
        a = rng.standard_normal((dim, config.projections)).astype(np.float32)
        b = rng.uniform(0, w, size=config.projections)
        cells = np.floor((traj @ a + b) / w).astype(np.int64).astype(np.uint64)  # [N, k]
        key = (cells * mult).sum(axis=1) + groups.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        found.append(_bucket_pairs(key))
    pairs = np.concatenate(found)
    if len(pairs) == 0:
        return pairs
    pairs = np.unique(pairs, axis=0)
    return pairs[groups[pairs[:, 0]] == groups[pairs[:, 1]]]


VERIFY_CHUNK = 65536  # candidate pairs verified per vectorised block (bounds memory for big buckets)


def _verify(pairs: np.ndarray, st: _Stacked, config: MatchConfig) -> list[Match]:
    """Check candidate pairs [P, 2] block by block, vectorised; keep exact and near duplicates."""
    out: list[Match] = []
    for start in range(0, len(pairs), VERIFY_CHUNK):
        out += _verify_block(pairs[start : start + VERIFY_CHUNK], st, config)
    return out


def _verify_block(pairs: np.ndarray, st: _Stacked, config: MatchConfig) -> list[Match]:
    i, j = pairs[:, 0], pairs[:, 1]
    d_traj = np.sqrt(((st.traj[i] - st.traj[j]) ** 2).mean(axis=1))  # [P]
    d_frames = np.abs(st.thumbs[i] - st.thumbs[j]).mean(axis=1)  # [P]
    s_text = text_similarity(st.minhash[i], st.minhash[j])  # [P]
    gap = np.abs(st.timing[i] - st.timing[j])  # [P, S*intervals], NaN where either stream is short
    d_timing = np.where(np.isnan(gap), 0.0, gap).max(axis=1) if gap.shape[1] else np.zeros(len(pairs))
    dig = np.asarray(st.digests)
    exact = dig[i] == dig[j]
    near = (d_traj <= config.trajectory) & (d_frames <= config.frames) & (s_text >= config.text)
    if config.same_timing:
        near &= d_timing <= config.timing_tolerance_s
    keep = np.flatnonzero(exact | near)
    return [Match(st.ids[i[k]], st.ids[j[k]], bool(exact[k]), float(d_traj[k]), float(d_frames[k]), float(s_text[k]),
                  float(d_timing[k])) for k in keep]


def near_duplicates(fps: Sequence[EpisodeFingerprint], config: MatchConfig = MatchConfig()) -> list[Match]:
    """Exact and near-duplicate pairs within one list; in each pair `a` comes earlier in `fps`."""
    if len(fps) < 2:
        return []
    st = _stack(fps)
    return _verify(candidate_pairs(st.traj, st.digests, st.groups, config), st, config)


def cross_matches(queries: Sequence[EpisodeFingerprint], references: Sequence[EpisodeFingerprint],
                  config: MatchConfig = MatchConfig()) -> list[Match]:
    """Pairs (reference `a`, query `b`) that match across two lists, e.g. eval episodes leaked into train.

    Both lists are z-scored together so distances mean the same as within one dataset.
    """
    if not queries or not references:
        return []
    st = _stack(list(references) + list(queries))
    pairs = candidate_pairs(st.traj, st.digests, st.groups, config)
    r = len(references)
    pairs = pairs[(pairs[:, 0] < r) & (pairs[:, 1] >= r)]  # i < j, so the reference is always first
    return _verify(pairs, st, config)


def brute_force_pairs(fps: Sequence[EpisodeFingerprint], config: MatchConfig = MatchConfig()) -> list[Match]:
    """Every pair verified directly: O(N²), the reference the LSH search is tested against."""
    if len(fps) < 2:
        return []
    st = _stack(fps)
    i, j = np.triu_indices(len(fps), k=1)
    pairs = np.stack([i, j], axis=1)
    return _verify(pairs[st.groups[i] == st.groups[j]], st, config)
