"""A small synthetic rig with injected faults and their truth, for testing the rules without the
simulator (the truth is written in schema `truth`, so `scoring.score` reads it like a recording's).

Each episode: an end effector moving on a minimum-jerk path to a random goal, then holding still;
`camera` (20 Hz, a bright square drawn where the effector is, with sensor noise), `state` (80 Hz:
position, velocity, speed magnitude, gripper), `imu` (100 Hz acceleration + noise), `action`
(80 Hz: clipped velocity command + gripper ±1). Every stream has its own clock offset and jitter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages.artifacts import write_json
from stages.data.raw import Camera, RawEpisode, write_episode

TEXT_FAULTS = {"redundant_text", "placeholder_text"}
ROW_FAULTS = ("dropped_frames", "duplicate_timestamps", "non_monotonic_timestamps")
VALUE_FAULTS = ("spike", "nan_inf", "negative_speed")
ALL_FAULTS = ROW_FAULTS + VALUE_FAULTS + ("frozen_camera", "redundant_text", "placeholder_text",
                                          "duplicate_episode", "near_duplicate_episode", "eval_leak")
RATES = {"camera": 20.0, "state": 80.0, "imu": 100.0, "action": 80.0}
TEMPLATES = {
    "reach": ("reach the red target", "把末端移动到红色目标"),
    "push": ("push the block to the goal", "把方块推到目标位置"),
    "pick": ("pick up the cube", "拿起立方体"),
}


@dataclass(frozen=True)
class SyntheticConfig:
    episodes: int = 12  # train episodes before copies are added
    eval_episodes: int = 4
    tasks: tuple[str, ...] = ("reach", "push", "pick")
    duration_s: float = 3.0
    size: int = 32  # frame side
    fault_rate: float = 0.3  # chance that an episode gets a given per-episode fault kind
    copies: int = 1  # duplicates, near duplicates and leaks each
    image_noise: float = 2.0  # grey-level sensor noise
    jitter_ms: float = 1.0
    seed: int = 0


def _clock(n: int, hz: float, offset: float, jitter: float, rng) -> np.ndarray:
    return np.arange(n) / hz + offset + rng.normal(0, jitter, n).clip(-3 * jitter, 3 * jitter)


def _motion(t: np.ndarray, goal: np.ndarray, reach_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-jerk path from 0 to goal over reach_s, then still: position, velocity, acceleration [n, 3]."""
    s = np.clip(t / reach_s, 0, 1)[:, None]
    pos = goal * (10 * s**3 - 15 * s**4 + 6 * s**5)
    vel = goal * (30 * s**2 - 60 * s**3 + 30 * s**4) / reach_s * (t[:, None] < reach_s)
    acc = goal * (60 * s - 180 * s**2 + 120 * s**3) / reach_s**2 * (t[:, None] < reach_s)
    return pos, vel, acc


