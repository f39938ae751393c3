"""Stage D of ch07 §7.5: instruction fine-tuning of the action policy, plus stabilisation (`vla finetune`).

    vla finetune --init ckpt/align --data data/aligned --out ckpt/sft [--lora] [--eval-episodes 10]

Starting from the aligned model (`--init`, recognised by `check_aligned`), the Gaussian action-chunk
policy π_θ(a_{t:t+H} | frames, instruction, state) is trained on the demonstrations with small steps:

    L = Σ_i w̃_i · BC_NLL_i  +  β · Σ_i w_i · KL(π_θ(·|x_i) ‖ π_align(·|x_i)) / Σ_i w_i       (ch07 §7.5.1 D, §7.9)

- BC_NLL: Gaussian negative log-likelihood of the demonstrated chunk (`objectives.bc_nll`).
- w_i is the dataset's `vla.weight`; w̃_i = w_i · c_i with c_i = `constraint_weight` (default 3) for
  samples of an episode whose instruction carries a constraint phrase (speed limit, boundary,
  negation, distance: meta `constraints` written by `vla clean`, else parsed from the instruction),
  1 otherwise. ch07 gotcha 7: the constraint phrase must not be drowned by the wording; the recorded
  actions of those episodes are the QP-projected expert (ch07 §7.9), so upweighting them teaches the
  policy the projected behaviour. With the demo's 25 % constraint episodes, ×3 gives them half of
  the BC mass.
- KL(student ‖ frozen `--init` policy), summed over action dims, averaged over valid chunk steps
  (`objectives.distillation_kl(direction="student_teacher")`): the behaviour regulariser the RL stage
  after this one uses (KL to the reference policy). β = `kl_weight` (default 0.1). It uses the
  plain `vla.weight`, so the constraint episodes are pulled less towards the unconstrained prior.
- Noise annealing: Gaussian noise on the inputs (pixels in [0, 1]: σ_pixel, normalised state:
  σ_state) and on the BC targets (normalised actions: σ_action), each σ(s) = σ₀ · (1 − s/S), linear
  to 0 at the last step S.
- EMA: θ_ema ← d_s θ_ema + (1 − d_s) θ after every step, d_s = min(ema_decay, (1 + s)/(10 + s))
  (warm start, so a short run's average is not the initial weights). The stage delivers the EMA
  weights: the top-level `model.safetensors` holds them, the training weights stay in the final
  snapshot `checkpoints/step-N/` (what `--resume` continues from).
- Alignment retention (ch07 §7.5.1 D keeps the cross-modal terms on during SFT: V↔L 0.5, L↔A 0.5,
  V↔A 0.25): λ·(InfoNCE_VL + InfoNCE_LA) + λ/2·InfoNCE_VA with the same soft targets as `vla align`
  (same command for V↔L and L↔A, near frames as half positives for V↔A), λ = `align_weight`
  (default 0.5; 0 = policy losses only). Without them the policy loss alone moves the shared
  encoders and projections freely: on the demo, held-out V→L R@1 fell from 0.69 (aligned) to 0.09
  after 300 steps, and the probe's retrieval-based checks with it.
- `--lora`: every trainable `nn.Linear` of the vision and language backbones gets a rank-r LoRA
  update (B = 0 at start), the rest of both backbones is frozen; fusion and heads train fully.
  The deliverable has the updates merged (W ← W + (α/r)·B·A), so it loads as a plain model.

After training, rank 0 drives Meta-World with the delivered policy (`stages.sim.closed_loop`):
`closed_loop.json` in the checkpoint and an `eval` row in logs/metrics.jsonl.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stages.alignment import cross_modal as xm
from stages.alignment import retrieval
from stages.artifacts import read_json
from stages.cleaning.constraints import find_constraints
from stages.data.lerobot import LeRobotDataset
from stages.errors import BadInput
from stages.model.lora import LoRALinear
from stages.objectives import bc_nll, distillation_kl
from stages.pretraining import heldout_batches, inverse_temperature
from stages.training import checkpoint

log = logging.getLogger("vla")

STATE_KEY, ACTION_KEY = "observation.state", "action"
STAGE = "finetune"
ALIGN_STAGE = "align"
POLICY_MODULES = ("vision", "language", "action", "fusion", "heads")  # an aligned checkpoint provides them all
LORA_PREFIXES = ("vision.", "language.")
NEAR_RADIUS, NEAR_WEIGHT = 3, 0.5  # V↔A soft targets, as `vla align` (AlignRecipeConfig.near_radius/near_weight)
RETRIEVAL_KEYS = ("v2l_r1", "l2v_r1", "l2a_r1", "a2l_r1", "v2a_r1", "v2l_chance_r1")  # held-out metrics kept per eval


@dataclass
class FinetuneConfig:
    steps: int = 300
    lr: float = 1e-4  # small steps: a third of the engine's default pretraining LR
    batch_size: int = 32
    weight_decay: float = 0.01
    kl_weight: float = 0.1  # β of KL(π_θ ‖ π_init)
    align_weight: float = 0.5  # λ of the alignment-retention InfoNCE terms (V↔L, L↔A; V↔A at λ/2); 0 = off
    constraint_weight: float = 3.0  # BC weight multiplier of constraint episodes (ch07 gotcha 7)
    ema_decay: float = 0.99  # 0 disables the EMA (the live weights are delivered)
    pixel_noise: float = 0.02  # σ₀ on pixels in [0, 1]
    state_noise: float = 0.1  # σ₀ on the normalised state
    action_noise: float = 0.05  # σ₀ on the normalised BC targets
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    eval_max_samples: int = 512  # held-out samples of the offline evaluation

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise BadInput(f"`--steps` {self.steps} and `--batch-size` {self.batch_size} must be ≥ 1")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise BadInput(f"`--lr` is {self.lr}", caused_by="expected a positive number")
        if self.kl_weight < 0 or self.align_weight < 0 or self.constraint_weight <= 0:
            raise BadInput("`--kl-weight` and `--align-weight` must be ≥ 0 and `--constraint-weight` > 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise BadInput(f"`--ema-decay` is {self.ema_decay}", caused_by="expected a number in [0, 1)")
        if min(self.pixel_noise, self.state_noise, self.action_noise) < 0 or self.lora_rank < 1:
            raise BadInput("noise levels must be ≥ 0 and the LoRA rank ≥ 1")


# ----------------------------------------------------------------------------- the --init checkpoint


def check_aligned(ckpt: Path) -> dict:
    """Refuse an `--init` that is not an aligned checkpoint; returns its trainer_state.json.

    An aligned checkpoint is one written by a training run (trainer_state.json present) whose
    weights provide every module of the policy (vision, language, action, fusion, heads — a stage-I
    checkpoint provides only its encoder), and whose recipe, when it records a stage, says `align`;
    a recipe that records none must have run under a schedule (`vla align` always does).
    """
    ckpt = Path(ckpt)
    checkpoint.check_files(ckpt, checkpoint.INIT_FILES)
    hint = "vla align --schedule examples/sched.json --data D --init ckpt/vision --init ckpt/language --init ckpt/action --out ckpt/align"
    if not (ckpt / checkpoint.STATE).is_file():
        raise BadInput(f"`{ckpt}` is not an aligned checkpoint", caused_by=f"`{checkpoint.STATE}` is missing (no training run wrote it)", hint=hint)
    state = read_json(ckpt / checkpoint.STATE, schema="trainer-state")
    provides = set(checkpoint.load(ckpt, resume=False).provides or [])
    missing = [m for m in POLICY_MODULES if m not in provides]
    if missing:
        raise BadInput(f"`{ckpt}` is not an aligned checkpoint", hint=hint,
                       caused_by=f"it provides {', '.join(sorted(provides)) or 'nothing'}; the policy also needs {', '.join(missing)}")
    recipe = state.get("recipe")
    stage = recipe.get("stage") if isinstance(recipe, dict) else None
    if stage is not None and stage != ALIGN_STAGE:
        raise BadInput(f"`{ckpt}` is not an aligned checkpoint", caused_by=f"it was written by stage `{stage}`", hint=hint)
    if stage is None and state.get("schedule") is None:
        raise BadInput(f"`{ckpt}` is not an aligned checkpoint", hint=hint,
                       caused_by="its run recorded no stage and used no schedule (`vla align` always runs one)")
    return state


# ----------------------------------------------------------------------------- LoRA on the backbones


def inject_lora(model: nn.Module, rank: int, alpha: float, *, seed: int) -> list[str]:
    """Wrap every trainable `nn.Linear` (with bias) under vision./language. in a `LoRALinear`
    holding the same weights; freeze the rest of both backbones. Returns the wrapped module names."""
    wrapped = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # A's init does not depend on what ran before
        for name, module in list(model.named_modules()):
            if type(module) is not nn.Linear or module.bias is None or not name.startswith(LORA_PREFIXES):
                continue
            if not module.weight.requires_grad:
                continue  # an already frozen layer (e.g. a pretrained text backbone with its own LoRA)
            lora = LoRALinear(module.in_features, module.out_features, rank, alpha).to(module.weight.device, module.weight.dtype)
            with torch.no_grad():
                lora.weight.copy_(module.weight)
                lora.bias.copy_(module.bias)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, lora)
            wrapped.append(name)
    if not wrapped:
        raise BadInput("`--lora`: the vision and language backbones have no trainable linear layer to adapt")
    for name, p in model.named_parameters():
        if name.startswith(LORA_PREFIXES) and not name.endswith((".lora_a", ".lora_b")):
            p.requires_grad_(False)
    return wrapped


def merge_lora(weights: dict[str, torch.Tensor], modules: list[str], scale: float) -> dict[str, torch.Tensor]:
    """State dict with W ← W + scale · B·A for each wrapped module and the LoRA tensors removed."""
    out = dict(weights)
    for name in modules:
        a, b = out.pop(f"{name}.lora_a"), out.pop(f"{name}.lora_b")  # [r, in], [out, r]
        w = out[f"{name}.weight"]
        out[f"{name}.weight"] = (w.double() + scale * (b.double() @ a.double())).to(w.dtype)
    return out


# ----------------------------------------------------------------------------- weights and schedules


def constraint_flags(dataset: LeRobotDataset) -> np.ndarray:
    """bool [num_episodes]: the episode's instruction carries a constraint phrase."""
    flags = np.zeros(dataset.num_episodes, dtype=bool)
    tasks = dataset.episodes["task"].tolist()
    for i in range(dataset.num_episodes):
        meta = dataset.episode_meta(i)
        flags[i] = bool(meta["constraints"]) if "constraints" in meta else bool(find_constraints(str(tasks[i])))
    return flags


