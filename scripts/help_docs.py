"""Embed every command's `--help` in its docs page, exactly as the CLI prints it.

    python scripts/help_docs.py            # rewrite the generated blocks in docs/*.md
    python scripts/help_docs.py --check    # exit 1 listing the stale pages (the test suite runs this)

A page holds one block per command, between markers that stay in the page:

    <!-- help: vla align-time -->
    ... generated: one line naming the command, then the help text in a code block ...
    <!-- /help -->

The help is rendered through the real Typer app (`vlacli.app.app`) at a fixed width and without
colour (COLUMNS=100, NO_COLOR=1, TERM=dumb; variables that would force a terminal are removed), so
the text does not depend on the terminal or CI it runs in. Trailing spaces, which rich pads every
line with, and the blank lines around the text are dropped; nothing else is changed.

`--check` also fails when a command of the app has no page here, a page lacks a command's markers,
markers name an unknown command, or a command's help has no Examples block.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 100

# The environment the help is rendered in; set before typer and rich are imported (typer reads some
# of these at import time).
RENDER_ENV = {"COLUMNS": str(WIDTH), "NO_COLOR": "1", "TERM": "dumb", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
FORCING_ENV = ("TERMINAL_WIDTH", "FORCE_COLOR", "PY_COLORS", "GITHUB_ACTIONS", "TTY_COMPATIBLE",
               "TTY_INTERACTIVE", "JUPYTER_COLUMNS", "COLORTERM", "LINES")

# Command -> the docs page that shows its help (in pipeline order; `vla` is the root's own help).
PAGES = {
    "vla": "cli.md",
    "vla sim record": "sim.md",
    "vla clean": "clean.md",
    "vla align-time": "align-time.md",
    "vla pretrain-modality": "pretrain-modality.md",
    "vla align": "align.md",
    "vla finetune": "finetune.md",
    "vla probe": "probes.md",
    "vla export": "export.md",
    "vla report": "report.md",
    "vla model info": "model.md",
    "vla schema": "cli.md",
}

BLOCK = re.compile(r"<!-- help: (?P<cmd>[^>]*?) -->\n(?P<body>.*?)<!-- /help -->", re.DOTALL)
FENCE = "```"


def _prepare_env() -> None:
    for name in FORCING_ENV:
        os.environ.pop(name, None)
    os.environ.update(RENDER_ENV)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def app_commands() -> list[str]:
    """Every command of the app, groups walked down to their leaves, plus the root itself."""
    import typer.main

    from vlacli.app import app

    out = ["vla"]

    def walk(group, prefix: str) -> None:  # typer.core.TyperGroup (typer vendors its own click)
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, f"{prefix} {name}")
            else:
                out.append(f"{prefix} {name}")

    walk(typer.main.get_command(app), "vla")
    return out


def render_help(command: str) -> str:
    """`<command> --help` through the Typer app, right-stripped, without surrounding blank lines."""
    from typer.testing import CliRunner

    from vlacli.app import app

    args = command.split()[1:] + ["--help"]
    result = CliRunner().invoke(app, args, env=RENDER_ENV, catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"error: `{command} --help` exited {result.exit_code}:\n{result.output}")
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def block_body(command: str, text: str) -> str:
    if FENCE in text:
        raise SystemExit(f"error: `{command} --help` contains {FENCE}, which would break the code block")
    return (f"`{command} --help` 的输出（`COLUMNS={WIDTH}`；由 `python scripts/help_docs.py` 生成，请勿手改）：\n\n"
            f"{FENCE}text\n{text}\n{FENCE}\n")


def refresh(page: str, text: str, helps: dict[str, str]) -> tuple[str, list[str]]:
    """The page with every block regenerated, and the problems found in it."""
    problems = []
    found = []

    def replace(m: re.Match) -> str:
        cmd = m.group("cmd").strip()
        if cmd not in helps:
            problems.append(f"{page}: markers name `{cmd}`, which is not a vla command")
            return m.group(0)
        if PAGES.get(cmd) != page:
            problems.append(f"{page}: the help of `{cmd}` belongs in {PAGES.get(cmd)}")
        found.append(cmd)
        return f"<!-- help: {cmd} -->\n{block_body(cmd, helps[cmd])}<!-- /help -->"

    new = BLOCK.sub(replace, text)
    for cmd in sorted({c for c in found if found.count(c) > 1}):
        problems.append(f"{page}: `{cmd}` has more than one help block")
    for cmd, home in PAGES.items():
        if home == page and cmd not in found:
            problems.append(f"{page}: no block for `{cmd}` (add the lines `<!-- help: {cmd} -->` and `<!-- /help -->`)")
    return new, problems


def run(docs: Path, check: bool) -> int:
    commands = app_commands()
    problems = [f"`{c}` has no docs page: add it to PAGES in scripts/help_docs.py" for c in commands if c not in PAGES]
    problems += [f"PAGES names `{c}`, which is not a vla command" for c in PAGES if c not in commands]
    helps = {c: render_help(c) for c in commands}
    problems += [f"`{c} --help` has no Examples block (epilog=examples(...))" for c in commands
                 if c != "vla" and "\n Examples\n" not in f"\n{helps[c]}\n"]
    stale = []
    for page in sorted(set(PAGES.values())):
        path = docs / page
        if not path.is_file():
            problems.append(f"{page}: missing")
            continue
        text = path.read_text(encoding="utf-8")
        new, found = refresh(page, text, helps)
        problems += found
        if new != text:
            stale.append(page)
            if not check:
                path.write_text(new, encoding="utf-8")
                print(f"updated {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if check and stale:
        for page in stale:
            print(f"stale: {docs / page}", file=sys.stderr)
        print("\nhint: python scripts/help_docs.py", file=sys.stderr)
    return 1 if problems or (check and stale) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is stale")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="the docs folder (default: docs/)")
    args = parser.parse_args(argv)
    _prepare_env()
    return run(args.docs.resolve(), args.check)


if __name__ == "__main__":
    sys.exit(main())