def make_episode(episode_id: str, task: str, rng: np.random.Generator, config: SyntheticConfig, *, language: str = "en") -> RawEpisode:
    d = config.duration_s
    goal = rng.uniform(-0.3, 0.3, 3)
    reach_s = d * rng.uniform(0.55, 0.75)
    offsets = {"camera": rng.uniform(-0.2, 0.2), "state": 0.0, "imu": rng.uniform(-0.1, 0.1), "action": rng.uniform(-0.05, 0.05)}
    jit = config.jitter_ms / 1000
    streams = {}
    t_true = {k: np.arange(int(d * hz)) / hz for k, hz in RATES.items()}
    pos, vel, _ = _motion(t_true["state"], goal, reach_s)
    grip = np.where(t_true["state"] > reach_s * 0.8, 1.0, -1.0) if task != "reach" else np.full(len(pos), -1.0)
    streams["state"] = pd.DataFrame({"x": pos[:, 0], "y": pos[:, 1], "z": pos[:, 2], "vx": vel[:, 0], "vy": vel[:, 1],
                                     "vz": vel[:, 2], "speed": np.linalg.norm(vel, axis=1), "gripper": grip})
    _, _, acc = _motion(t_true["imu"], goal, reach_s)
    acc = acc + rng.normal(0, 0.02, acc.shape)
    streams["imu"] = pd.DataFrame({"ax": acc[:, 0], "ay": acc[:, 1], "az": acc[:, 2]})
    _, avel, _ = _motion(t_true["action"], goal, reach_s)
    agrip = np.where(t_true["action"] > reach_s * 0.8, 1.0, -1.0) if task != "reach" else np.full(len(avel), -1.0)
    streams["action"] = pd.DataFrame({"a0": np.clip(avel[:, 0] * 4, -1, 1), "a1": np.clip(avel[:, 1] * 4, -1, 1),
                                      "a2": np.clip(avel[:, 2] * 4, -1, 1), "a3": agrip})
    for name, df in streams.items():
        df.insert(0, "t", _clock(len(df), RATES[name], offsets[name], jit, rng))
    # camera: a bright square where the effector is, over a gradient, with sensor noise
    tc = t_true["camera"]
    cpos, _, _ = _motion(tc, goal, reach_s)
    n, size = len(tc), config.size
    yy, xx = np.mgrid[0:size, 0:size]
    frames = np.repeat(((xx + yy) * (120 / (2 * size)) + 40)[None, :, :, None], n, axis=0).repeat(3, axis=3)
    cx = ((cpos[:, 0] + 0.5) * (size - 6)).astype(int)
    cy = ((cpos[:, 1] + 0.5) * (size - 6)).astype(int)
    inside = (xx[None] >= cx[:, None, None]) & (xx[None] < cx[:, None, None] + 5) & (yy[None] >= cy[:, None, None]) & (yy[None] < cy[:, None, None] + 5)
    frames[inside] = (230, 60, 60)
    frames = frames + rng.normal(0, config.image_noise, frames.shape)
    frames = frames.clip(0, 255).astype(np.uint8)
    index = pd.DataFrame({"t": _clock(n, RATES["camera"], offsets["camera"], jit, rng), "frame": np.arange(n, dtype=np.int64)})
    en, zh = TEMPLATES[task]
    meta = {"episode_id": episode_id, "instruction": en if language == "en" else zh, "task": task, "scene": "synthetic",
            "robot_type": "synthetic_arm", "split": "train", "session": "s0", "language": language}
    return RawEpisode(episode_id, meta, streams, {"camera": Camera(index=index, frames=frames, shape=frames.shape)})


# ----------------------------------------------------------------------------- fault injection