def annealed(sigma0: float, step: int, total: int) -> float:
    """σ(s) = σ₀ · (1 − s/S): linear to 0 at the last step."""
    return sigma0 * max(0.0, 1.0 - step / max(total - 1, 1))


def ema_decay_at(decay: float, step: int) -> float:
    """min(decay, (1 + s)/(10 + s)): a warm-started EMA (module doc)."""
    return min(decay, (1.0 + step) / (10.0 + step))


def policy_kl(mean, log_std, ref_mean, ref_log_std, *, valid=None, weight=None) -> torch.Tensor:
    """KL(π_θ ‖ π_ref) of diagonal Gaussian chunks [B, H, Da]: sum over Da, mean over valid steps,
    weighted mean over the batch (the RL stage's behaviour regulariser)."""
    return distillation_kl(mean, log_std, ref_mean, ref_log_std, direction="student_teacher", valid=valid, weight=weight)


class Renormalise:
    """Batch vectors from the dataset's normalisation to the model's (`norm_stats` in its config).

    x_model = x_data · (std_d / std_m) + (mean_d − mean_m) / std_m; the identity when the finetuning
    data is the data the model was aligned on."""

    def __init__(self, model_stats: dict, data_stats: dict):
        self.maps = {}
        for key in (STATE_KEY, ACTION_KEY):
            m, d = model_stats[key], data_stats[key]
            scale = np.asarray(d["std"], np.float64) / np.asarray(m["std"], np.float64)
            shift = (np.asarray(d["mean"], np.float64) - np.asarray(m["mean"], np.float64)) / np.asarray(m["std"], np.float64)
            if not (np.allclose(scale, 1.0, atol=1e-9) and np.allclose(shift, 0.0, atol=1e-9)):
                self.maps[key] = (torch.tensor(scale, dtype=torch.float32), torch.tensor(shift, dtype=torch.float32))

    def __call__(self, key: str, x: torch.Tensor) -> torch.Tensor:
        if key not in self.maps:
            return x
        scale, shift = (t.to(x.device) for t in self.maps[key])
        return x * scale + shift


