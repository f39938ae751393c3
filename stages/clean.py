"""`vla clean`: raw episodes in, a cleaned raw dataset + masks + clean_report.json out.

The recipe, after ch07 §7.7 (清洗) and ch05 §5.7 (噪声过滤, gotcha 7 数据泄露/重复):

1. Language: placeholder instructions are dropped; redundant wording is removed while constraint
   phrases (不超速 / 不越线 / 保持时距, "do not …", "never faster than 0.3 m/s") are kept and
   extracted into meta.json `constraints`.
2. Time domain first (优先做时域对齐清洗): non-finite values, clocks that go backwards, duplicate
   timestamps, gaps (frame drops).
3. Values: negative speeds, spikes, jerk outliers (Huber-style jerk clipping), dead and saturated
   dimensions.
4. Cameras: frozen cameras, blank frames.
5. Episodes too short to learn from.
6. Across the dataset, on fingerprints of frames, text and trajectories: eval episodes leaked into
   train, exact and near duplicates; then rate mismatches and task imbalance.

Each episode is read once, cleaned and written straight into the temporary output, so memory is
bounded by one episode; episodes dropped by the dataset rules are removed before the output is
renamed into place. The input is never modified.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stages.artifacts import atomic_dir, write_json
from stages.cleaning import RULES  # noqa: F401  (registers every rule)
from stages.cleaning.base import EpisodeResult, EpisodeWork
from stages.cleaning.config import CleanConfig, load_config
from stages.cleaning.episodes import DatasetWork
from stages.cleaning.masks import KEY as CLEAN_KEY
from stages.cleaning.report import build_report
from stages.cleaning.text import write_constraints
from stages.cleaning.timestamps import stream_rates
from stages.data.fingerprints import EpisodeFingerprint, content_digest, episode_fingerprint, fingerprint
from stages.data.raw import META, RawEpisode, list_episodes, read_episode
from stages.errors import BadInput
from stages.progress import NullReporter, Reporter

log = logging.getLogger("vla")
REPORT = "clean_report.json"

EPISODE_RULES = (
    "text.placeholder", "text.redundant",  # 1. language
    "values.nan_inf", "timestamps.non_monotonic", "timestamps.duplicate", "timestamps.gap",  # 2. time domain
    "values.negative_speed", "values.spike", "values.jerk", "values.dead_dimension", "values.saturated_dimension",  # 3.
    "camera.frozen", "camera.degenerate",  # 4. cameras
    "episode.short",  # 5.
)
DATASET_RULES = ("dedupe.eval_leak", "dedupe.exact", "dedupe.near", "timestamps.rate", "dataset.task_imbalance")  # 6.


def clean_episode(episode: RawEpisode, config: CleanConfig) -> tuple[EpisodeWork, EpisodeFingerprint]:
    """Run the per-episode rules over one episode (frames memory-mapped); the input is not touched."""
    work = EpisodeWork.of(episode)
    # the exact-duplicate digest is taken on the data as recorded: byte copies match whatever is fixed later
    digest = content_digest({n: s.columns for n, s in work.streams.items()},
                            {n: (c.columns["frame"], c.frames) for n, c in work.cameras.items()})
    clocks = {n: s.t.copy() for n, s in work.all_streams().items()}  # the timing pattern, as recorded
    for rule_id in EPISODE_RULES:
        config.rule(rule_id).run(work)
    write_constraints(work)
    work.notes["rates"] = stream_rates(work)
    cameras = {name: (cam.columns["frame"], cam.frames) for name, cam in work.cameras.items()}
    streams = {name: s.columns for name, s in work.streams.items()}
    fp = fingerprint(work.episode_id, str(work.meta.get("instruction", "")), streams, cameras, config.fingerprints,
                     digest=digest, clocks=clocks)
    return work, fp  # sketches of the cleaned data (fixed values, cleaned instruction); digest and timing as recorded


def _clean_block(work: EpisodeWork, result: EpisodeResult, fp: EpisodeFingerprint) -> dict:
    earlier = (work.episode.meta.get(CLEAN_KEY) or {}).get("masks", [])  # re-cleaning keeps earlier masks
    block = {
        "schema_version": 1,
        "source": str(work.episode.path),
        "masks": earlier + [m.to_json() for m in work.masks],
        "rows_in": result.rows_in,
        "rows_out": result.rows_out,
        "changed": result.changed,
        "findings": len(work.findings),
        # The sample-timing pattern as recorded: unique to one recording and kept by its copies, it
        # lets later stages (align-time -> meta/vla.json -> the probe's leak scan) tell a copy from
        # a look-alike episode after resampling has erased the raw clocks.
        "recording": {"digest": fp.digest, "timing": [float(x) for x in fp.timing]},
    }
    for key in ("instruction_raw", "instruction_source"):
        if key in work.notes:
            block[key] = work.notes[key]
    return block


def write_cleaned(root: Path, work: EpisodeWork, result: EpisodeResult, fp: EpisodeFingerprint) -> Path:
    """Write one cleaned episode in the raw layout; value columns keep their input dtypes."""
    out = root / work.episode_id
    out.mkdir()
    meta = dict(work.meta)
    meta[CLEAN_KEY] = _clean_block(work, result, fp)
    write_json(out / META, meta, schema="raw-meta")
    for name, stream in work.all_streams().items():
        table = pa.table({c: v.astype(stream.dtypes[c], copy=False) for c, v in stream.columns.items()})
        pq.write_table(table, out / f"{name}.parquet")
    for name in work.cameras:
        shutil.copyfile(work.episode.path / f"{name}.npy", out / f"{name}.npy")  # frames are never rewritten
    return out


def fingerprint_dataset(root: Path, config: CleanConfig, reporter: Reporter) -> list[EpisodeFingerprint]:
    """Fingerprints of every episode of `root` (the `--eval` split), read as they are."""
    paths = list_episodes(root)
    fps = []
    with reporter.task("fingerprinting eval", total=len(paths)) as advance:
        for path in paths:
            fps.append(episode_fingerprint(read_episode(path), config.fingerprints))
            advance(1)
    return fps


def _check_paths(raw: Path, out: Path, eval_dir: Path | None) -> None:
    raw_r, out_r = raw.resolve(), out.resolve()
    if out_r == raw_r or raw_r in out_r.parents or out_r in raw_r.parents:
        raise BadInput(f"output `{out}` overlaps the input `{raw}`", caused_by="clean never writes into its input",
                       hint=f"vla clean {raw} --out {raw.name}.clean")
    if eval_dir is not None and eval_dir.resolve() in (raw_r, out_r):
        raise BadInput(f"`--eval {eval_dir}` is the input or the output", caused_by="the leak scan needs a separate eval split")


def clean(raw: str | Path, out: str | Path, *, eval_dir: str | Path | None = None, rules: str | Path | None = None,
          overwrite: bool = False, reporter: Reporter = NullReporter(), created_by: str = "vla clean") -> dict:
    """Clean the raw dataset `raw` into `out` (atomic); returns the report (also `out/clean_report.json`)."""
    raw, out = Path(raw), Path(out)
    eval_dir = Path(eval_dir) if eval_dir is not None else None
    config = load_config(rules)  # every input is validated before anything is written
    _check_paths(raw, out, eval_dir)
    paths = list_episodes(raw)
    eval_fps = fingerprint_dataset(eval_dir, config, reporter) if eval_dir is not None else []

    results: dict[str, EpisodeResult] = {}
    fps: list[EpisodeFingerprint] = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with reporter.task("cleaning", total=len(paths)) as advance:
            for path in paths:
                work, fp = clean_episode(read_episode(path), config)
                result = EpisodeResult.of(work)
                if not result.dropped:
                    write_cleaned(tmp, work, result, fp)
                results[result.episode_id] = result
                fps.append(fp)
                advance(1)
        data = DatasetWork(results, fps, eval_fps, config.match)
        for rule_id in DATASET_RULES:
            config.rule(rule_id).run(data)
        for result in results.values():
            if result.dropped and (tmp / result.episode_id).exists():
                shutil.rmtree(tmp / result.episode_id)
        report = build_report(data, config, source=str(raw), output=str(out),
                              eval_source=str(eval_dir) if eval_dir else None, created_by=created_by)
        write_json(tmp / REPORT, report, schema="clean-report")
    s = report["summary"]
    log.info("cleaned %d episodes: %d kept, %d dropped, %d findings", s["episodes"], s["kept"], s["dropped"], s["findings"])
    return report

