"""The training loop shared by every training stage (pretrain-modality, align, finetune).

The step does forward, losses, combine, backward, clip, optimizer step — nothing else
(`Trainer.train_step`, torchtitan's `_forward_backward_body`). Everything else lives in the outer
loop (`Trainer.fit`): the schedule hook between steps (phase → loss weights, LR multiplier,
freeze globs, temperature, combiner), the EMA teacher update, the non-finite guard's bookkeeping,
logs, evaluation and checkpoints.

A recipe is any object with

    losses(model, batch, step, phase) -> dict[str, Tensor]     # scalars; `phase` is the schedule's
    evaluate(model, loader, step) -> dict[str, float]           # held-out metrics (rank 0 only, no collectives)

and optionally `state_dict()` / `load_state_dict(state)` (JSON + tensors, e.g. token-bucket state,
restored on resume), `log_rows(step) -> {"buckets": [row, ...]}` (rows for `logs/<name>.jsonl`,
asked at every log step) and `batch_size(batch) -> int` (for samples/s).

Determinism and resume: the run's RNG is seeded from (seed, rank); each epoch's loader iterator is
created under an RNG seeded from (seed, rank, epoch) that is isolated from the training stream;
evaluation runs under an isolated RNG too. A checkpoint stores (epoch, batches drawn in the epoch)
and every RNG state; `--resume` re-creates the epoch's iterator, draws the same number of batches
again (or calls the loader's `load_state_dict` when it has one), then restores the RNG states — so
an interrupted run continues bit-identically on CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from stages.errors import BadInput
from stages.progress import NullReporter, Reporter
from stages.training import checkpoint, determinism, freezing, parallel
from stages.training.combiners import build_combiner, gradient_log_row
from stages.training.config import (  # noqa: F401  (re-exported: the stages import them from here)
    CheckpointConfig, Phase, StepResult, TrainConfig, TrainingDiverged, TrainState, _resolve_steps, phase_from,
)
from stages.training.ema import EMA
from stages.training.metrics import RunLogs, scalar
from stages.training.optim import build_optimizer, lr_factor, set_lr

log = logging.getLogger("vla")


def _batch_size(recipe: Any, batch: Any) -> int:
    if hasattr(recipe, "batch_size"):
        return int(recipe.batch_size(batch))
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
        if isinstance(v, (list, tuple)):
            return len(v)
    return 0


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in batch):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class Trainer:
    """One run: `Trainer(model, recipe, loader, config=..., out_dir=...).fit()` → summary dict.

    `combiner`: a combiner object used in every phase (default: the schedule's per-phase combiner,
    or `config.combiner`). `ema`: an `EMA` teacher the recipe holds, updated after every applied
    step and saved with the run. `model_config`: the dict saved as config.json (default
    `model.config.to_dict()`).
    """

    def __init__(self, model: torch.nn.Module, recipe: Any, train_loader: Any, *, config: TrainConfig, out_dir: Path,
                 reporter: Reporter | None = None, combiner: Any = None, schedule: Any = None, eval_loader: Any = None,
                 ema: EMA | None = None, model_config: dict | None = None, stateful: dict[str, Any] | None = None):
        config.check()
        self.steps = _resolve_steps(config, schedule)
        self.config, self.recipe, self.schedule, self.eval_loader, self.ema = config, recipe, schedule, eval_loader, ema
        self.out_dir = Path(out_dir)
        self.dist = parallel.setup(config.device)
        if self.dist.is_main and not config.resume and checkpoint.holds_run(self.out_dir):
            raise BadInput(f"`{out_dir}` already holds a training run", hint="resume it with --resume, or start over with --overwrite")
        self.device = self.dist.device
        self.reporter = reporter if reporter is not None and self.dist.is_main else NullReporter()
        self.model = model.to(self.device)
        if ema is not None:
            ema.module.to(self.device)
        parallel.broadcast_module(self.model)
        self._model_config = model_config  # None: `model.config.to_dict()` at each save (norm stats may be set late)
        self.model_config()  # fail now, not at the first save
        self.names = [n for n, _ in model.named_parameters()]
        self.baseline = {n for n, p in model.named_parameters() if p.requires_grad}
        self.optimizer = build_optimizer(model.named_parameters(), config.optim)
        self.combiners: dict[str, Any] = {}  # key -> combiner, built when a phase first needs it
        if combiner is not None:
            self._adopt_combiner("given", combiner)
        self._given_combiner = combiner
        self._loss_names = self._declared_losses()
        self.stateful = dict(stateful or {})
        self.data = determinism.DataCursor(train_loader, seed=config.seed, rank=self.dist.rank)
        self.logs = RunLogs(self.out_dir / checkpoint.LOGS, enabled=self.dist.is_main)
        self.state = TrainState(seed=config.seed, world_size=self.dist.world_size)
        self.params: list[torch.nn.Parameter] = []
        self.phase: Phase | None = None
        self.window: _Window | None = None
        self._window_state: dict | None = None
        self._autocast = config.precision == "bf16" and self.device.type == "cuda"
        if config.precision == "bf16" and not self._autocast:
            log.warning("precision bf16 needs a CUDA device; training in fp32 on %s", self.device)
        determinism.seed_everything(determinism.derive_seed(config.seed, self.dist.rank))

    def model_config(self) -> dict:
        """What config.json holds: the dict given to the Trainer, else the model's current config."""
        if self._model_config is not None:
            return self._model_config
        config = getattr(self.model, "config", None)
        if not hasattr(config, "to_dict"):
            raise BadInput("the model has no `config.to_dict()`; pass model_config= to the Trainer")
        return config.to_dict()

    # ------------------------------------------------------------------ combiners

    def _declared_losses(self) -> list[str] | None:
        names = getattr(self.schedule, "loss_names", None)
        if names is None:
            return None
        return sorted(names() if callable(names) else names)

    def _combiner_for(self, phase: Phase, loss_names: list[str]) -> Any:
        """The phase's combiner, built on first use over the schedule's declared losses."""
        if self._given_combiner is not None:
            return self._given_combiner
        key = phase.combiner if not phase.combiner_params else f"{phase.combiner}:{checkpoint.config_digest(phase.combiner_params)[:8]}"
        if key not in self.combiners:
            names = self._loss_names or sorted(loss_names)
            self._adopt_combiner(key, build_combiner(phase.combiner, names, phase.combiner_params))
        return self.combiners[key]

    def _adopt_combiner(self, key: str, combiner: Any) -> None:
        """Keep `combiner`; its learnable weights (uncertainty σ) join the optimizer as a group."""
        if hasattr(combiner, "to"):
            combiner.to(self.device)
        self.combiners[key] = combiner
        params = list(combiner.parameters())
        if params:
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.add_param_group({"name": f"combiner.{key}", "params": params, "weight_decay": 0.0, "lr": lr,
                                            "lr_scale": 1.0, "param_names": [f"combiner.{key}.{i}" for i in range(len(params))]})

    # ------------------------------------------------------------------ the step

    def train_step(self, batch: Any, step: int, phase: Phase, *, grad_stats: bool = False) -> StepResult:
        """forward → losses → combine/backward → all-reduce → clip → optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast):
            losses = self.recipe.losses(self.model, batch, step, phase)
        weights, floors = phase.weights_for(losses)
        combiner = self._combiner_for(phase, list(losses))
        reduce = parallel.all_reduce_mean_ if self.dist.world_size > 1 else None
        stats = combiner.backward(losses, self.params, weights=weights, min_weights=floors,
                                  grad_stats=grad_stats, reduce_grads=reduce)
        # Linear combiners leave per-rank gradients in p.grad; averaging is idempotent for the
        # combiners that already combined all-reduced task gradients (PCGrad, GradNorm).
        parallel.all_reduce_gradients(self._grad_params(combiner))
        if self.config.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip, foreach=True)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None], foreach=True)
        values = {k: v.detach().float().reshape(()) for k, v in losses.items()}
        bad = torch.stack([~torch.isfinite(grad_norm), *(~torch.isfinite(v) for v in values.values())]).float()
        bad = parallel.all_reduce_max_(bad).tolist()
        applied = not any(bad)
        if applied:
            self.optimizer.step()
            if hasattr(self.model, "clamp_logit_scale_"):  # VLAModel keeps log(1/τ) within [0, ln 100]
                self.model.clamp_logit_scale_()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        nonfinite = [n for n, b in zip(["grad_norm", *values], bad) if b]
        return StepResult(values, stats.get("weights", weights), grad_norm.detach(), applied, nonfinite, stats)

    def _grad_params(self, combiner: Any) -> list[torch.Tensor]:
        return [*self.params, *[p for p in combiner.parameters() if p.requires_grad]]

    # ------------------------------------------------------------------ the outer loop

    def fit(self) -> dict:
        """Train to the end of the run (or of the schedule, when its last phase exits early)."""
        cfg = self.config
        start = self._resume() if cfg.resume else 0
        if start >= self._end():
            log.info("`%s` already holds all %d steps; nothing to do", self.out_dir, start)
            return self._summary(start, {})
        self.model.train()
        try:
            done = self._train(start)
            final_metrics = self.evaluate(done)
            self.save(done, snapshot=False)
        finally:
            self.logs.close()
        parallel.barrier()
        return self._summary(start, final_metrics)

    def _train(self, start: int) -> int:
        """The outer loop from step `start`; returns the steps completed."""
        cfg = self.config
        clock = time.perf_counter() - self.state.elapsed_s
        done = start
        window = self.window = _Window(self._window_state)
        with self.reporter.task("training", total=self.steps) as advance:
            advance(start)
            while done < self._end():
                step, done = done, done + 1
                phase = self._enter_phase(step)
                lr = set_lr(self.optimizer, cfg.optim.lr, lr_factor(step, self.steps, cfg.optim), phase.lr_mult)
                batch = _to_device(self.data.next(), self.device)
                log_now = done % cfg.log_every == 0 or done == self._end()
                stats_now = cfg.grad_stats_every > 0 and (done % cfg.grad_stats_every == 0 or done == self._end())
                result = self.train_step(batch, step, phase, grad_stats=stats_now)
                if result.applied and self.ema is not None:
                    self.ema.update(self.model)
                self._guard(done, phase, result)
                window.add(result, _batch_size(self.recipe, batch) * self.dist.world_size)
                self.state.elapsed_s = time.perf_counter() - clock
                if log_now:
                    self._log(done, phase, lr, result, window)
                    window = self.window = _Window()
                if stats_now:
                    self.logs["gradients"].write(gradient_log_row(done, result.stats, phase=phase.name))
                self._recipe_rows(done)
                if cfg.eval_every and done % cfg.eval_every == 0 and done < self._end():
                    self._check_exit(done, self.evaluate(done))
                if cfg.checkpoint.every and done % cfg.checkpoint.every == 0:
                    self.save(done, snapshot=True)
                advance(1)
        return done

    def _end(self) -> int:
        end = getattr(self.schedule, "end_step", None)
        return self.steps if end is None else min(self.steps, end)

    def _check_exit(self, done: int, metrics: dict) -> None:
        """Exit conditions of the current phase, judged on rank 0's evaluation, broadcast to all ranks."""
        if self.schedule is None or done >= self._end():
            return
        names = [c.metric for c in self.schedule.phases[self.schedule.phase_index(done)].exit]
        if not names:
            return
        values = parallel.broadcast_(torch.tensor([float(metrics.get(n, math.nan)) for n in names], dtype=torch.float64))
        ended = self.schedule.check_exit(done, {n: v for n, v in zip(names, values.tolist()) if not math.isnan(v)})
        if ended:
            log.info("step %d: phase `%s` met its exit condition", done, ended)

    def _summary(self, start: int, final_metrics: dict) -> dict:
        return {"steps": self._end(), "resumed_from": start if self.config.resume else None,
                "skipped_steps": self.state.skipped, "losses": self.state.last_losses, "eval": final_metrics,
                "seconds": round(self.state.elapsed_s, 3), "out": str(self.out_dir)}

    def _enter_phase(self, step: int) -> Phase:
        """Schedule hook, between steps: a new phase re-applies freezing (and the combiner is per phase)."""
        raw = self.schedule.at(step) if self.schedule is not None else None
        phase = phase_from(raw, self.config)
        if self.phase is None or phase.key != self.phase.key:
            trainable = freezing.trainable_names(self.names, self.baseline, freeze=phase.freeze, unfreeze=phase.unfreeze,
                                                 where=f"phase `{phase.name}`")
            self.params = freezing.apply(self.model, trainable)
            if self.phase is not None:
                log.info("step %d: phase `%s` (%d trainable tensors)", step, phase.name, len(self.params))
        if self.ema is not None and phase.ema_decay is not None:
            self.ema.decay = float(phase.ema_decay)
        self.phase = phase
        self.state.phase = phase.name
        self.state.temperature = phase.temperature
        return phase

    def _guard(self, done: int, phase: Phase, result: StepResult) -> None:
        st = self.state
        if result.applied:
            st.nonfinite_streak = 0
            st.last_losses = {k: float(v) for k, v in result.losses.items()}
            st.loss_weights = {k: float(v) for k, v in result.weights.items()}
            return
        st.nonfinite_streak += 1
        st.skipped += 1
        what = ", ".join(result.nonfinite)
        log.warning("step %d: non-finite %s; optimizer step skipped (%d in a row)", done, what, st.nonfinite_streak)
        self.logs["metrics"].write({"step": done, "kind": "skip", "phase": phase.name, "time_s": st.elapsed_s,
                                    "nonfinite": result.nonfinite, "losses": result.losses})
        if st.nonfinite_streak >= self.config.max_nonfinite:
            raise TrainingDiverged(
                f"training diverged: {st.nonfinite_streak} consecutive steps with non-finite {what} (step {done})",
                hint="lower the learning rate or the loss weights, then resume from the last snapshot with --resume")

    def _log(self, done: int, phase: Phase, lr: float, result: StepResult, window: _Window) -> None:
        means = window.means()
        if self.dist.world_size > 1 and means:
            vec = parallel.all_reduce_mean_(torch.tensor(list(means.values()), dtype=torch.float64))
            means = dict(zip(means, vec.tolist()))
        total = sum(result.weights.get(k, 0.0) * v for k, v in means.items())
        row = {"step": done, "kind": "train", "phase": phase.name, "epoch": self.data.epoch, "time_s": self.state.elapsed_s,
               "losses": means, "loss": total, "loss_weights": result.weights, "lr": lr, "grad_norm": result.grad_norm,
               "temperature": phase.temperature, "samples_per_s": window.rate(), "window": window.steps}
        self.logs["metrics"].write(row)
        self.reporter.metrics({**means, "lr": lr})

    def _recipe_rows(self, done: int) -> None:
        """Rows the recipe wants logged this step (e.g. token buckets every N steps)."""
        if hasattr(self.recipe, "log_rows"):
            for name, rows in (self.recipe.log_rows(done) or {}).items():
                for row in rows:
                    self.logs[name].write(row)

    def evaluate(self, done: int) -> dict:
        """recipe.evaluate on rank 0 under an isolated RNG (training randomness is untouched)."""
        if self.eval_loader is None or not hasattr(self.recipe, "evaluate") or not self.dist.is_main:
            return {}
        self.model.eval()
        try:
            with determinism.isolated_rng(determinism.derive_seed(self.config.seed, done, 7)), torch.no_grad(), \
                    torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast):
                metrics = {k: float(v) for k, v in self.recipe.evaluate(self.model, self.eval_loader, done).items()}
        finally:
            self.model.train()
        self.logs["metrics"].write({"step": done, "kind": "eval", "phase": self.state.phase or "", "time_s": self.state.elapsed_s,
                                    "metrics": metrics})
        log.info("step %d eval: %s", done, "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        self.state.last_eval = scalar(metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def save(self, done: int, *, snapshot: bool) -> None:
        """All ranks call this (their RNG states are gathered); rank 0 writes."""
        ck = self._capture(done)
        if not self.dist.is_main:
            return
        if snapshot:
            path = checkpoint.save_snapshot(self.out_dir, ck, keep_last=self.config.checkpoint.keep_last)
            log.info("step %d: snapshot %s", done, path)
        else:
            checkpoint.save_final(self.out_dir, ck)

    def _capture(self, done: int) -> checkpoint.Checkpoint:
        tensors: dict[str, torch.Tensor] = {}
        rng = determinism.rng_state()
        for kind in sorted(rng):
            for r, t in enumerate(parallel.all_gather_equal(rng[kind])):
                tensors[f"rng.{r}.{kind}"] = t

        def part(prefix: str, state: Any) -> Any:
            doc, found = checkpoint.split_state(state, prefix)
            tensors.update(found)
            return doc

        combiners = {key: {"name": c.name, "loss_names": list(getattr(c, "loss_names", [])),
                           "params": _config_params(c), "state": part(f"combiner.{key}", c.state_dict())}
                     for key, c in self.combiners.items()}
        ema = None
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
            ema = {"decay": self.ema.decay, "updates": self.ema.updates}
        schedule_doc = _schedule_document(self.schedule)
        opt_tensors, opt_json = checkpoint.optimizer_state(self.optimizer)
        st = self.state
        state = {
            "schema_version": 1, "step": done, "seed": st.seed, "world_size": st.world_size,
            "data": self.data.state(), "phase": st.phase, "temperature": st.temperature,
            "loss_weights": st.loss_weights, "last_losses": st.last_losses, "last_eval": st.last_eval,
            "nonfinite_streak": st.nonfinite_streak, "skipped_steps": st.skipped, "elapsed_s": st.elapsed_s,
            "log_window": self.window.state() if self.window is not None else None,
            "combiners": combiners, "ema": ema,
            "recipe": part("recipe", self.recipe.state_dict()) if hasattr(self.recipe, "state_dict") else None,
            "stateful": {name: part(f"stateful.{name}", obj.state_dict()) for name, obj in self.stateful.items()},
            "schedule": None if schedule_doc is None else {"file": checkpoint.SCHEDULE, "digest": checkpoint.config_digest(schedule_doc),
                                                           "state": part("schedule", self.schedule.state_dict())},
            "config_digest": checkpoint.config_digest(checkpoint.config_document(self.model_config())),
            "rng": {"ranks": self.dist.world_size, "kinds": sorted(rng)},
        }
        return checkpoint.Checkpoint(
            step=done, weights=self.model.state_dict(), model_config=self.model_config(), trainer_state=state,
            state_tensors=tensors, optimizer_tensors=opt_tensors, optimizer_json=opt_json, schedule=schedule_doc,
            preset=self.model_config().get("preset"), provides=self.config.checkpoint.provides)

    def _resume(self) -> int:
        src = checkpoint.latest(self.out_dir)
        if src is None:
            raise BadInput(f"nothing to resume in `{self.out_dir}`", caused_by="no complete checkpoint found",
                           hint="drop --resume to start a new run")
        if self.dist.is_main:
            for name in checkpoint.remove_stale_temporaries(self.out_dir):
                log.info("removed `%s`, left by an interrupted save", name)
        step = self._restore(checkpoint.load(src), same_dir=src.resolve() == self.out_dir.resolve())
        log.info("resumed from %s at step %d", src, step)
        return step

    def _restore(self, ck: checkpoint.Checkpoint, *, same_dir: bool) -> int:
        """Put model, optimizer, combiners, EMA, recipe state, logs, data position and RNG back."""
        st, tensors, where = ck.trainer_state, ck.state_tensors, ck.path
        mine = checkpoint.config_digest(checkpoint.config_document(self.model_config()))
        if mine != ck.metadata.get("config_digest"):
            raise BadInput(f"cannot resume from `{where}`: its model config differs from this run's",
                           hint="resume with the same model options, or start a new --out")
        schedule_doc = _schedule_document(self.schedule)
        if (schedule_doc is None) != (st["schedule"] is None) or (
                schedule_doc is not None and checkpoint.config_digest(schedule_doc) != st["schedule"]["digest"]):
            log.warning("resuming with a schedule that differs from the one in `%s`", where)
        if self.schedule is not None and st["schedule"] is not None:
            self.schedule.load_state_dict(checkpoint.join_state(st["schedule"]["state"], tensors))
        checkpoint.load_state_into(self.model, ck.weights, source=where / checkpoint.MODEL)
        for key, entry in st["combiners"].items():
            if key not in self.combiners:
                self._adopt_combiner(key, build_combiner(entry["name"], entry["loss_names"], entry["params"] or None))
            self.combiners[key].load_state_dict(checkpoint.join_state(entry["state"], tensors))
        checkpoint.load_optimizer_state(self.optimizer, ck.optimizer_tensors, ck.optimizer_json, source=where / checkpoint.OPTIMIZER)
        if self.ema is not None:
            if st["ema"] is None:
                raise BadInput(f"cannot resume from `{where}`: it has no EMA teacher state, this run uses one")
            self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, updates=st["ema"]["updates"])
        if hasattr(self.recipe, "load_state_dict") and st.get("recipe") is not None:
            self.recipe.load_state_dict(checkpoint.join_state(st["recipe"], tensors))
        for name, obj in self.stateful.items():
            if name not in st["stateful"]:
                raise BadInput(f"cannot resume from `{where}`: it has no `{name}` state")
            obj.load_state_dict(checkpoint.join_state(st["stateful"][name], tensors))
        self.state = TrainState(seed=st["seed"], world_size=self.dist.world_size, phase=st["phase"], temperature=st["temperature"],
                                loss_weights=st["loss_weights"], last_losses=st["last_losses"], last_eval=st["last_eval"],
                                nonfinite_streak=st["nonfinite_streak"], skipped=st["skipped_steps"], elapsed_s=st["elapsed_s"])
        self._window_state = st["log_window"]
        if self.dist.is_main and not same_dir:
            checkpoint.restore_logs(where, self.out_dir)
        self.data.seek(st["data"])  # may replay batches: before the RNG states are put back
        ranks = st["rng"]["ranks"]
        if ranks != self.dist.world_size:
            log.warning("resuming %d rank(s) from a %d-rank run: random streams continue from rank 0's", self.dist.world_size, ranks)
        r = self.dist.rank if self.dist.rank < ranks else 0
        determinism.set_rng_state({kind: tensors[f"rng.{r}.{kind}"] for kind in st["rng"]["kinds"]})
        return ck.step


