"""Engine overhead: our training step vs a plain PyTorch loop on the same model, batch and losses.

    python bench/train_step.py                       # tiny preset, CPU
    python bench/train_step.py --device cuda --preset base --precision bf16 --batch 64

Both sides train the same model from the same initial weights on the same pre-built batch with two
losses (masked video modelling on the masked patches + vision↔language InfoNCE):

* plain: `loss = mvm + nce; opt.zero_grad(); loss.backward(); opt.step()` with torch's AdamW;
* engine: `Trainer.fit()` with the fixed-weight combiner, gradient clipping, the non-finite guard,
  the LR schedule and the per-step bookkeeping, at the default cadences (a metrics row every 10
  steps, gradient statistics every 100), no evaluation.

Per-step time is the interval between two consecutive batch draws from the shared loader (every
piece of work of one loop iteration, setup and the final checkpoint write excluded); the sides
alternate `--reps` runs. The median interval (robust to load spikes) gives the ratio; the mean, which
also carries the periodic logging, is printed beside it. Then PCGrad and GradNorm engine steps are timed against the fixed-weight engine step.
Ratios are what matter (this machine is shared and noisy); target: overhead ≤ 1.10.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.model import build_model  # noqa: E402
from stages.objectives import info_nce  # noqa: E402
from stages.training.loop import CheckpointConfig, TrainConfig, Trainer  # noqa: E402
from stages.training.optim import OptimConfig  # noqa: E402


def make_batch(model, batch: int, device: torch.device) -> dict:
    v = model.config.vision
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (batch, v.frames, 3, v.image_size, v.image_size), dtype=torch.uint8, generator=g)
    texts = [f"push the block {i % 7} to the {'left' if i % 2 else 'right'}" for i in range(batch)]
    return {"frames": frames.to(device), "instruction": texts}


class BenchRecipe:
    """Two losses on one batch: MVM (masked patches only) and V↔L InfoNCE."""

    def losses(self, model, batch, step, phase):
        out = model.mvm(batch["frames"])
        mvm = torch.nn.functional.mse_loss(out.pred, out.target)
        lang = model.encode_language(batch["instruction"])
        nce = info_nce(out.vision.z, lang.z, model.clamped_logit_scale().exp())
        return {"mvm": mvm, "nce": nce}

    def batch_size(self, batch):
        return len(batch["instruction"])


class Repeat:
    """Yields the same batch `steps` times (no data cost on either side) and stamps each draw."""

    def __init__(self, batch, steps: int):
        self.batch, self.steps, self.stamps = batch, steps, []

    def __iter__(self):
        for _ in range(self.steps):
            _sync(self.batch)
            self.stamps.append(time.perf_counter())
            yield self.batch

    def intervals(self, warmup: int = 1) -> list[float]:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return gaps[warmup:]


def plain_run(model, batch, steps: int, lr: float, autocast: bool) -> list[float]:
    recipe = BenchRecipe()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    loader = Repeat(batch, steps)
    for step, b in enumerate(loader):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            losses = recipe.losses(model, b, step, None)
        loss = losses["mvm"] + losses["nce"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loader.intervals()


def engine_run(model, batch, steps: int, lr: float, args, combiner: str) -> list[float]:
    cfg = TrainConfig(steps=steps, device=args.device, precision=args.precision, combiner=combiner,
                      optim=OptimConfig(lr=lr, warmup_steps=0, min_lr_ratio=1.0), checkpoint=CheckpointConfig())
    loader = Repeat(batch, steps)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, BenchRecipe(), loader, config=cfg, out_dir=Path(tmp) / "run")
        trainer.save = lambda done, snapshot: None  # the checkpoint write is not part of the step
        trainer.fit()
    return loader.intervals()


def _sync(batch) -> None:
    if batch["frames"].is_cuda:
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=12, help="batches drawn per run (the first interval is warm-up)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    logging.getLogger("vla").setLevel(logging.ERROR)
    device = torch.device(args.device)
    torch.manual_seed(0)
    template = build_model(args.preset).to(device)
    state = {k: v.clone() for k, v in template.state_dict().items()}
    batch = make_batch(template, args.batch, device)
    autocast = args.precision == "bf16" and device.type == "cuda"
    lr = 1e-4

    def fresh():
        model = build_model(args.preset).to(device)
        model.load_state_dict(state)
        return model

    def plain():
        return plain_run(fresh(), batch, args.steps, lr, autocast)

    def engine(combiner):
        return engine_run(fresh(), batch, args.steps, lr, args, combiner)

    print(f"preset {args.preset}, batch {args.batch}, {args.device}, {args.precision}, "
          f"{sum(p.numel() for p in template.parameters()) / 1e6:.2f} M parameters, torch threads {torch.get_num_threads()}")
    plain_run(fresh(), batch, 3, lr, autocast), engine_run(fresh(), batch, 3, lr, args, "fixed")  # warm-up
    times: dict[str, list[float]] = {"plain": [], "fixed": [], "pcgrad": [], "gradnorm": []}
    for rep in range(args.reps):
        times["plain"] += plain()
        for name in ("fixed", "pcgrad", "gradnorm"):
            times[name] += engine(name)
        print(f"  after rep {rep + 1}: " + "  ".join(f"{k} {statistics.median(v) * 1e3:.1f} ms" for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    print(f"plain loop        {med['plain'] * 1e3:8.1f} ms/step (mean {mean['plain'] * 1e3:.1f})")
    print(f"engine (fixed)    {med['fixed'] * 1e3:8.1f} ms/step (mean {mean['fixed'] * 1e3:.1f})   overhead ratio "
          f"{med['fixed'] / med['plain']:.3f} (means: {mean['fixed'] / mean['plain']:.3f}; target <= 1.10)")
    for name in ("pcgrad", "gradnorm"):
        print(f"engine ({name}){' ' * (9 - len(name))} {med[name] * 1e3:8.1f} ms/step (mean {mean[name] * 1e3:.1f})   "
              f"vs fixed {med[name] / med['fixed']:.3f}")
    print(f"engine throughput {args.batch / med['fixed']:.1f} samples/s")


if __name__ == "__main__":
    main()
