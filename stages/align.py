"""Stage II of ch07: tri-modal alignment of vision, language and action (§7.5–7.9, ch05 §5.2–5.8).

    vla align --schedule examples/sched.json --data data/aligned \
              --init ckpt/vision --init ckpt/language --init ckpt/action --out ckpt/align

The three stage-I encoders are merged into one model (`--init`, by module prefix) and trained
together under a curriculum schedule (§7.5, `stages.training.schedule`): each phase sets the
modality mix, the loss weights (annealed, §7.8), the InfoNCE temperature, freeze/unfreeze globs,
the LR multiplier, the difficulty range, the combiner (fixed / uncertainty / GradNorm / PCGrad,
ch05 §5.10, floors for the prior losses) and optional exit conditions. Per step:

1. **Token buckets decide the batch** (§7.6, `stages.alignment.bucket_loader`): every sample is
   drawn from a cluster k with p_k ∝ max(0, B_k − u_k)^γ · q_k(difficulty, t); the cluster's
   modality decides which objectives the sample serves (its *routing*), its task and difficulty
   which rows it comes from; the probe bucket (no modality) serves full (v, l, a) triples of the
   constraint episodes. Tokens leak back at r_k per step.
2. **Intra-modal terms** through the stage-I recipes (§7.2–7.4): `vision_nce` (augmented views and
   near frames, ½ each), `mvm`, `tc` on the V-routed samples; `lang_nce` (paraphrases, constraint hard
   negatives) on the L-routed instructions; `bc`, `spectral`, `dynamics` (masked chunk modelling
   with the control priors) on the A-routed samples.
3. **Cross-modal terms** (ch05 §5.2–5.6, §7.7, §7.9) on z_V, z_L, z_A:
   - `vl`, `la`, `va`: bidirectional InfoNCE (local rows against the rows gathered from every rank).
     For V↔L and L↔A two samples whose instructions have the same *identity* (the same command:
     task family + constraint clause, in any wording or language, `stages.data.instructions`) are
     both correct pairings — soft multi-positive targets; for V↔A adjacent frames of one episode are
     half positives (`near_weight`, the §7.2 rule of thumb).
   - `cycle`: ‖g_LA(g_VL(v)) − g_VA(v)‖₁ (§7.7) plus the bridges the heads must learn for the loop to
     mean something, g_VL(v) ≈ l, g_LA(l) ≈ a, g_VA(v) ≈ a (mean of the three), scale-free L1 on unit z.
   - `coherence`: 1 − γ_VA averaged over a band (ch05 §5.4): the coherence between the action chunk
     the model reads from the scene (the policy's mean given V, L and the proprio state) and the
     demonstrated chunk, per action dimension, at the dataset's frame rate.
   - `distill`: KL(teacher ‖ student) of the Gaussian chunk policy, the teacher an EMA of the model
     (§7.9 动量教师; the phase's `ema_decay` overrides the decay).
   - `decollapse`: variance/covariance regulariser on each modality's unit z scaled by √Z (§7.9).
   - `sft`: Gaussian NLL of the demonstrated chunk (§7.5.1 D).
   Modality dropout (§7.9) follows the phase's `modality_dropout` in the fusion; the phase's
   `noise` adds Gaussian noise to the pixels and proprio state of the cross-modal inputs (§7.5.1 D
   noise annealing). `vla.weight` (0 = masked segment, §7.9 negative-transfer guard) weighs every
   term; invalid chunk steps never count.
4. The engine combines, clips and steps (`stages.training.loop`); held-out retrieval every
   `eval_every` steps (`stages.alignment.retrieval`); buckets to logs/buckets.jsonl every
   `buckets.log_every` steps; gradient norms, cosines and PCGrad hits to logs/gradients.jsonl.

Scale-out: under torchrun every rank draws the same global batch and keeps its slice; a term's
local weighted mean is multiplied by W·Σ_local w / Σ_global w (one all-reduce of the weight sums per
step), so the mean over ranks is the weighted mean over the global batch: for the cross-modal terms
2 ranks train what 1 rank trains (tests/test_align_ddp.py); the stage-I terms draw their
augmentations and masks from each rank's own RNG stream, so they match in distribution only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stages.alignment import clusters, retrieval
from stages.alignment import cross_modal as xm
from stages.alignment.bucket_loader import BucketLoader
from stages.alignment.terms import TERMS, check_terms
from stages.data.augment import ViewAugmentConfig, augment_views
from stages.errors import BadInput
from stages.objectives import bc_nll, distillation_kl, mvm
from stages.pretraining import inverse_temperature
from stages.pretraining.action import ActionPretrainConfig, ActionRecipe, dynamics_limits
from stages.pretraining.language import InstructionPool, LanguagePretrainConfig, LanguageRecipe
from stages.pretraining.vision import VisionPretrainConfig, VisionRecipe
from stages.progress import NullReporter, Reporter
from stages.training import parallel
from stages.training.buckets import TokenBuckets
from stages.training.ema import EMA
from stages.training.loop import CheckpointConfig, TrainConfig, Trainer
from stages.training.optim import OptimConfig
from stages.training.schedule import Schedule, check_globs, load_schedule
from stages.training.setup import SetupConfig, TrainingSetup, check_preset, check_run_directory, prepare, run_directory

log = logging.getLogger("vla")

STAGE = "align"
POLICY_TERMS = ("coherence", "distill", "sft")


@dataclass
class AlignRecipeConfig:
    near_radius: int = 3            # frames: same-episode samples this close are near frames (V↔A soft targets)
    near_weight: float = 0.5        # soft target of a near frame (ch07 §7.2: half negatives)
    augment: bool = True            # view augmentation of the frames the cross-modal terms see
    ema_decay: float = 0.99         # EMA teacher decay when the phase sets none
    probe_rows: str = "constraint"  # rows of a bucket without a modality: constraint | all
    coherence_nperseg: int | None = None  # Welch segment of γ_VA; None: half the chunk
    retrieval: retrieval.RetrievalConfig = field(default_factory=retrieval.RetrievalConfig)
    view_augment: ViewAugmentConfig = field(default_factory=ViewAugmentConfig)


@dataclass
class Encoded:
    """What the cross-modal terms of one step share (each [b, ...] on this rank)."""

    v: object = None                # VisionOut
    l: object = None                # LanguageOut
    a: object = None                # ActionOut
    policy: tuple | None = None     # (mean, log_std) [b, H, Da]
    teacher: tuple | None = None
    action: torch.Tensor | None = None  # [b, H, Da] demonstrated chunk, invalid steps zeroed
    valid: torch.Tensor | None = None   # [b, H]
    state: torch.Tensor | None = None   # [b, Ds]


class AlignRecipe:
    """The engine's recipe protocol (`stages.training.loop`) for stage II."""

    def __init__(self, cfg: AlignRecipeConfig, *, terms: dict[str, dict], schedule, buckets: BucketLoader,
                 vision: VisionRecipe, language: LanguageRecipe, action: ActionRecipe, ema: EMA,
                 identity: np.ndarray, fps: float, heldout: retrieval.HeldoutSet, heldout_loader):
        self.cfg, self.terms, self.schedule, self.buckets = cfg, terms, schedule, buckets
        self.vision, self.language, self.action, self.ema = vision, language, action, ema
        self.identity = torch.from_numpy(identity)  # [num_episodes] int64 instruction-identity id
        self.fps, self.heldout, self.heldout_loader = float(fps), heldout, heldout_loader
        self.default_dropout: float | None = None

    # ------------------------------------------------------------------ state (trainer_state.json `recipe`)

    def state_dict(self) -> dict:
        return {"stage": STAGE, "action_limits": self.action.limits, "probe_rows": self.cfg.probe_rows,
                "terms": {k: _jsonable(v) for k, v in self.terms.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("stage") != STAGE:
            raise BadInput(f"cannot resume: the run's recipe is `{state.get('stage')}`, not `{STAGE}`")
        self.action.load_state_dict({"limits": state["action_limits"]})  # resume with the saved limits

    def batch_size(self, batch: dict) -> int:
        return int(batch["action"].shape[0])

    def log_rows(self, step: int) -> dict[str, list[dict]]:
        """A row of logs/buckets.jsonl every `buckets.log_every` steps (ch07 §7.6)."""
        if step % self.schedule.buckets.log_every:
            return {}
        return {"buckets": [self.buckets.buckets.log_row(step)]}

    # ------------------------------------------------------------------ one step

    def losses(self, model, batch: dict, step: int, phase) -> dict[str, torch.Tensor]:
        active = [n for n in self.terms if max(phase.loss_weights.get(n, 0.0), phase.min_weights.get(n, 0.0)) > 0.0]
        routes = self._routes(batch, active)  # term -> [b] sample weights
        shares = self._global_shares(routes)  # term -> W·Σ_local w / Σ_global w (1 in one process)
        self._set_modality_dropout(model, phase)
        out = {}
        out.update(self._intra_modal(model, batch, step, phase, active, routes))
        out.update(self._cross_modal(model, batch, phase, active, routes))
        return {n: out[n] * shares[n] for n in active}

    def _routes(self, batch: dict, active: list[str]) -> dict[str, torch.Tensor]:
        """w_i · [sample i serves the term] (token-bucket routing × `vla.weight`), and for the chunk
        terms whether the sample has a chunk to score (γ_VA needs the whole chunk)."""
        serves, weight, valid = batch["serves"], batch["weight"].float(), batch["action_valid"]  # [b, 3], [b], [b, H]
        scored = {"coherence": valid.all(dim=1), "sft": valid.any(dim=1), "distill": valid.any(dim=1)}
        routes = {}
        for n in active:
            w = weight * serves[:, list(TERMS.get(n).serves)].any(dim=1).to(weight.dtype)
            routes[n] = w * scored[n].to(w.dtype) if n in scored else w
        return routes

    def _global_shares(self, routes: dict[str, torch.Tensor]) -> dict[str, float]:
        world = parallel.world_size()
        if world == 1 or not routes:
            return dict.fromkeys(routes, 1.0)
        local = torch.stack([w.sum().double() for w in routes.values()]).cpu()  # [T]
        total = parallel.all_reduce_mean_(local.clone()) * world
        shares = {n: float(world * s / t) if t > 0 else 0.0 for n, s, t in zip(routes, local.tolist(), total.tolist())}
        shares["decollapse"] = 1.0  # computed on the gathered batch: the same global value on every rank
        return shares

    def _set_modality_dropout(self, model, phase) -> None:
        """ch07 §7.9 modality dropout: the phase's curve, else the model's configured rate."""
        if self.default_dropout is None:
            self.default_dropout = float(model.fusion.p_drop)
        value = getattr(phase.raw, "modality_dropout", None) if phase.raw is not None else None
        model.fusion.p_drop = self.default_dropout if value is None else float(value)

    # ------------------------------------------------------------------ §7.2–7.4 intra-modal terms

    def _intra_modal(self, model, batch: dict, step: int, phase, active: list[str], routes: dict) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if "vision_nce" in active or "tc" in active:
            weight = routes.get("vision_nce", routes.get("tc"))
            got = self.vision.losses(model, {**batch, "weight": weight}, step, phase)
            out.update(vision_nce=0.5 * (got["view_nce"] + got["near_nce"]), tc=got["temporal"], mvm=got["mvm"])
        elif "mvm" in active:
            res = model.mvm(batch["frames"], mask_ratio=self.vision.cfg.mask_ratio)
            scored = torch.ones(res.pred.shape[:2], dtype=torch.bool, device=res.pred.device)
            out["mvm"] = mvm(res.pred, res.target, scored, kind=self.vision.cfg.mvm_kind, weight=routes["mvm"])
        if "lang_nce" in active:
            keep = (routes["lang_nce"] > 0).tolist()
            texts = [t for t, k in zip(batch["instruction"], keep) if k]
            out["lang_nce"] = (self.language.losses(model, {"instruction": texts}, step, phase)["paraphrase_nce"] if texts
                               else model.logit_scale.sum() * 0.0)
        if any(n in active for n in ("bc", "spectral", "dynamics")):
            weight = next(routes[n] for n in ("bc", "spectral", "dynamics") if n in active)
            out.update(self.action.losses(model, {**batch, "weight": weight}, step, phase))
        return out

    # ------------------------------------------------------------------ ch05 §5.2–5.6, ch07 §7.7–7.9 cross-modal terms

    def _encode(self, model, batch: dict, phase, active: list[str]) -> Encoded:
        need_v = any(n in active for n in ("vl", "va", "cycle", "decollapse", *POLICY_TERMS))
        need_l = any(n in active for n in ("vl", "la", "cycle", "decollapse", *POLICY_TERMS))
        need_a = any(n in active for n in ("la", "va", "cycle", "decollapse"))
        noise = getattr(phase.raw, "noise", None) if phase.raw is not None else None
        enc = Encoded()
        enc.valid = batch["action_valid"]
        enc.action = torch.nan_to_num(batch["action"].float()).masked_fill(~enc.valid[..., None], 0.0)
        enc.state = torch.nan_to_num(batch["state"].float())
        frames = batch["frames"]
        if self.cfg.augment:
            frames = augment_views(frames, self.cfg.view_augment)  # float [b, T, 3, H, W] in [0, 1]
        if noise:  # ch07 §7.5.1 D noise annealing on the cross-modal inputs
            frames = frames.float() / (255.0 if frames.dtype == torch.uint8 else 1.0)
            frames = (frames + noise * torch.randn_like(frames)).clamp(0.0, 1.0)
            enc.state = enc.state + noise * torch.randn_like(enc.state)
        if need_v:
            enc.v = model.encode_vision(frames)
        if need_l:
            enc.l = model.encode_language(batch["instruction"])
        if need_a:
            enc.a = model.encode_action(enc.action, enc.state, enc.valid)
        if any(n in active for n in POLICY_TERMS):
            enc.policy = model.policy(model.fuse(enc.v, enc.l), enc.state)
        if "distill" in active:
            teacher = self.ema.module
            with torch.no_grad():
                enc.teacher = teacher.policy(teacher.fuse(teacher.encode_vision(frames), teacher.encode_language(batch["instruction"])),
                                             enc.state)
        return enc

    def _cross_modal(self, model, batch: dict, phase, active: list[str], routes: dict) -> dict[str, torch.Tensor]:
        if not any(TERMS.get(n).family == "align" for n in active):
            return {}
        enc = self._encode(model, batch, phase, active)
        scale = inverse_temperature(model, phase)  # 1/τ: the phase's temperature, else the learnt logit scale
        cfg, out = self.cfg, {}
        same_command = xm.same_command_targets(self.identity, batch["episode_index"])
        near = xm.near_frame_targets(batch["episode_index"], batch["frame_index"], radius=cfg.near_radius, weight=cfg.near_weight)
        for name, a, b, targets in (("vl", "v", "l", same_command), ("la", "l", "a", same_command), ("va", "v", "a", near)):
            if name in active:
                out[name] = xm.contrast(getattr(enc, a).z, getattr(enc, b).z, scale, routes[name], targets)
        if "cycle" in active:
            out["cycle"] = xm.cycle_consistency(model.heads, enc.v.z, enc.l.z, enc.a.z, routes["cycle"], **self.terms["cycle"])
        if "decollapse" in active:
            out["decollapse"] = xm.decollapse_all([enc.v.z, enc.l.z, enc.a.z], routes["decollapse"], **self.terms["decollapse"])
        mean, log_std = enc.policy if enc.policy is not None else (None, None)
        if "coherence" in active:
            params = {"fs": self.fps, "nperseg": cfg.coherence_nperseg or enc.action.shape[1] // 2, **self.terms["coherence"]}
            out["coherence"] = xm.va_coherence(mean, enc.action, enc.valid, routes["coherence"], **params)
        if "distill" in active:
            t_mean, t_log_std = enc.teacher
            out["distill"] = distillation_kl(mean, log_std, t_mean, t_log_std, valid=enc.valid, weight=routes["distill"],
                                             **self.terms["distill"])
        if "sft" in active:
            out["sft"] = bc_nll(mean, log_std, enc.action, valid=enc.valid, weight=routes["sft"], **self.terms["sft"])
        return out

    # ------------------------------------------------------------------ held-out evaluation (rank 0)

    @torch.no_grad()
    def evaluate(self, model, loader, step: int) -> dict[str, float]:
        device = model.logit_scale.device
        z = retrieval.embed(model, self.heldout_loader, self.heldout, self.cfg.retrieval, device)
        phase = self.schedule.at(min(step, self.schedule.total_steps - 1))
        scale = phase.logit_scale if phase.logit_scale is not None else float(model.clamped_logit_scale().exp())
        out = retrieval.report(z, self.heldout, scale)
        out["logit_scale"] = float(scale)
        return out


def _jsonable(params: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}



# ============================================================================= the stage


@dataclass(frozen=True)
class RunDefaults:
    batch_size: int
    lr: float


# Per preset: the global batch and peak LR (the schedule's phases multiply the LR by `lr_mult`).
DEFAULTS = {"tiny": RunDefaults(32, 5e-4), "small": RunDefaults(256, 3e-4), "base": RunDefaults(512, 2e-4)}
TEXT_ENCODERS = ("bytes", "minilm")


@dataclass
class AlignConfig:
    schedule: Path                                  # schedule JSON (schema `schedule`, with `buckets`)
    data: Path                                      # aligned LeRobot dataset
    out: Path                                       # checkpoint directory
    init: list[Path] = field(default_factory=list)  # stage-I checkpoints, merged by module prefix
    preset: str = "tiny"
    steps: int | None = None                        # None: the schedule's total_steps
    batch_size: int | None = None                   # global batch (all ranks); None: DEFAULTS
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    text_encoder: str | None = None                 # language backbone (must match the language --init)
    resume: bool = False
    overwrite: bool = False
    eval_every: int | None = None                   # None: about 8 held-out evaluations per run
    checkpoint_every: int | None = None             # None: about 4 snapshots per run
    log_every: int = 10
    grad_stats_every: int = 20                      # logs/gradients.jsonl cadence
    warmup_fraction: float = 0.05
    recipe: AlignRecipeConfig = field(default_factory=AlignRecipeConfig)


def align(cfg: AlignConfig, *, reporter: Reporter | None = None) -> dict:
    """Validate every input, build, train, save; returns the run summary (schema `align-summary`)."""
    reporter = reporter or NullReporter()
    schedule, terms = read_schedule(cfg.schedule)
    check_preset(cfg.preset)
    defaults = DEFAULTS.get(cfg.preset, DEFAULTS["tiny"])
    batch_size, lr = cfg.batch_size or defaults.batch_size, cfg.lr or defaults.lr
    if not lr > 0 or batch_size < 1:
        raise BadInput(f"--batch-size {batch_size} and --lr {lr} must be positive")
    if cfg.text_encoder is not None and cfg.text_encoder not in TEXT_ENCODERS:
        raise BadInput(f"unknown text encoder `{cfg.text_encoder}`", caused_by=f"known: {', '.join(TEXT_ENCODERS)}")
    check_run_directory(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    if not cfg.init and not cfg.resume:
        log.warning("no --init checkpoint: aligning encoders that start from random weights")
    overrides = {"language.encoder": cfg.text_encoder} if cfg.text_encoder else {}
    setup = prepare(SetupConfig(data=cfg.data, preset=cfg.preset, model_overrides=overrides, init=list(cfg.init), seed=cfg.seed,
                                device=cfg.device, needs=(("image", None), ("vector", "action"), ("vector", "observation.state"),
                                                          ("text", None))), batch_size=batch_size, reporter=reporter)
    check_globs(schedule, [n for n, _ in setup.model.named_parameters()])  # a glob matching nothing: a warning now, not at its phase
    recipe, loader = build_recipe(cfg.recipe, schedule, terms, setup, seed=cfg.seed, batch_size=batch_size)
    steps = cfg.steps or schedule.total_steps
    every = max(1, steps // 4)
    train_cfg = TrainConfig(
        steps=cfg.steps, seed=cfg.seed, device=setup.device, precision=setup.precision, resume=cfg.resume,
        log_every=cfg.log_every, grad_stats_every=cfg.grad_stats_every,
        eval_every=cfg.eval_every if cfg.eval_every is not None else max(1, steps // 8),
        optim=OptimConfig(lr=lr, warmup_steps=int(cfg.warmup_fraction * steps)),
        checkpoint=CheckpointConfig(every=cfg.checkpoint_every if cfg.checkpoint_every is not None else every))
    started = time.perf_counter()
    with run_directory(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite, is_main=setup.dist.is_main) as run_dir:
        result = Trainer(setup.model, recipe, loader, config=train_cfg, out_dir=run_dir, reporter=reporter, schedule=schedule,
                         eval_loader=setup.eval_loader, ema=recipe.ema).fit()
    return summarize(cfg, setup, schedule, loader, result, batch_size=batch_size, lr=lr, wall_s=time.perf_counter() - started)


def read_schedule(path: Path) -> tuple[Schedule, dict[str, dict]]:
    """The schedule and its terms' params, checked against what this recipe computes (exit 2 naming the field)."""
    schedule = load_schedule(path)
    if schedule.buckets is None:
        raise BadInput(f"`{path}`: field `buckets` is missing", caused_by="vla align samples every batch through token buckets (ch07 §7.6)")
    return schedule, check_terms(schedule)


def build_recipe(cfg: AlignRecipeConfig, schedule: Schedule, terms: dict[str, dict], setup: TrainingSetup, *, seed: int,
                 batch_size: int) -> tuple[AlignRecipe, BucketLoader]:
    """Token-bucket loader, stage-I recipes configured from the schedule's terms, EMA teacher, held-out set."""
    train, dist = setup.train_loader, setup.dist
    table = clusters.sample_table(train)
    members = clusters.cluster_members(schedule.buckets, table, probe_rows=cfg.probe_rows, source=schedule.source)
    buckets = TokenBuckets(schedule.buckets, schedule)
    buckets.switch_off([c.name for c, m in zip(schedule.buckets.clusters, members) if len(m) == 0])
    loader = BucketLoader(train, buckets, members, clusters.serves(schedule.buckets), seed=seed, batch_size=batch_size,
                          rank=dist.rank, world_size=dist.world_size)
    counts = ", ".join(f"{c.name} {len(m)}" for c, m in zip(schedule.buckets.clusters, members))
    log.info("token buckets over %d training samples: %s", len(table.rows), counts)
    bc = schedule.terms["bc"] if "bc" in schedule.terms else None
    action_cfg = ActionPretrainConfig(
        bc="quantile" if bc is not None and bc.loss == "bc_quantile" else "huber",
        huber_delta=float(terms.get("bc", {}).get("delta", 1.0)), quantile=float(terms.get("bc", {}).get("quantiles", 0.5)),
        spectral_alpha=float(terms.get("spectral", {}).get("alpha", 1.0)))
    action = ActionRecipe(action_cfg, dynamics_limits(train, signal=action_cfg.signal, quantile=action_cfg.limit_quantile))
    vision = VisionRecipe(VisionPretrainConfig(mvm_kind=str(terms.get("mvm", {}).get("kind", "l1"))))
    language = LanguageRecipe(LanguagePretrainConfig(), InstructionPool(setup.dataset, train.cfg.heldout_fraction))
    fps = float(setup.dataset.fps)
    if "coherence" in terms:
        check_coherence(schedule, terms["coherence"], fps=fps, horizon=train.cfg.chunk, nperseg=cfg.coherence_nperseg)
    held = retrieval.heldout_set(setup.eval_loader, cfg.retrieval) if setup.eval_loader is not None else None
    recipe = AlignRecipe(cfg, terms=terms, schedule=schedule, buckets=loader, vision=vision, language=language, action=action,
                         ema=EMA(setup.model, cfg.ema_decay), identity=xm.episode_identities(setup.dataset), fps=fps,
                         heldout=held, heldout_loader=setup.eval_loader)
    return recipe, loader


def check_coherence(schedule: Schedule, params: dict, *, fps: float, horizon: int, nperseg: int | None) -> None:
    """γ_VA needs ≥ 2 Welch segments of the chunk and a band holding a frequency bin: try it on zeros."""
    full = {"fs": fps, "nperseg": nperseg or horizon // 2, **params}
    try:
        xm.va_coherence(torch.zeros(1, horizon, 1), torch.zeros(1, horizon, 1), torch.ones(1, horizon, dtype=torch.bool),
                        torch.ones(1), **full)
    except ValueError as exc:
        where = "losses.coherence.params" if "coherence" in schedule.raw.get("losses", {}) else "coherence"
        raise BadInput(f"`{schedule.source}`: field `{where}` is invalid",
                       caused_by=f"{exc} ({horizon}-step chunks at {fps:g} Hz)") from None


def summarize(cfg: AlignConfig, setup: TrainingSetup, schedule: Schedule, loader: BucketLoader, result: dict, *, batch_size: int,
              lr: float, wall_s: float) -> dict:
    from stages.artifacts import validate
    from stages.data.loader import split_episodes
    from stages.training.metrics import scalar

    evals = result.get("eval") or {}
    table = {d: {"r1": evals.get(f"{d}_r1"), "r5": evals.get(f"{d}_r5"), "r10": evals.get(f"{d}_r10"),
                 "mrr": evals.get(f"{d}_mrr"), "chance_r1": evals.get(f"{d}_chance_r1")}
             for d in retrieval.DIRECTIONS if f"{d}_r1" in evals}
    for row in table.values():
        row["r1_over_chance"] = row["r1"] / row["chance_r1"] if row["r1"] is not None and row["chance_r1"] else None
    splits = split_episodes(setup.dataset, setup.train_loader.cfg.heldout_fraction)
    buckets = loader.buckets
    p = buckets.probabilities(buckets.step).tolist()
    summary = {
        "schema_version": 1, "out": str(cfg.out), "data": str(cfg.data), "schedule": str(cfg.schedule),
        "schedule_name": schedule.name, "preset": cfg.preset, "text_encoder": setup.model.config.language.encoder,
        "steps": int(result["steps"]), "resumed_from": result.get("resumed_from"), "batch_size": batch_size, "lr": lr,
        "seed": cfg.seed, "device": setup.device, "precision": setup.precision, "world_size": setup.dist.world_size,
        "episodes": {"train": int(len(splits["train"])), "heldout": int(len(splits["heldout"]))},
        "init": dict(sorted(setup.init_from.items())),
        "phases": [{"name": ph.name, "start": ph.start, "end": ph.end, "ended_early_at": schedule.exits.get(ph.name)}
                   for ph in schedule.phases],
        "losses": scalar(result.get("losses") or {}), "eval": scalar(evals), "retrieval": scalar(table),
        "buckets": [{"name": n, "consumed_total": c, "p": q} for n, c, q in zip(buckets.names, buckets.consumed_total.tolist(), p)],
        "train_seconds": float(result.get("seconds", 0.0)), "wall_seconds": round(wall_s, 3),
    }
    validate(summary, "align-summary", source="align summary")
    return summary