class _Window:
    """Running sums between two log rows (detached tensors: no host sync per step).

    Saved with a checkpoint, so that a resumed run's first row averages the same steps as an
    uninterrupted run's would.
    """

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.sums: dict[str, Any] = dict(state.get("sums", {}))
        self.counts: dict[str, int] = dict(state.get("counts", {}))
        self.steps, self.samples = int(state.get("steps", 0)), int(state.get("samples", 0))
        self.t0, self.timed_samples = time.perf_counter(), 0  # this process's share, for samples/s

    def state(self) -> dict:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "counts": dict(self.counts),
                "steps": self.steps, "samples": self.samples}

    def add(self, result: StepResult, samples: int) -> None:
        self.steps += 1
        self.samples += samples
        self.timed_samples += samples
        if not result.applied:
            return
        for k, v in result.losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: float(v) / self.counts[k] for k, v in self.sums.items()}

    def rate(self) -> float:
        return self.timed_samples / max(time.perf_counter() - self.t0, 1e-9)


def _config_params(combiner: Any) -> dict:
    config = getattr(combiner, "config", None)
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}


def _schedule_document(schedule: Any) -> dict | None:
    """The schedule's validated JSON document, copied into every checkpoint as schedule.json."""
    return None if schedule is None else schedule.raw
