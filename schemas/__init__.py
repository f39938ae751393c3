"""JSON Schemas (draft 2020-12) for every artifact `vla` writes, shipped inside the wheel.

`load(name)` returns the schema `<name>.schema.json`; `names()` lists them. Validation with
readable paths lives in `stages.artifacts`.
"""

from __future__ import annotations

import functools
import json
from importlib import resources


def names() -> list[str]:
    suffix = ".schema.json"
    return sorted(p.name[: -len(suffix)] for p in resources.files(__name__).iterdir() if p.name.endswith(suffix))


@functools.cache
def _text(name: str) -> str:
    path = resources.files(__name__) / f"{name}.schema.json"
    if not path.is_file():
        raise KeyError(name)
    return path.read_text(encoding="utf-8")


def text(name: str) -> str:
    """The schema file's text, exactly as shipped."""
    return _text(name)


def load(name: str) -> dict:
    return json.loads(_text(name))
