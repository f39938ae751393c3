"""Find a run directory's artifacts by what the directories hold, not by their names.

A pipeline run (`examples/pipeline.sh`) puts every stage's output in one folder, but a user may name
the folders as they like, so each artifact is recognised by its own files:

| artifact                | recognised by                                                      |
|-------------------------|--------------------------------------------------------------------|
| cleaned dataset         | a directory holding `clean_report.json`                            |
| aligned dataset         | a directory holding `align_report.json`                            |
| checkpoint              | a directory holding `trainer_state.json` or `logs/metrics.jsonl`   |
| export bundle           | a directory holding `manifest.json` (checked against its schema)   |
| probe report            | a `*.json` object holding `checks`, `health` and `summary`         |
| closed-loop evaluation  | `closed_loop.json` (inside a checkpoint, or anywhere else)         |
| injected truth          | `<dataset>.truth.json`                                             |

The walk goes at most `MAX_DEPTH` levels down, never into hidden folders (a half-written atomic
output is a hidden sibling), never into a recognised artifact's own sub-folders (a checkpoint's
`checkpoints/step-*` snapshots, a dataset's `data/`), and never into raw episode folders.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from stages.errors import BadInput

MAX_DEPTH = 4
CLEAN_REPORT = "clean_report.json"
ALIGN_REPORT = "align_report.json"
TRAINER_STATE = "trainer_state.json"
METRICS_LOG = Path("logs") / "metrics.jsonl"
MANIFEST = "manifest.json"
CLOSED_LOOP = "closed_loop.json"
TRUTH_SUFFIX = ".truth.json"
PROBE_KEYS = ("checks", "health", "summary")
SMALL_JSON = 64 << 20  # a probe report is kilobytes; never parse a big file only to learn it is not one

# Pipeline order of checkpoint folder names (examples/pipeline.sh); other names follow alphabetically.
CHECKPOINT_ORDER = ("vision", "language", "action", "align", "sft", "finetune")


@dataclass
class RunArtifacts:
    """Paths of everything found under `root` (sorted, deterministic)."""

    root: Path
    clean: list[Path] = field(default_factory=list)  # dataset dirs
    aligned: list[Path] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    bundles: list[Path] = field(default_factory=list)
    probes: list[Path] = field(default_factory=list)  # files
    closed_loop: list[Path] = field(default_factory=list)  # files outside checkpoints
    truth: list[Path] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.clean or self.aligned or self.checkpoints or self.bundles or self.probes or self.closed_loop)

    def rel(self, path: Path) -> str:
        """`path` relative to the run directory, with forward slashes ("." for the root)."""
        try:
            return path.relative_to(self.root).as_posix() or "."
        except ValueError:
            return path.as_posix()


def _checkpoint_key(path: Path) -> tuple:
    name = path.name
    return (CHECKPOINT_ORDER.index(name) if name in CHECKPOINT_ORDER else len(CHECKPOINT_ORDER), path.as_posix())


def _is_episode(names: set[str]) -> bool:
    """A raw or cleaned episode folder: meta.json beside stream parquet files."""
    return "meta.json" in names and any(n.endswith(".parquet") for n in names)


def _looks_like_probe(path: Path) -> bool:
    """A probe report: any JSON object with `checks`, `health` and `summary`; a file named `probe*`
    that holds one of them (or does not parse) claims to be one, and reading it later names what is wrong.
    A `probe-thresholds.json` (check names as keys) is not a report."""
    named = path.name.startswith("probe")
    if path.stat().st_size > SMALL_JSON:
        return False
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return named
    if not isinstance(doc, dict):
        return False
    if named:
        return any(k in doc for k in PROBE_KEYS + ("checkpoint",))
    return all(k in doc for k in PROBE_KEYS)


def _is_bundle(directory: Path) -> bool:
    try:
        doc = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # a broken manifest is still a bundle's; reading it later names the problem
    return isinstance(doc, dict) and doc.get("format") == "vla-policy"


def discover(root: str | os.PathLike) -> RunArtifacts:
    """Walk `root` and classify what it holds; BadInput when it is not a readable directory."""
    root = Path(root)
    if not root.exists():
        raise BadInput(f"run directory `{root}` does not exist", hint="vla report RUN_DIR --out report.html")
    if not root.is_dir():
        raise BadInput(f"run directory `{root}` is not a directory", caused_by="expected the folder a pipeline run wrote")
    found = RunArtifacts(root=root)
    _walk(root, 0, found)
    found.checkpoints.sort(key=_checkpoint_key)
    for items in (found.clean, found.aligned, found.bundles, found.probes, found.closed_loop, found.truth):
        items.sort(key=lambda p: p.as_posix())
    return found


def _walk(directory: Path, depth: int, found: RunArtifacts) -> None:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise BadInput(f"cannot list `{directory}`", caused_by=str(exc)) from None
    names = {e.name for e in entries}
    if _classify_dir(directory, names, found):
        return  # a recognised artifact: its inner folders are its own business
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.endswith(".json"):
            _classify_file(Path(entry.path), found)
        elif entry.is_dir(follow_symlinks=False) and depth < MAX_DEPTH:
            _walk(Path(entry.path), depth + 1, found)


def _classify_dir(directory: Path, names: set[str], found: RunArtifacts) -> bool:
    if CLEAN_REPORT in names:
        found.clean.append(directory)
        return True
    if ALIGN_REPORT in names:
        found.aligned.append(directory)
        return True
    if MANIFEST in names and _is_bundle(directory):
        found.bundles.append(directory)
        return True
    if TRAINER_STATE in names or (directory / METRICS_LOG).is_file():
        found.checkpoints.append(directory)
        return True
    return _is_episode(names)


def _classify_file(path: Path, found: RunArtifacts) -> None:
    if path.name.endswith(TRUTH_SUFFIX):
        found.truth.append(path)
    elif path.name == CLOSED_LOOP:
        found.closed_loop.append(path)
    elif _looks_like_probe(path):
        found.probes.append(path)
