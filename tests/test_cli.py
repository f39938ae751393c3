"""The CLI shell: command list, version, exit codes, `vla schema`, and the frozen option lists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer.main

import schemas
from vlacli import __version__
from vlacli.app import app

FROZEN = Path(__file__).with_name("cli_options.json")
DESIGN_CARD = ["clean", "align-time", "pretrain-modality", "align", "finetune", "probe", "export", "sim"]


def option_lists() -> dict[str, list[str]]:
    """Every command path -> its sorted option and argument names (what users script against)."""
    root = typer.main.get_command(app)
    found: dict[str, list[str]] = {}

    def walk(cmd, path: str) -> None:
        names = []
        for p in cmd.params:
            names += list(p.opts) if p.param_type_name == "option" else [f"<{p.name}>"]
        found[path or "vla"] = sorted(names)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(root, "")
    return found


def test_help_lists_every_stage(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for name in DESIGN_CARD:
        assert name in result.stdout, name


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"vla {__version__}"


def test_schema_lists_and_prints_exact_text(cli):
    listed = cli("schema")
    assert listed.exit_code == 0
    assert listed.stdout.split() == schemas.names()
    assert {"raw-meta", "truth"} <= set(listed.stdout.split())
    printed = cli("schema", "truth")
    assert printed.exit_code == 0
    assert json.loads(printed.stdout) == schemas.load("truth")


def test_unknown_schema_is_usage_error(cli):
    result = cli("schema", "nope")
    assert result.exit_code == 2
    assert "unknown schema `nope`" in result.stderr
    assert result.stdout == ""


def test_unknown_option_is_usage_error(cli):
    assert cli("schema", "--bogus").exit_code == 2


def test_internal_error_exits_3_without_traceback(monkeypatch, cli):
    import vlacli.schema

    def boom(name):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(vlacli.schema.schemas, "text", boom)
    result = cli("schema", "truth")
    assert result.exit_code == 3
    assert "internal error: RuntimeError: kaboom" in result.stderr
    assert "Traceback" not in result.stderr


def test_option_lists_are_frozen():
    """Changing a command's options is a deliberate act: update tests/cli_options.json and the CHANGELOG.

    Regenerate with VLA_FREEZE_CLI=1 pytest tests/test_cli.py.
    """
    current = option_lists()
    if os.environ.get("VLA_FREEZE_CLI"):
        FROZEN.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(FROZEN.read_text())
