"""`vla export CKPT --out dist/NAME` and `vla export --verify dist/NAME`: the policy bundle of ch07 §7.10."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stages.errors import BadInput
from vlacli import __version__, console
from vlacli.options import JsonOut, Overwrite, Quiet, examples

HELP = (
    "Bundle a checkpoint for RL and deployment (ch07 §7.10): weights in the chosen dtype (safetensors), config, "
    "loss curves and bucket state, the probe report, an RL initialisation config (freeze, learning rates, KL "
    "coefficient), a Chinese model card and a manifest with the sha256 of every file. --verify checks a bundle."
)
EXAMPLES = examples(
    "vla export ckpt/sft --out dist/tiny-demo --probe-report probe.json --require-pass",
    "vla export ckpt/sft --out dist/tiny-bf16 --dtype bf16",
    "vla export --verify dist/tiny-demo",
)


def command(
    ckpt: Annotated[Path | None, typer.Argument(help="Checkpoint directory (model.safetensors + config.json).", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Bundle directory to write (atomically), e.g. dist/NAME.")] = None,
    probe_report: Annotated[Path | None, typer.Option("--probe-report", help="Report of `vla probe` on this checkpoint, bundled.")] = None,
    require_pass: Annotated[bool, typer.Option("--require-pass", help="Refuse (exit 1) unless the probe report passed its gate.")] = False,
    dtype: Annotated[str, typer.Option("--dtype", help="Weight precision: bf16, fp16 or fp32.")] = "fp32",
    verify_dir: Annotated[Path | None, typer.Option("--verify", help="Check a bundle's files against its manifest (no export).")] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    console.setup(quiet)
    from stages.artifacts import dumps
    from stages.export import ExportConfig, export, verify

    if verify_dir is not None:
        if ckpt is not None or out is not None:
            raise BadInput("--verify takes only the bundle: no CKPT or --out", hint=f"vla export --verify {verify_dir}")
        manifest = verify(verify_dir)
        console.summary(f"vla export --verify: {verify_dir}", [
            ("files", f"{len(manifest['files'])} verified (sha256)"),
            ("source", f"{manifest['source']['checkpoint']} (step {manifest['source']['step']})"),
            ("dtype", manifest["dtype"]),
        ])
        if json_out:
            console.out.out(dumps(manifest), end="", highlight=False)
        return
    if ckpt is None or out is None:
        raise BadInput("missing CKPT or --out", hint="vla export ckpt/sft --out dist/NAME")
    manifest = export(ckpt, out, probe_report=probe_report, config=ExportConfig(dtype=dtype, require_pass=require_pass),
                      overwrite=overwrite, created_by=f"vla {__version__} export")
    size = sum(f["bytes"] for f in manifest["files"])
    probe = manifest["probe"]
    console.summary(f"vla export: {ckpt} -> {out}", [
        ("files", f"{len(manifest['files'])} ({size / 1e6:.2f} MB), manifest.json with sha256"),
        ("weights", f"model.safetensors ({manifest['dtype']})"),
        ("probe", "none bundled" if probe is None else f"{probe['passed']}/{probe['run']} passed, gate "
                                                      f"{'passed' if probe['gate_passed'] else 'failed'}"),
        ("temperature τ", f"{manifest['training']['tau']:.4g}"),
        ("verify", f"vla export --verify {out}"),
    ])
    if json_out:
        console.out.out(dumps(manifest), end="", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("export", help=HELP, epilog=EXAMPLES)(console.guarded(command))
