"""Training engine: the step, LR schedule, freezing, EMA, the non-finite guard, metrics.jsonl.

The toy model / recipe / loader defined here are shared with test_checkpoint.py and test_ddp.py.
The toy loader shuffles with the *global* torch RNG at `iter()` and adds noise from it at every
batch (what a `torch.utils.data.DataLoader` with augmentation in the main process does), and the
model has dropout: the worst case for exact resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from stages.artifacts import schema_errors
from stages.errors import BadInput
from stages.training import freezing, optim
from stages.training.ema import EMA
from stages.training.loop import TrainConfig, Trainer, TrainingDiverged
from stages.training.metrics import read_jsonl
from stages.training.optim import OptimConfig


# ----------------------------------------------------------------------------- toys


class ToyConfig:
    def __init__(self, width: int = 16, preset: str = "toy"):
        self.width, self.preset = width, preset

    def to_dict(self) -> dict:
        return {"schema_version": 1, "preset": self.preset, "width": self.width}


class ToyModel(torch.nn.Module):
    """Module prefixes like the VLA model's: vision., language., action., heads., logit_scale."""

    def __init__(self, width: int = 16, dropout: float = 0.1, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = ToyConfig(width)
        self.vision = torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.GELU(), torch.nn.Dropout(dropout))
        self.language = torch.nn.Linear(8, width)
        self.action = torch.nn.Linear(width, 4)
        self.heads = torch.nn.LayerNorm(width)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v = self.heads(self.vision(x))  # [B, W]
        lang = self.language(x.flip(-1))  # [B, W]
        return self.action(v), v, lang


class ToyLoader:
    """N samples of x [8] -> y [4]; batches of `batch` (this rank's slice of a global batch).

    shuffle="global": permutation from the global torch RNG at iter() and per-batch noise from it
    (like DataLoader + main-process augmentation); "seeded": permutation from (seed, epoch) via
    `set_epoch`, no noise, identical on every rank (like DistributedSampler).
    """

    def __init__(self, n: int = 48, batch: int = 8, *, shuffle: str = "global", rank: int = 0, world: int = 1, seed: int = 0):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, 8, generator=g)
        self.y = torch.tanh(self.x[:, :4] * 2 + 0.1 * torch.randn(n, 4, generator=g))
        self.batch, self.shuffle, self.rank, self.world, self.seed, self.epoch = batch, shuffle, rank, world, seed, 0
        self.iters = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.iters += 1
        n, glob = len(self.x), self.batch * self.world
        if self.shuffle == "global":
            perm = torch.randperm(n)
        else:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        for start in range(0, n - glob + 1, glob):
            idx = perm[start + self.rank * self.batch: start + (self.rank + 1) * self.batch]
            x = self.x[idx]
            if self.shuffle == "global":
                x = x + 0.01 * torch.randn_like(x)
            yield {"x": x, "y": self.y[idx], "id": idx}


@dataclass
class ToyRecipe:
    """Two losses (mse + InfoNCE between the vision and language views), a counter as state."""

    nan_at: tuple[int, ...] = ()        # steps whose losses are NaN
    stop_at: int | None = None          # raise KeyboardInterrupt at this step (a killed run)
    use_gather: bool = False
    seen: int = 0

    def losses(self, model, batch, step, phase):
        if self.stop_at is not None and step == self.stop_at:
            raise KeyboardInterrupt("killed")
        from stages.objectives import info_nce
        from stages.training import parallel

        self.seen += len(batch["x"])
        pred, v, lang = model(batch["x"])
        mse = torch.nn.functional.mse_loss(pred, batch["y"])
        scale = model.logit_scale.exp()
        if self.use_gather:
            nce = info_nce(v, lang, scale, a_all=parallel.gather_features(v), b_all=parallel.gather_features(lang),
                           offset=parallel.rank_offset(len(v)))
        else:
            nce = info_nce(v, lang, scale)
        if step in self.nan_at:
            mse = mse * float("nan")
        return {"mse": mse, "nce": nce}

    def evaluate(self, model, loader, step):
        errs = [torch.nn.functional.mse_loss(model(b["x"])[0], b["y"]) for b in loader]
        return {"mse": float(torch.stack(errs).mean()), "batches": float(len(errs))}

    def state_dict(self):
        return {"seen": self.seen, "marker": torch.tensor([float(self.seen)])}

    def load_state_dict(self, state):
        self.seen = state["seen"]
        assert float(state["marker"][0]) == self.seen


