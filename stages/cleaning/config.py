"""Rule configuration: defaults < rules YAML (`vla clean --rules rules.yaml`).

    schema_version: 1
    rules:
      values.spike:              # a rule id (`vla clean --help` and docs/clean.md list them)
        enabled: true
        severity: warning        # info | warning | error
        action: fix              # one of the actions the rule allows
        params: {threshold: 8.0} # only the keys you change
    fingerprints: {frames: 16}   # stages.data.fingerprints.FingerprintConfig
    match: {trajectory: 0.1}     # stages.data.fingerprints.MatchConfig

The file is checked against schema `clean-rules`, then every rule id, action and parameter against
the registry; every problem is a `BadInput` naming the file and the key (`rules.values.spike.params.window`).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stages.artifacts import read_yaml, validate
from stages.cleaning.base import RULES, Rule, RuleDef
from stages.data.fingerprints import FingerprintConfig, MatchConfig
from stages.errors import BadInput


@dataclass
class CleanConfig:
    rules: dict[str, Rule]
    fingerprints: FingerprintConfig = field(default_factory=FingerprintConfig)
    match: MatchConfig = field(default_factory=MatchConfig)

    def rule(self, rule_id: str) -> Rule:
        return self.rules[rule_id]

    def to_json(self) -> dict:
        """The effective configuration, in the rules-YAML shape (written into the report)."""
        return {
            "schema_version": 1,
            "rules": {rid: {"enabled": r.enabled, "severity": r.severity, "action": r.action,
                            "params": _plain(dataclasses.asdict(r.params))} for rid, r in self.rules.items()},
            "fingerprints": _plain(dataclasses.asdict(self.fingerprints)),
            "match": _plain(dataclasses.asdict(self.match)),
        }


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _default_rule(definition: RuleDef) -> Rule:
    return Rule(definition, True, definition.severity, definition.actions[0], definition.params())


def default_config() -> CleanConfig:
    return CleanConfig({rid: _default_rule(RULES.get(rid)) for rid in RULES.names()})


def _coerce(value: Any, hint: Any, where: str, source: str | os.PathLike) -> Any:
    """Check one parameter value against its dataclass type hint (ints pass as floats; lists as tuples)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            raise BadInput(f"`{source}`: field `{where}` is invalid", caused_by=f"expected a list, got {value!r}")
        return tuple(_coerce(v, inner, f"{where}[{i}]", source) for i, v in enumerate(value))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint, True)
    if not ok:
        raise BadInput(f"`{source}`: field `{where}` is invalid", caused_by=f"expected {getattr(hint, '__name__', hint)}, got {value!r}")
    return float(value) if hint is float else value


def _override(obj: Any, values: dict, where: str, source: str | os.PathLike) -> Any:
    """A copy of dataclass `obj` with `values` applied; unknown keys raise naming the key."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in values.items():
        if key not in names:
            known = ", ".join(names) or "none"
            raise BadInput(f"`{source}`: field `{where}.{key}` is unknown", caused_by=f"known: {known}")
        changes[key] = _coerce(value, hints[key], f"{where}.{key}", source)
    return dataclasses.replace(obj, **changes)


def load_config(path: str | os.PathLike | None) -> CleanConfig:
    """Defaults, updated by the rules YAML at `path` (None = defaults only)."""
    config = default_config()
    if path is None:
        return config
    path = Path(path)
    doc = read_yaml(path, what="rules")
    doc = {} if doc is None else doc
    validate(doc, "clean-rules", source=path)
    for rule_id, spec in (doc.get("rules") or {}).items():
        if rule_id not in RULES:
            raise BadInput(f"`{path}`: field `rules.{rule_id}` is unknown", caused_by=f"known rules: {', '.join(RULES.names())}")
        rule = config.rules[rule_id]
        if "action" in spec and spec["action"] not in rule.definition.actions:
            raise BadInput(f"`{path}`: field `rules.{rule_id}.action` is invalid",
                           caused_by=f"{spec['action']!r} is not one of {', '.join(rule.definition.actions)}")
        rule.enabled = spec.get("enabled", rule.enabled)
        rule.severity = spec.get("severity", rule.severity)
        rule.action = spec.get("action", rule.action)
        rule.params = _override(rule.params, spec.get("params") or {}, f"rules.{rule_id}.params", path)
    config.fingerprints = _override(config.fingerprints, doc.get("fingerprints") or {}, "fingerprints", path)
    config.match = _override(config.match, doc.get("match") or {}, "match", path)
    return config


_FIELD_COMMENT = re.compile(r"^\s+(\w+):[^=]+=.*?#\s*(.+)$")


def _field_comments(cls: type) -> dict[str, str]:
    """`name -> comment` from the trailing comments of a config dataclass's fields (its source)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2).strip() for m in map(_FIELD_COMMENT.match, lines) if m}


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(_plain(value), default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()


def documented_yaml() -> str:
    """The default configuration as a commented YAML file (examples/rules.yaml is this text)."""
    config = default_config()
    out = [
        "# Default rules of `vla clean` (generated from the rule registry: stages.cleaning.config.documented_yaml).",
        "# Copy this file, keep only what you change, and pass it with `vla clean RAW --out CLEAN --rules rules.yaml`.",
        "# action: fix (repair) | mask (keep, mark invalid for align-time) | drop (drop the episode) | flag (report only)",
        "schema_version: 1",
        "rules:",
    ]
    for rule_id, r in config.rules.items():
        d = r.definition
        out.append(f"  # {d.kind}: {' '.join(d.doc.split())}")
        out.append(f"  # actions: {', '.join(d.actions)}")
        out.append(f"  {rule_id}:")
        out += [f"    enabled: {_yaml_value(r.enabled)}", f"    severity: {r.severity}", f"    action: {r.action}"]
        params = dataclasses.asdict(r.params)
        if not params:
            out.append("    params: {}")
            continue
        out.append("    params:")
        notes = _field_comments(type(r.params))
        for key, value in params.items():
            note = f"  # {notes[key]}" if key in notes else ""
            out.append(f"      {key}: {_yaml_value(value)}{note}")
    for section, obj in (("fingerprints", config.fingerprints), ("match", config.match)):
        out.append(f"{section}:  # {type(obj).__module__}.{type(obj).__name__}")
        notes = _field_comments(type(obj))
        for key, value in dataclasses.asdict(obj).items():
            note = f"  # {notes[key]}" if key in notes else ""
            out.append(f"  {key}: {_yaml_value(value)}{note}")
    return "\n".join(out) + "\n"
