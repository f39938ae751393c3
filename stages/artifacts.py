"""Atomic outputs and schema-validated JSON artifacts.

Every stage writes through these helpers so that a killed stage never leaves a half-written file or
directory, and every JSON artifact is validated against its schema before it is written and after
it is read (STYLE §7).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema

import schemas
from stages.errors import BadInput, VlaError

# ----------------------------------------------------------------------------- schemas


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    try:
        schema = schemas.load(name)
    except KeyError:
        raise VlaError(f"no schema named `{name}`", caused_by=f"known: {', '.join(schemas.names())}") from None
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def json_path(path: Any) -> str:
    """Render a jsonschema error path as `phases[1].end`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def schema_errors(obj: Any, schema: str) -> list[str]:
    """All violations of `schema` by `obj`, each as `path: message`, shallowest first."""
    errors = sorted(_validator(schema).iter_errors(obj), key=lambda e: (len(e.absolute_path), json_path(e.absolute_path)))
    return [f"{json_path(e.absolute_path)}: {e.message}" for e in errors]


def validate(obj: Any, schema: str, *, source: str | os.PathLike) -> None:
    """Raise `BadInput` naming `source` and the first offending field when `obj` violates `schema`."""
    errors = schema_errors(obj, schema)
    if errors:
        field, _, message = errors[0].partition(": ")
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BadInput(f"`{source}`: field `{field}` is invalid{more}", caused_by=message)


# ----------------------------------------------------------------------------- atomic writes


def _tmp_sibling(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def check_writable_parent(path: Path, *, what: str = "output") -> None:
    """Fail early (exit 2, nothing written) when `path` cannot be created."""
    parent = path.resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write {what} `{path}`", caused_by=f"`{probe}` is not a writable directory")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` in one rename.

    On any exception the temporary directory is removed and `path` is untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise BadInput(f"output `{path}` already exists", hint="choose another --out, or pass --overwrite")
    check_writable_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = _tmp_sibling(path)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same directory; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ----------------------------------------------------------------------------- JSON artifacts


def _finite(obj: Any) -> Any:
    """JSON has no NaN/Inf: map them to None so the file stays readable by every parser."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(_finite(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any, *, schema: str | None) -> Path:
    """Validate `obj` against `schema` (a failure here is a bug: exit 3), then write atomically."""
    obj = _finite(obj)
    if schema is not None:
        errors = schema_errors(obj, schema)
        if errors:
            raise VlaError(f"refusing to write `{path}`: it violates schema `{schema}`", caused_by=errors[0])
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(dumps(obj), encoding="utf-8")
    return path


def read_json(path: str | os.PathLike, *, schema: str | None) -> Any:
    """Read and validate a JSON artifact; every problem is `BadInput` naming the file and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"cannot read `{path}`", caused_by="no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read `{path}`", caused_by=str(exc)) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"cannot parse `{path}`", caused_by=f"line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if schema is not None:
        validate(obj, schema, source=path)
    return obj


def read_yaml(path: str | os.PathLike, *, what: str) -> Any:
    """Parse a YAML file the user wrote (`what` names it in messages: "rules", "thresholds"); an unreadable
    or malformed file is `BadInput` naming the file and, for a syntax error, the line and column.
    An empty file is None."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"cannot read {what} `{path}`", caused_by="no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read {what} `{path}`", caused_by=str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise BadInput(f"cannot parse {what} `{path}`", caused_by=f"{where}{getattr(exc, 'problem', None) or exc}") from None


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