def make_config(**over) -> TrainConfig:
    optim_cfg = over.pop("optim", OptimConfig(lr=3e-3, warmup_steps=2, min_lr_ratio=0.1))
    cfg = TrainConfig(steps=over.pop("steps", 6), seed=0, device="cpu", log_every=over.pop("log_every", 2),
                      optim=optim_cfg, **over)
    return cfg


def make_trainer(out, *, recipe=None, loader=None, ema_decay=None, **config) -> Trainer:
    model = ToyModel()
    ema = EMA(model, ema_decay) if ema_decay else None
    return Trainer(model, recipe or ToyRecipe(), loader or ToyLoader(), config=make_config(**config), out_dir=out,
                   eval_loader=ToyLoader(n=16, shuffle="seeded"), ema=ema)


# ----------------------------------------------------------------------------- LR schedule


def test_lr_factor_known_values():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    # warmup: (s + 1) / 4
    assert [optim.lr_factor(s, 14, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # cosine over [4, 14): progress p = (s - 4) / 10, f = 0.1 + 0.9 * (1 + cos(pi p)) / 2
    assert optim.lr_factor(4, 14, cfg) == 1.0
    assert optim.lr_factor(9, 14, cfg) == pytest.approx(0.55, abs=1e-12)  # p = 0.5: float rounding only
    assert optim.lr_factor(13, 14, cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(0.9 * math.pi)), abs=1e-12)
    assert optim.lr_factor(100, 14, cfg) == pytest.approx(0.1, abs=1e-12)  # past the end: the floor


def test_set_lr_applies_multiplier_and_group_scale():
    a, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    opt = optim.build_optimizer([("w", a), ("b", b)], OptimConfig(lr=0.1), extra_groups=[
        {"name": "extra", "params": [torch.nn.Parameter(torch.zeros(1))], "param_names": ["c"], "lr_scale": 0.5}])
    assert [g["name"] for g in opt.param_groups] == ["decay", "no_decay", "extra"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0, 0.0]  # matrices only are decayed
    optim.set_lr(opt, 0.1, 0.5, 2.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.1, 0.05], abs=1e-15)


# ----------------------------------------------------------------------------- freezing


def test_freeze_globs(caplog):
    model = ToyModel()
    names = [n for n, _ in model.named_parameters()]
    everything = set(names)
    kept = freezing.trainable_names(names, everything, freeze=["vision.*", "logit_scale"], unfreeze=["vision.0.bias"])
    assert kept == everything - {"vision.0.weight", "logit_scale"}
    # the baseline (what the recipe froze) is the starting point; unfreeze may re-enable it
    assert freezing.trainable_names(names, {"action.weight"}, unfreeze=["heads.*"]) == {"action.weight", "heads.weight", "heads.bias"}
    with caplog.at_level("WARNING", logger="vla"):
        freezing.trainable_names(names, everything, freeze=["visoin.*"], where="phase `B`")
    assert "freeze glob `visoin.*` matches no parameter" in caplog.text
    params = freezing.apply(model, kept)
    assert [p.requires_grad for p in model.parameters()] == [n in kept for n in names]
    assert len(params) == len(kept)
    assert freezing.freeze(model, ["heads.*"]) == ["heads.bias", "heads.weight"]
    assert freezing.unfreeze(model, ["heads.w*"]) == ["heads.weight"]


# ----------------------------------------------------------------------------- EMA


def test_ema_hand_computed():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # 0.9 * 1 + 0.1 * 3 = 1.2
    assert ema.module.weight.item() == pytest.approx(1.2, abs=1e-6)  # float32 rounding
    with torch.no_grad():
        model.weight.fill_(5.0)
    ema.update(model)  # 0.9 * 1.2 + 0.1 * 5 = 1.58
    assert ema.module.weight.item() == pytest.approx(1.58, abs=1e-6)
    assert not ema.module.weight.requires_grad and ema.updates == 2
    with pytest.raises(BadInput, match="decay"):
        EMA(model, decay=1.0)


# ----------------------------------------------------------------------------- the step