def _row_fault(ep: RawEpisode, stream: str, kind: str, rng) -> dict:
    """One row-changing fault in `stream`; returns its truth entry (rows in the file as written)."""
    cam = stream == "camera"
    df = ep.cameras["camera"].index if cam else ep.streams[stream]
    n = len(df)
    i = int(rng.integers(n // 4, 3 * n // 4))
    if kind == "dropped_frames":
        k = int(rng.integers(2, 4))
        df = df.drop(index=range(i, i + k)).reset_index(drop=True)
        rows = [i - 1, i + 1]  # the two rows around the gap
    elif kind == "duplicate_timestamps":
        df = pd.concat([df.iloc[: i + 1], df.iloc[i : i + 1], df.iloc[i + 1 :]]).reset_index(drop=True)
        rows = [i + 1, i + 2]  # the inserted copy
    else:  # non_monotonic_timestamps: two rows logged in swapped order
        order = np.arange(n)
        order[[i, i + 1]] = order[[i + 1, i]]
        df = df.iloc[order].reset_index(drop=True)
        rows = [i, i + 2]
    if cam:
        ep.cameras["camera"].index = df
    else:
        ep.streams[stream] = df
    return {"kind": kind, "stream": stream, "column": None, "rows": rows}


def _value_fault(ep: RawEpisode, kind: str, rng) -> dict:
    stream, column = {"spike": ("state", "x"), "nan_inf": ("imu", "ay"), "negative_speed": ("state", "speed")}[kind]
    df = ep.streams[stream]
    x = df[column].to_numpy().copy()
    n = len(x)
    if kind == "spike":
        i, k = int(rng.integers(10, n - 10)), 1
        x[i] += rng.choice([-1, 1]) * 0.5
    elif kind == "nan_inf":
        i, k = int(rng.integers(10, n - 10)), int(rng.integers(1, 4))
        x[i : i + k] = rng.choice([np.nan, np.inf])
    else:
        moving = np.flatnonzero(x > 0.05)
        i, k = int(moving[len(moving) // 2]), int(rng.integers(1, 3))
        x[i : i + k] = -x[i : i + k]
    df[column] = x
    return {"kind": kind, "stream": stream, "column": column, "rows": [i, i + k]}


def _frozen(ep: RawEpisode, rng, reach_rows: int) -> dict:
    index = ep.cameras["camera"].index
    i = int(rng.integers(3, max(reach_rows - 8, 4)))
    k = int(rng.integers(4, 7))
    index.loc[i + 1 : i + k, "frame"] = index.loc[i, "frame"]  # rows i+1..i+k show frame of row i
    return {"kind": "frozen_camera", "stream": "camera", "column": None, "rows": [i + 1, i + k + 1]}


def _text(ep: RawEpisode, kind: str, rng) -> dict:
    if kind == "placeholder_text":
        ep.meta["instruction"] = str(rng.choice(["TODO", "", "<instruction>", "N/A"]))
    elif ep.meta["language"] == "zh":
        ep.meta["instruction"] = "嗯，请你" + ep.meta["instruction"] + "吧，谢谢"
    else:
        ep.meta["instruction"] = "um, could you please " + ep.meta["instruction"] + ", " + ep.meta["instruction"] + ", thanks"
    return {"kind": kind, "stream": None, "column": None}


def _copy(ep: RawEpisode, new_id: str, rng, *, noise: bool) -> RawEpisode:
    streams = {k: df.copy() for k, df in ep.streams.items()}
    frames = ep.cameras["camera"].frames.copy()
    if noise:
        for name, df in streams.items():
            for col in df.columns[1:]:
                if df[col].nunique() > 3:
                    df[col] += rng.normal(0, 0.002, len(df))
            if "speed" in df:
                df["speed"] = df["speed"].abs()  # a magnitude stays non-negative under sensor noise
        frames = (frames.astype(np.int16) + rng.integers(-2, 3, frames.shape)).clip(0, 255).astype(np.uint8)
    cam = Camera(index=ep.cameras["camera"].index.copy(), frames=frames, shape=frames.shape)
    return RawEpisode(new_id, {**ep.meta, "episode_id": new_id}, streams, {"camera": cam})


def _truth_entry(ep: RawEpisode, faults: list[dict], split: str) -> dict:
    return {"session": "s0", "task": ep.meta["task"], "split": split, "instruction": ep.meta["instruction"],
            "offset_ms": {}, "drift_ppm": {}, "action_lag_ms": 0.0, "faults": faults}


def make_dataset(root: str | Path, config: SyntheticConfig = SyntheticConfig(), *, eval_root: str | Path | None = None) -> dict:
    """Write a faulty synthetic raw dataset under `root` (and an eval split); returns the truth and
    writes it to `<root>.truth.json`."""
    rng = np.random.default_rng(config.seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    episodes: dict[str, dict] = {}
    clean: list[RawEpisode] = []
    written: list[RawEpisode] = []
    for k in range(config.episodes):
        task = config.tasks[k % len(config.tasks)]
        ep = make_episode(f"ep_{k:04d}", task, rng, config, language="zh" if k % 4 == 3 else "en")
        clean.append(_copy(ep, ep.episode_id, rng, noise=False))
        instruction = ep.meta["instruction"]
        faults = []
        for stream in ("camera", "state", "imu", "action"):
            if rng.random() < config.fault_rate:
                faults.append(_row_fault(ep, stream, ROW_FAULTS[int(rng.integers(len(ROW_FAULTS)))], rng))
        for kind in VALUE_FAULTS:
            stream = {"spike": "state", "nan_inf": "imu", "negative_speed": "state"}[kind]
            if rng.random() < config.fault_rate and not any(f["stream"] == stream and f["kind"] in ROW_FAULTS for f in faults):
                faults.append(_value_fault(ep, kind, rng))
        if rng.random() < config.fault_rate and not any(f["stream"] == "camera" for f in faults):
            faults.append(_frozen(ep, rng, int(len(ep.cameras["camera"].index) * 0.5)))
        text_kind = rng.random()
        if text_kind < config.fault_rate / 2:
            faults.append(_text(ep, "placeholder_text", rng))
        elif text_kind < config.fault_rate:
            faults.append(_text(ep, "redundant_text", rng))
        write_episode(root, ep)
        written.append(ep)
        episodes[ep.episode_id] = {**_truth_entry(ep, faults, "train"), "instruction": instruction}
    n = config.episodes
    for c in range(config.copies):  # copies named after all originals
        # an exact duplicate copies the episode as written, faults included (they are in its truth too);
        # a near duplicate is the fault-free original plus sensor-level noise
        k = int(rng.integers(len(written)))
        copy = _copy(written[k], f"ep_{n:04d}", rng, noise=False)
        inherited = [f for f in episodes[written[k].episode_id]["faults"]]
        episodes[copy.episode_id] = _truth_entry(copy, inherited + [{"kind": "duplicate_episode", "stream": None, "column": None, "of": written[k].episode_id}], "train")
        k = int(rng.integers(len(clean)))
        near = _copy(clean[k], f"ep_{n + 1:04d}", rng, noise=True)
        episodes[near.episode_id] = _truth_entry(near, [{"kind": "near_duplicate_episode", "stream": None, "column": None, "of": clean[k].episode_id}], "train")
        for ep in (copy, near):
            write_episode(root, ep)
        n += 2
    if eval_root is not None:
        eval_root = Path(eval_root)
        eval_truth = {}
        evals = []
        for k in range(config.eval_episodes):
            ep = make_episode(f"ev_{k:04d}", config.tasks[k % len(config.tasks)], rng, config)
            ep.meta["split"] = "eval"
            write_episode(eval_root, ep)
            evals.append(ep)
            eval_truth[ep.episode_id] = _truth_entry(ep, [], "eval")
        for c in range(config.copies):
            src = evals[c % len(evals)]
            leak = _copy(src, f"ep_{n:04d}", rng, noise=False)
            leak.meta["split"] = "train"
            n += 1
            write_episode(root, leak)
            episodes[leak.episode_id] = _truth_entry(leak, [{"kind": "eval_leak", "stream": None, "column": None, "of": src.episode_id}], "train")
        write_json(eval_root.parent / f"{eval_root.name}.truth.json", _truth(eval_root.name, eval_truth, config), schema="truth")
    truth = _truth(root.name, episodes, config)
    write_json(root.parent / f"{root.name}.truth.json", truth, schema="truth")
    return truth


def _truth(name: str, episodes: dict, config: SyntheticConfig) -> dict:
    return {"schema_version": 1, "dataset": name, "seed": config.seed, "created_by": "stages.cleaning.synthetic",
            "robot": {"robot_type": "synthetic_arm", "control_hz": 80.0, "action_lag_ms": 0.0},
            "streams": {k: {"kind": "camera" if k == "camera" else "continuous", "rate_hz": hz, "jitter_ms": config.jitter_ms}
                        for k, hz in RATES.items()},
            "sessions": {"s0": {"offset_ms": {}, "drift_ppm": {}}}, "episodes": episodes}