def forward_policy(model, frames: torch.Tensor, instructions: list[str], state: torch.Tensor):
    """(mean, log_std) [B, H, Da] of the chunk policy on frames [B, T, 3, H, W] (uint8 or float in [0, 1])."""
    return model.policy(model.fuse(model.encode_vision(frames), model.encode_language(instructions)), state)


def retention_weights(align_weight: float) -> dict[str, float]:
    """Engine loss weights of the alignment-retention terms (ch07 §7.5.1 D ratios 0.5 : 0.5 : 0.25)."""
    return {"vl": align_weight, "la": align_weight, "va": align_weight / 2} if align_weight > 0 else {}


# ----------------------------------------------------------------------------- the recipe


class FinetuneRecipe:
    """The engine's recipe protocol (`stages.training.loop`): losses `bc`, `kl` and, with `align_weight`,
    the retention terms `vl`, `la`, `va`; held-out metrics."""

    def __init__(self, cfg: FinetuneConfig, *, reference: nn.Module, ema, constrained: np.ndarray,
                 episode_positions: dict[int, int], renorm: Renormalise, init: dict, lora_modules: list[str],
                 identity: np.ndarray):
        self.cfg, self.reference, self.ema, self.renorm = cfg, reference, ema, renorm
        self.init, self.lora_modules = init, lora_modules
        self.heldout: retrieval.HeldoutSet | None = None  # the retrieval samples, picked at the first evaluation
        lookup = np.zeros(max(episode_positions) + 1, dtype=np.float32)
        for index, pos in episode_positions.items():
            lookup[index] = cfg.constraint_weight if constrained[pos] else 1.0
        self.multiplier = torch.from_numpy(lookup)  # [max episode_index + 1]
        ids = np.full(len(lookup), -1, dtype=np.int64)
        for index, pos in episode_positions.items():
            ids[index] = identity[pos]
        self.identity = torch.from_numpy(ids)  # [max episode_index + 1] instruction-identity id (`xm.episode_identities`)

    # ------------------------------------------------------------------ state (trainer_state.json `recipe`)

    def state_dict(self) -> dict:
        cfg = self.cfg
        return {"stage": STAGE, "init": self.init, "kl_weight": cfg.kl_weight, "align_weight": cfg.align_weight,
                "constraint_weight": cfg.constraint_weight,
                "ema_decay": cfg.ema_decay, "noise": {"pixel": cfg.pixel_noise, "state": cfg.state_noise, "action": cfg.action_noise},
                "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "modules": self.lora_modules} if cfg.lora else None,
                "delivered": "ema" if self.ema is not None else "live"}

    def load_state_dict(self, state: dict) -> None:
        if state.get("stage") != STAGE:
            raise BadInput(f"cannot resume: the run's recipe is `{state.get('stage')}`, not `{STAGE}`")
        if state["init"]["config_digest"] != self.init["config_digest"]:
            raise BadInput(f"cannot resume: `--init {self.init['path']}` is not the checkpoint the run started from",
                           caused_by=f"the run started from `{state['init']['path']}`")

    # ------------------------------------------------------------------ training

    def inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(state [B, Ds], action [B, H, Da], valid [B, H], weight [B]) in the model's normalisation."""
        valid = batch["action_valid"]
        state = self.renorm(STATE_KEY, torch.nan_to_num(batch["state"].float()))
        action = self.renorm(ACTION_KEY, torch.nan_to_num(batch["action"].float())).masked_fill(~valid[..., None], 0.0)
        return state, action, valid, batch["weight"].float()

    def losses(self, model, batch: dict, step: int, phase) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        total = cfg.steps
        if self.ema is not None:
            self.ema.decay = ema_decay_at(cfg.ema_decay, step)  # read by the engine's update after this step
        state, action, valid, weight = self.inputs(batch)
        frames = batch["frames"].float() / 255.0  # [B, T, 3, H, W]
        sp, ss, sa = (annealed(s, step, total) for s in (cfg.pixel_noise, cfg.state_noise, cfg.action_noise))
        if sp > 0:
            frames = (frames + sp * torch.randn_like(frames)).clamp(0.0, 1.0)
        if ss > 0:
            state = state + ss * torch.randn_like(state)
        target = action + sa * torch.randn_like(action) if sa > 0 else action
        v, lang = model.encode_vision(frames), model.encode_language(batch["instruction"])
        mean, log_std = model.policy(model.fuse(v, lang), state)
        with torch.no_grad():
            ref_mean, ref_log_std = forward_policy(self.reference, frames, batch["instruction"], state)
        upweighted = weight * self.multiplier.to(weight.device)[batch["episode_index"]]
        out = {"bc": bc_nll(mean, log_std, target, valid=valid, weight=upweighted),
               "kl": policy_kl(mean, log_std, ref_mean, ref_log_std, valid=valid, weight=weight)}
        if cfg.align_weight > 0:
            out.update(self.retention(model, batch, v.z, lang.z, model.encode_action(action, state, valid).z, weight))
        return out

    def retention(self, model, batch: dict, zv: torch.Tensor, zl: torch.Tensor, za: torch.Tensor,
                  weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """The cross-modal InfoNCE terms of `vla align` on this batch, at the model's learnt temperature."""
        scale = inverse_temperature(model, None)
        episode = batch["episode_index"]
        same_command = xm.same_command_targets(self.identity, episode)
        near = xm.near_frame_targets(episode, batch["frame_index"], radius=NEAR_RADIUS, weight=NEAR_WEIGHT)
        return {"vl": xm.contrast(zv, zl, scale, weight, same_command), "la": xm.contrast(zl, za, scale, weight, same_command),
                "va": xm.contrast(zv, za, scale, weight, near)}

    def batch_size(self, batch: dict) -> int:
        return int(batch["action"].shape[0])

    # ------------------------------------------------------------------ held-out progress

    @torch.no_grad()
    def evaluate(self, model, loader, step: int) -> dict[str, float]:
        """Held-out BC NLL, KL to the init policy, |mean − a| (all, constraint episodes, EMA weights)."""
        device = next(model.parameters()).device
        sums = dict.fromkeys(("nll", "kl", "mae", "mae_c", "ema", "w", "wc"), 0.0)
        for batch in heldout_batches(loader, self.cfg.eval_max_samples, device):
            state, action, valid, weight = self.inputs(batch)
            frames, texts = batch["frames"], batch["instruction"]
            mean, log_std = forward_policy(model, frames, texts, state)
            ref = forward_policy(self.reference, frames, texts, state)
            n = float(weight.sum())
            if n <= 0:
                continue
            err = ((mean - action).abs() * valid[..., None]).sum(dim=(1, 2)) / (valid.sum(dim=1) * action.shape[-1]).clamp_min(1)  # [B]
            constrained = (self.multiplier.to(device)[batch["episode_index"]] != 1.0).float() * weight
            sums["nll"] += float(bc_nll(mean, log_std, action, valid=valid, weight=weight)) * n
            sums["kl"] += float(policy_kl(mean, log_std, *ref, valid=valid, weight=weight)) * n
            sums["mae"] += float((err * weight).sum())
            sums["mae_c"] += float((err * constrained).sum())
            sums["w"], sums["wc"] = sums["w"] + n, sums["wc"] + float(constrained.sum())
            if self.ema is not None:
                ema_mean, _ = forward_policy(self.ema.module, frames, texts, state)
                ema_err = ((ema_mean - action).abs() * valid[..., None]).sum(dim=(1, 2)) / (valid.sum(dim=1) * action.shape[-1]).clamp_min(1)
                sums["ema"] += float((ema_err * weight).sum())
        if sums["w"] == 0:
            return {}
        out = {"bc_nll": sums["nll"] / sums["w"], "kl_init": sums["kl"] / sums["w"], "action_mae": sums["mae"] / sums["w"]}
        if sums["wc"] > 0:
            out["action_mae_constraint"] = sums["mae_c"] / sums["wc"]
        if self.ema is not None:
            out["ema_action_mae"] = sums["ema"] / sums["w"]
        out.update(self.retrieval(model, loader, device))
        return out

    def retrieval(self, model, loader, device: torch.device) -> dict[str, float]:
        """Held-out task-level R@1 in the directions `vla align` reports (what the retention terms keep)."""
        cfg = retrieval.RetrievalConfig()
        if self.heldout is None:
            self.heldout = retrieval.heldout_set(loader, cfg)
        z = retrieval.embed(model, loader, self.heldout, cfg, device, prepare=self.model_inputs)
        report = retrieval.report(z, self.heldout, float(model.clamped_logit_scale().exp()))
        return {k: report[k] for k in RETRIEVAL_KEYS}

    def model_inputs(self, batch: dict) -> dict:
        """A loader batch with state and action in the model's normalisation (retrieval.embed's `prepare`)."""
        state = self.renorm(STATE_KEY, torch.nan_to_num(batch["state"].float()))
        return {**batch, "state": state, "action": self.renorm(ACTION_KEY, torch.nan_to_num(batch["action"].float()))}


def frozen_copy(model: nn.Module) -> nn.Module:
    """The behaviour reference: a frozen copy of the `--init` model in eval mode."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


# ----------------------------------------------------------------------------- the stage


@dataclass
class FinetuneRun:
    init: Path  # the aligned checkpoint
    data: Path  # LeRobot dataset with instructions
    out: Path
    config: FinetuneConfig
    eval_episodes: int = 10  # closed-loop episodes per task after training (0 = none)
    seed: int = 0
    device: str = "auto"
    workers: int = 0  # closed-loop worker processes (0 = one per CPU core)
    execute: int = 4  # chunk steps executed before replanning in closed loop
    checkpoint_every: int = 100
    resume: bool = False
    overwrite: bool = False


def _check_dataset(dataset: LeRobotDataset, model, image_key: str) -> None:
    info = dataset.root / "meta" / "info.json"
    shape = dataset.features[image_key]["shape"]
    if list(shape[:2]) != [model.config.vision.image_size] * 2:
        raise BadInput(f"`{info}`: feature `{image_key}` has shape {shape}",
                       caused_by=f"the `--init` model reads {model.config.vision.image_size}x{model.config.vision.image_size} frames")
    for key, want in ((STATE_KEY, model.config.action.state_dim), (ACTION_KEY, model.config.action.action_dim)):
        width = int(dataset.features[key]["shape"][0])
        if width != want:
            raise BadInput(f"`{info}`: feature `{key}` has {width} dims", caused_by=f"the `--init` model expects {want}")


def _closed_loop_plan(run: FinetuneRun, dataset: LeRobotDataset, task_names: list[str], image_key: str, stride: int):
    """Everything closed-loop evaluation needs, checked before training starts."""
    try:
        import stages.sim.envs  # noqa: F401 - first: it selects the headless GL backend before mujoco loads
        import metaworld  # noqa: F401
    except ImportError as exc:
        raise BadInput("closed-loop evaluation needs the `sim` extra", caused_by=str(exc),
                       hint="pip install 'vla[sim]', or pass --eval-episodes 0") from None
    from stages.sim.closed_loop import ClosedLoopConfig, plan_episodes
    from stages.sim.envs import TASKS
    from stages.sim.policy_runner import ChunkExecution
    from stages.sim.rig import ACTION_COLUMNS, STATE_COLUMNS

    info = dataset.root / "meta" / "info.json"
    hint = "closed-loop evaluation runs datasets recorded by `vla sim record`; pass --eval-episodes 0 for others"
    for key, columns in ((STATE_KEY, STATE_COLUMNS), (ACTION_KEY, ACTION_COLUMNS)):
        names = dataset.features[key].get("names")
        names = next(iter(names.values())) if isinstance(names, dict) else names
        if list(names or []) != list(columns):
            raise BadInput(f"`{info}`: field `features.{key}.names` is {names}", caused_by=f"the simulator's columns are {list(columns)}", hint=hint)
    tasks = [t for t in task_names if t in TASKS]
    if not tasks:
        raise BadInput(f"dataset `{dataset.root}` has no simulator task", caused_by=f"tasks: {', '.join(task_names)}", hint=hint)
    for t in sorted(set(task_names) - set(tasks)):
        log.warning("task `%s` is not a simulator task: no closed-loop episodes for it", t)
    execution = ChunkExecution(fps=int(round(dataset.fps)), execute=run.execute, history_stride=stride)
    if abs(dataset.fps - round(dataset.fps)) > 1e-9:
        raise BadInput(f"`{info}`: field `fps` is {dataset.fps}", caused_by="closed-loop evaluation needs a whole frame rate")
    cfg = ClosedLoopConfig(episodes_per_task=run.eval_episodes, seed=run.seed, size=int(dataset.features[image_key]["shape"][0]),
                           workers=run.workers)
    return cfg, plan_episodes(cfg, tasks), execution


def finalise(run_dir: Path, *, use_ema: bool, lora_modules: list[str], lora_scale: float, keep_last: int) -> None:
    """Keep the training state as the final snapshot (what --resume continues), then write the
    delivered weights — EMA, LoRA merged — as the top-level model.safetensors (module doc)."""
    top = checkpoint.load(run_dir)
    snap = Path(run_dir) / checkpoint.SNAPSHOTS / checkpoint.snapshot_name(top.step)
    if not snap.is_dir():
        checkpoint.save_snapshot(run_dir, top, keep_last=keep_last)
    trained = checkpoint.load(snap)
    weights = {k[len("ema."):]: v for k, v in trained.state_tensors.items() if k.startswith("ema.")} if use_ema else trained.weights
    if lora_modules:
        weights = merge_lora(weights, lora_modules, lora_scale)
    trained.weights, trained.provides = weights, None
    checkpoint.save_final(run_dir, trained)


def finetune(run: FinetuneRun, reporter=None) -> dict:
    """Run stage D; returns the summary (see `vlacli/finetune.py`). Inputs are validated first."""
    from stages.artifacts import write_json
    from stages.data.lerobot import open_dataset
    from stages.data.loader import LoaderConfig, build_loader
    from stages.probes.context import load_model
    from stages.progress import NullReporter
    from stages.training import parallel
    from stages.training.ema import EMA
    from stages.training.loop import CheckpointConfig, TrainConfig, Trainer
    from stages.training.metrics import JsonlLog
    from stages.training.optim import OptimConfig
    from stages.training.setup import check_run_directory, image_feature, require_features, run_directory, select_device

    reporter = reporter or NullReporter()
    cfg = run.config
    cfg.check()
    if run.eval_episodes < 0 or run.checkpoint_every < 0:
        raise BadInput("`--eval-episodes` and the checkpoint interval must be ≥ 0")
    check_run_directory(run.out, resume=run.resume, overwrite=run.overwrite)
    device, precision = select_device(run.device)
    check_aligned(run.init)
    dataset = open_dataset(run.data, reporter=reporter)
    require_features(dataset, (("image", None), ("vector", STATE_KEY), ("vector", ACTION_KEY), ("text", None)), needed_by="vla finetune")
    model, init_ck = load_model(Path(run.init), torch.device("cpu"))
    image_key = image_feature(dataset)
    _check_dataset(dataset, model, image_key)
    loader_cfg = LoaderConfig(batch_size=cfg.batch_size, history=model.config.vision.frames, chunk=model.config.action.horizon, image_key=image_key)
    dist = parallel.setup(device)
    train = build_loader(dataset, loader_cfg, split="train", seed=run.seed, rank=dist.rank, world_size=dist.world_size)
    held = None
    if dist.is_main:
        try:
            held = build_loader(dataset, loader_cfg, split="heldout", seed=run.seed)
        except BadInput as exc:
            log.warning("no held-out evaluation: %s", exc.message)
    plan = _closed_loop_plan(run, dataset, train.task_names, image_key, loader_cfg.history_stride) if run.eval_episodes and dist.is_main else None

    model.train()
    reference = frozen_copy(model)
    lora_modules = inject_lora(model, cfg.lora_rank, cfg.lora_alpha, seed=run.seed) if cfg.lora else []
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    flags = constraint_flags(dataset)
    positions = {int(e): i for i, e in enumerate(dataset.episodes["episode_index"].tolist())}
    init = {"path": str(run.init), "step": init_ck.step, "config_digest": init_ck.metadata.get("config_digest", "")}
    recipe = FinetuneRecipe(cfg, reference=reference, ema=ema, constrained=flags, episode_positions=positions,
                            renorm=Renormalise(model.config.norm_stats, train.norm_stats()), init=init, lora_modules=lora_modules,
                            identity=xm.episode_identities(dataset))
    train_cfg = TrainConfig(
        steps=cfg.steps, seed=run.seed, device=device, precision=precision, eval_every=0, resume=run.resume,
        loss_weights={"bc": 1.0, "kl": cfg.kl_weight, **retention_weights(cfg.align_weight)},
        optim=OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=min(100, cfg.steps // 10)),
        checkpoint=CheckpointConfig(every=run.checkpoint_every, keep_last=3))
    log.info("finetuning from %s: %d of %d episodes carry constraint phrases (BC weight ×%g)", run.init, int(flags.sum()),
             len(flags), cfg.constraint_weight)
    with run_directory(run.out, resume=run.resume, overwrite=run.overwrite, is_main=dist.is_main) as run_dir:
        trainer = Trainer(model, recipe, train, config=train_cfg, out_dir=run_dir, reporter=reporter, eval_loader=held, ema=ema)
        summary = trainer.fit()
        closed = None
        if dist.is_main:
            finalise(run_dir, use_ema=ema is not None, lora_modules=lora_modules, lora_scale=cfg.lora_alpha / cfg.lora_rank, keep_last=3)
            if plan is not None:
                closed = _run_closed_loop(run_dir, plan, summary, reporter)
                write_json(Path(run_dir) / CLOSED_LOOP, closed, schema="closed-loop-eval")
                rows = JsonlLog(Path(run_dir) / checkpoint.LOGS / "metrics.jsonl", schema="metrics-log")
                rows.write({"step": summary["steps"], "kind": "eval", "phase": "closed_loop", "time_s": summary["seconds"],
                            "metrics": _flat(closed)})
                rows.close()
        parallel.barrier()
    return _summary(run, summary, closed, flags=flags, device=device, precision=precision, world_size=dist.world_size,
                    delivered="ema" if ema is not None else "live", heldout=0 if held is None else len(held.episodes))


def _summary(run: FinetuneRun, result: dict, closed: dict | None, *, flags: np.ndarray, device: str, precision: str,
             world_size: int, delivered: str, heldout: int) -> dict:
    """What `vla finetune --json` prints (schema `finetune-summary`)."""
    from stages.artifacts import validate
    from stages.training.metrics import scalar

    cfg = run.config
    summary = {
        "schema_version": 1, "out": str(run.out), "init": str(run.init), "data": str(run.data),
        "steps": int(result["steps"]), "resumed_from": result.get("resumed_from"), "skipped_steps": int(result.get("skipped_steps", 0)),
        "batch_size": cfg.batch_size, "lr": cfg.lr, "kl_weight": cfg.kl_weight, "constraint_weight": cfg.constraint_weight,
        "ema_decay": cfg.ema_decay, "lora": cfg.lora, "delivered": delivered, "seed": run.seed, "device": device,
        "precision": precision, "world_size": world_size,
        "episodes": int(len(flags)), "constraint_episodes": int(flags.sum()), "heldout_episodes": heldout,
        "losses": scalar(result.get("losses") or {}), "eval": scalar(result.get("eval") or {}),
        "train_seconds": float(result.get("seconds", 0.0)),
        "closed_loop": None if closed is None else {"overall": closed["overall"], "tasks": closed["tasks"], "seconds": closed["seconds"],
                                                    "file": CLOSED_LOOP},
    }
    validate(summary, "finetune-summary", source="finetune summary")
    return summary


CLOSED_LOOP = "closed_loop.json"


def _flat(doc: dict) -> dict:
    from stages.sim.closed_loop import flat_metrics

    return flat_metrics(doc)


def _run_closed_loop(run_dir: Path, plan, summary: dict, reporter) -> dict:
    from stages.sim.closed_loop import evaluate
    from stages.sim.policy_runner import CheckpointPolicySpec

    cfg, episodes, execution = plan
    spec = CheckpointPolicySpec(str(run_dir), execution, size=cfg.size)
    doc = evaluate(spec, episodes, cfg, reporter)
    doc["execution"] = {"mode": "receding_horizon", "fps": execution.fps, "execute": execution.execute,
                        "control_steps_per_frame": execution.every, "hold": "linear", "history_stride": execution.history_stride}
    doc["step"] = summary["steps"]
    return doc