def test_engine_step_equals_plain_loop(tmp_path):
    """Weights after 5 engine steps == a hand-written AdamW loop with the same LR schedule."""
    cfg = make_config(steps=5, grad_clip=1e9)  # clipping never triggers (its factor clamps to exactly 1)
    model, loader = ToyModel(dropout=0.0), ToyLoader(shuffle="seeded")
    trainer = Trainer(model, ToyRecipe(), loader, config=cfg, out_dir=tmp_path / "run")
    trainer.fit()

    ref = ToyModel(dropout=0.0)
    opt = optim.build_optimizer(ref.named_parameters(), cfg.optim)
    batches = iter(ToyLoader(shuffle="seeded"))
    for step in range(5):
        optim.set_lr(opt, cfg.optim.lr, optim.lr_factor(step, 5, cfg.optim))
        losses = ToyRecipe().losses(ref, next(batches), step, None)
        opt.zero_grad()
        (1.0 * losses["mse"] + 1.0 * losses["nce"]).backward()
        opt.step()
    for (name, p), q in zip(trainer.model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)  # same ops in the same order: exact


def test_nonfinite_step_is_skipped_and_logged(tmp_path):
    trainer = make_trainer(tmp_path / "run", recipe=ToyRecipe(nan_at=(2,)), steps=4, log_every=1)
    before = {}

    orig = trainer.train_step

    def spy(batch, step, phase, **kw):
        if step == 2:
            before.update({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        result = orig(batch, step, phase, **kw)
        if step == 2:
            assert not result.applied and result.nonfinite[:1] == ["grad_norm"] and "mse" in result.nonfinite
            for n, p in trainer.model.named_parameters():
                assert torch.equal(p, before[n]), n  # the optimizer step was skipped
        return result

    trainer.train_step = spy
    summary = trainer.fit()
    assert summary["skipped_steps"] == 1
    rows = read_jsonl(tmp_path / "run" / "logs" / "metrics.jsonl")
    skips = [r for r in rows if r["kind"] == "skip"]
    assert [(r["step"], r["losses"]["mse"]) for r in skips] == [(3, None)]
    assert all(math.isfinite(p.sum().item()) for p in trainer.model.parameters())


def test_nonfinite_guard_aborts_after_n(tmp_path):
    trainer = make_trainer(tmp_path / "run", recipe=ToyRecipe(nan_at=(1, 2, 3)), steps=6, max_nonfinite=3)
    with pytest.raises(TrainingDiverged, match=r"3 consecutive steps with non-finite grad_norm, mse \(step 4\)"):
        trainer.fit()


# ----------------------------------------------------------------------------- logs


def test_metrics_jsonl_rows_follow_the_schema(tmp_path):
    trainer = make_trainer(tmp_path / "run", steps=6, log_every=2, eval_every=3, grad_stats_every=4)
    summary = trainer.fit()
    rows = read_jsonl(tmp_path / "run" / "logs" / "metrics.jsonl")
    for row in rows:
        assert schema_errors(row, "metrics-log") == []
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert all(r["window"] == 2 and set(r["losses"]) == {"mse", "nce"} for r in train)
    # loss = Σ w_i · mean loss_i with fixed weights 1
    assert all(r["loss"] == pytest.approx(r["losses"]["mse"] + r["losses"]["nce"], rel=1e-12) for r in train)
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [3, 6]
    assert summary["eval"]["batches"] == 2.0 and summary["steps"] == 6
    grads = read_jsonl(tmp_path / "run" / "logs" / "gradients.jsonl")
    assert [g["step"] for g in grads] == [4, 6] and set(grads[0]["grad_norms"]) == {"mse", "nce"}
    assert all(g["cosines"][0]["a"] == "mse" and -1 <= g["cosines"][0]["cos"] <= 1 for g in grads)


def test_missing_steps_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="number of training steps"):
        Trainer(ToyModel(), ToyRecipe(), ToyLoader(), config=TrainConfig(device="cpu"), out_dir=tmp_path / "x")


def test_empty_loader_is_bad_input(tmp_path):
    trainer = make_trainer(tmp_path / "run", loader=ToyLoader(n=4, batch=8))
    with pytest.raises(BadInput, match="yields no batch"):
        trainer.fit()
