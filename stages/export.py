"""`vla export`: the bundle a checkpoint leaves pretraining as (ch07 §7.10 导出物), and its loader.

    dist/<name>/
      model.safetensors   weights in the chosen dtype (bf16 | fp16 | fp32); metadata: format vla-policy
      config.json         the model config (schema checkpoint-config: dims, tokenizer, normalisation stats)
      logs/metrics.jsonl  loss curves (and eval rows) of the run, when the checkpoint has them
      logs/buckets.jsonl  token-bucket state over the run, when it has them
      probe_report.json   the check-up (schema probe-report), when one was given
      rl_init.json        RFT/RL initialisation: modules to freeze, learning rates, KL coefficient toward
                          this pretrained policy (schema rl-init)
      README.md           the model card (Chinese)
      manifest.json       sha256 and size of every other file, the source checkpoint, the temperature
                          and the last training state (schema export-manifest)

`export(...)` writes it atomically after every check (`require_pass` refuses a checkpoint whose
probe report failed, is missing, or belongs to other weights); `verify(path)` re-hashes every file
and names the first one that differs; `load_policy(path)` verifies, rebuilds the model and returns a
`Policy` that maps raw observations to actions in the robot's units.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from stages.artifacts import atomic_dir, read_json, sha256_file, write_json
from stages.errors import BadInput, GateFailed
from stages.model import ModelConfig, VLAModel, build_model
from stages.training import checkpoint

FORMAT = "vla-policy"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROBE_REPORT = "probe_report.json"
RL_INIT = "rl_init.json"
CARD = "README.md"
LOG_FILES = ("metrics.jsonl", "buckets.jsonl")  # loss curves and bucket state (ch07 §7.10 权重包 + 日志)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class RLInitConfig:
    """Defaults of the RL initialisation (ch05 §5.1: freeze most feature extractors, unfreeze gradually;
    ch05 checklist: logit-scale LR ≤ 1e-3; a KL anchor to the pretrained policy keeps RL from drifting)."""

    freeze: list[str] = field(default_factory=lambda: ["vision.*", "language.*", "action.*", "heads.mvm.*", "heads.chunk.*",
                                                       "heads.cycle_*", "logit_scale"])
    learning_rates: dict[str, float] = field(default_factory=lambda: {"heads.policy.*": 1e-5, "fusion.*": 3e-6})
    unfreeze_later: list[str] = field(default_factory=lambda: ["action.*", "vision.proj.*"])
    unfreeze_lr: float = 1e-6
    kl_coefficient: float = 0.05  # β of β·KL(π_θ ‖ π_pretrained) per action dim and step
    kl_coefficient_uncertain: float = 0.1  # when the probe's open-set check failed: stay closer to the prior


@dataclass
class ExportConfig:
    dtype: str = "fp32"
    require_pass: bool = False
    rl: RLInitConfig = field(default_factory=RLInitConfig)


# ----------------------------------------------------------------------------- export


def export(ckpt: Path, out: Path, *, probe_report: Path | None = None, config: ExportConfig = ExportConfig(),
           overwrite: bool = False, created_by: str = "vla export") -> dict:
    """Write the bundle of `ckpt` to `out` (atomically) and return its manifest."""
    ckpt, out = Path(ckpt), Path(out)
    if config.dtype not in DTYPES:
        raise BadInput(f"--dtype `{config.dtype}` is not supported", caused_by=f"expected one of {', '.join(DTYPES)}")
    ck = checkpoint.load(ckpt, resume=False)
    model_config = ModelConfig.from_dict(ck.model_config, source=str(ckpt / checkpoint.CONFIG))
    model_sha = sha256_file(ckpt / checkpoint.MODEL)
    report = _probe_report(probe_report, model_sha, require_pass=config.require_pass)
    if out.exists() and not overwrite:
        raise BadInput(f"output `{out}` already exists", hint="choose another --out, or pass --overwrite")
    state = _trainer_state(ckpt)
    logit_scale = float(ck.weights["logit_scale"]) if "logit_scale" in ck.weights else model_config.logit_scale_init
    training = {
        "step": int(ck.step),
        "phase": state.get("phase") if state else None,
        "logit_scale": logit_scale,
        "tau": 1.0 / math.exp(min(max(logit_scale, 0.0), model_config.logit_scale_max)),  # the clamp the forward pass uses
        "schedule_temperature": state.get("temperature") if state else None,
        "loss_weights": state.get("loss_weights", {}) if state else {},
        "last_losses": state.get("last_losses", {}) if state else {},
        "last_eval": state.get("last_eval", {}) if state else {},
        "buckets": _last_row(ckpt / checkpoint.LOGS / "buckets.jsonl"),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        weights = {k: (v.to(DTYPES[config.dtype]) if v.is_floating_point() else v) for k, v in ck.weights.items()}
        config_doc = checkpoint.config_document(ck.model_config)
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "dtype": config.dtype, "step": str(ck.step),
                "preset": ck.preset or "", "config_digest": checkpoint.config_digest(config_doc), "source_sha256": model_sha}
        safetensors.torch.save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"), metadata=meta)
        os.chmod(tmp / "model.safetensors", 0o644)  # a bundle is meant to be shared: readable like its other files
        write_json(tmp / checkpoint.CONFIG, config_doc, schema="checkpoint-config")
        for name in LOG_FILES:
            src = ckpt / checkpoint.LOGS / name
            if src.is_file():
                (tmp / "logs").mkdir(exist_ok=True)
                shutil.copyfile(src, tmp / "logs" / name)
        if report is not None:
            write_json(tmp / PROBE_REPORT, report, schema="probe-report")
        rl = rl_init(model_config, report, config.rl, training)
        write_json(tmp / RL_INIT, rl, schema="rl-init")
        (tmp / CARD).write_text(model_card(out.name, model_config, ck, training, report, rl, config.dtype), encoding="utf-8")
        manifest = {
            "schema_version": 1,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": out.name,
            "created_by": created_by,
            "dtype": config.dtype,
            "source": {"checkpoint": str(ckpt), "model_sha256": model_sha, "step": int(ck.step), "preset": ck.preset,
                       "config_digest": meta["config_digest"]},
            "training": training,
            "probe": None if report is None else report["summary"],
            "files": _file_list(tmp),
        }
        write_json(tmp / MANIFEST, manifest, schema="export-manifest")
    return manifest


def _probe_report(path: Path | None, model_sha: str, *, require_pass: bool) -> dict | None:
    if path is None:
        if require_pass:
            raise GateFailed("--require-pass: no probe report was given", hint="vla probe CKPT --data D --report probe.json, "
                                                                             "then vla export CKPT --probe-report probe.json --require-pass")
        return None
    report = read_json(path, schema="probe-report")
    if report["checkpoint"]["model_sha256"] != model_sha:
        raise BadInput(f"`{path}` is the report of other weights", caused_by=f"field `checkpoint.model_sha256` is "
                       f"{report['checkpoint']['model_sha256'][:12]}…, the checkpoint's model.safetensors is {model_sha[:12]}…",
                       hint="probe this checkpoint first (vla probe)")
    s = report["summary"]
    if require_pass and not s["gate_passed"]:
        raise GateFailed(f"--require-pass: the probe report `{path}` failed its gate",
                         caused_by=f"{s['passed']} of {s['run']} checks passed, pass mark {s['min_pass']}")
    return report


def _trainer_state(ckpt: Path) -> dict | None:
    path = ckpt / checkpoint.STATE
    return read_json(path, schema="trainer-state") if path.is_file() else None


def _last_row(path: Path) -> Any:
    if not path.is_file():
        return None
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def _file_list(root: Path) -> list[dict]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    return [{"path": p.relative_to(root).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files]


# ----------------------------------------------------------------------------- RL init


def rl_init(config: ModelConfig, report: dict | None, rl: RLInitConfig, training: dict) -> dict:
    """The RFT/RL initialisation config (ch07 §7.10: 兼容第8章的 RFT/RL 初始化配置（冻结/学习率建议）)."""
    uncertain = report is not None and any(c["name"] == "open_set_rejection" and c["status"] != "pass" for c in report["checks"])
    beta = rl.kl_coefficient_uncertain if uncertain else rl.kl_coefficient
    return {
        "schema_version": 1,
        "policy": {"weights": "model.safetensors", "config": checkpoint.CONFIG, "head": "heads.policy",
                   "action_dim": config.action.action_dim, "horizon": config.action.horizon,
                   "distribution": "diagonal Gaussian over normalised action chunks (mean, log_std)"},
        "freeze": list(rl.freeze),
        "learning_rates": dict(rl.learning_rates),
        "unfreeze_later": {"modules": list(rl.unfreeze_later), "learning_rate": rl.unfreeze_lr},
        "kl": {"coefficient": beta, "reference": "this bundle's policy (frozen copy)", "direction": "KL(pi_theta || pi_pretrained)",
               "reduction": "per action dimension and step", "reason": "open-set rejection did not pass: stay closer to the prior"
               if uncertain else "default anchor to the pretrained policy"},
        "temperature": {"tau": training["tau"], "logit_scale": training["logit_scale"]},
        "normalisation": "config.json `norm_stats` (observation.state, action)",
    }


# ----------------------------------------------------------------------------- verify and load


def verify(bundle: Path) -> dict:
    """Check every file of the bundle against its manifest; BadInput names the first that differs."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BadInput(f"bundle `{bundle}` does not exist or is not a directory")
    manifest = read_json(bundle / MANIFEST, schema="export-manifest")
    listed = {f["path"]: f for f in manifest["files"]}
    for rel, entry in sorted(listed.items()):
        path = bundle / rel
        if not path.is_file():
            raise BadInput(f"bundle `{bundle}`: file `{rel}` is missing", caused_by="listed in manifest.json")
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise BadInput(f"bundle `{bundle}`: file `{rel}` was modified", caused_by="its sha256 differs from manifest.json")
    extra = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST
                   and p.relative_to(bundle).as_posix() not in listed)
    if extra:
        raise BadInput(f"bundle `{bundle}`: file `{extra[0]}` is not in the manifest", caused_by=f"{len(extra)} unlisted file(s)")
    return manifest


@dataclass
class Policy:
    """A loaded bundle: `policy.predict(frames, instructions, state)` -> actions in the robot's units."""

    model: VLAModel
    manifest: dict
    path: Path

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @torch.no_grad()
    def predict(self, frames: torch.Tensor | np.ndarray, instructions: list[str], state: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """frames uint8 [B, T, 3, H, W]; instructions B strings; state [B, Ds] in the robot's units
        -> {"mean": [B, H, Da], "std": [B, H, Da]} action chunks in the robot's units."""
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames).to(device)
        state = torch.as_tensor(np.asarray(state, np.float32) if not isinstance(state, torch.Tensor) else state).to(device, dtype)
        s = self.model.normalize("observation.state", state)
        fused = self.model.fuse(self.model.encode_vision(frames), self.model.encode_language(list(instructions)))
        mean, log_std = self.model.policy(fused, s)
        zero = self.model.denormalize("action", torch.zeros_like(mean))  # the action mean
        return {"mean": self.model.denormalize("action", mean), "std": self.model.denormalize("action", log_std.exp()) - zero}

    __call__ = predict


def load_policy(path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32, check: bool = True) -> Policy:
    """Load an exported bundle (verified against its manifest unless `check=False`) as a `Policy`."""
    path = Path(path)
    manifest = verify(path) if check else read_json(path / MANIFEST, schema="export-manifest")
    config_doc = read_json(path / checkpoint.CONFIG, schema="checkpoint-config")
    weights_path = path / "model.safetensors"
    try:
        with safetensors.safe_open(str(weights_path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise BadInput(f"cannot read `{weights_path}`", caused_by=str(exc)) from None
    if meta.get("format") != FORMAT:
        raise BadInput(f"`{weights_path}` is not a vla policy bundle", caused_by="metadata `format` is missing")
    if meta.get("config_digest") != checkpoint.config_digest(config_doc):
        raise BadInput(f"`{path / checkpoint.CONFIG}` does not belong to `{weights_path}`", caused_by="config digest differs")
    model = build_model(ModelConfig.from_dict(config_doc, source=str(path / checkpoint.CONFIG)))
    state = model.state_dict()
    weights = {**{k: state[k] for k in model.pretrained_keys() if k not in weights}, **weights}
    checkpoint.load_state_into(model, {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()},
                               source=weights_path)
    return Policy(model=model.to(device=device, dtype=dtype).eval(), manifest=manifest, path=path)


# ----------------------------------------------------------------------------- model card


def model_card(name: str, config: ModelConfig, ck: checkpoint.Checkpoint, training: dict, report: dict | None,
               rl: dict, dtype: str) -> str:
    """README.md of the bundle (Chinese)."""
    counts = sum(int(np.prod(t.shape)) for t in ck.weights.values())
    a, v = config.action, config.vision
    lines = [
        f"# {name}", "",
        "由 `vla export` 从预训练检查点导出的视觉-语言-动作（VLA）策略包（第 7 章 §7.10 导出物）。", "",
        "## 基本信息", "",
        "| 项目 | 值 |", "|---|---|",
        f"| 来源检查点 | `{ck.path}`（第 {ck.step} 步） |",
        f"| 预设 | `{config.preset}` |",
        f"| 参数量 | {counts:,} |",
        f"| 权重精度 | {dtype} |",
        f"| 输入图像 | {v.frames} 帧历史 × {v.image_size}×{v.image_size} RGB（uint8） |",
        f"| 本体状态 | {a.state_dim} 维（按 `config.json` 的 `norm_stats` 归一化） |",
        f"| 动作 | {a.horizon} 步动作块 × {a.action_dim} 维，对角高斯（均值 + 对数标准差） |",
        f"| 温度 τ | {training['tau']:.4g}（logit_scale = {training['logit_scale']:.4g}） |",
        "",
    ]
    lines += ["## 可迁移性体检", ""]
    if report is None:
        lines += ["未附带体检报告（导出时没有给出 `--probe-report`）。", ""]
    else:
        s = report["summary"]
        lines += [f"通过 {s['passed']}/{s['run']} 项（及格线 {s['min_pass']}），门限{'通过' if s['gate_passed'] else '未通过'}。"
                  "完整报告见 `probe_report.json`。", "", "| # | 检查项 | 数值 | 门限 | 结果 |", "|---|---|---|---|---|"]
        for c in report["checks"]:
            value = "—" if c["value"] is None else f"{c['value']:.4g}"
            lines.append(f"| {c['id']} | {c['title']} | {value} | {c['comparator']} {c['threshold']:g} {c['unit']} | {c['status']} |")
        lines.append("")
    lines += [
        "## RL / RFT 初始化建议", "",
        f"- 冻结：{', '.join(f'`{g}`' for g in rl['freeze'])}",
        f"- 学习率：{', '.join(f'`{k}` {v:g}' for k, v in rl['learning_rates'].items())}；稍后解冻 "
        f"{', '.join(f'`{g}`' for g in rl['unfreeze_later']['modules'])}（{rl['unfreeze_later']['learning_rate']:g}）",
        f"- 向预训练策略的 KL 系数 β = {rl['kl']['coefficient']:g}（按动作维度与步平均）",
        "- 详见 `rl_init.json`。", "",
        "## 使用", "",
        "```python",
        "from stages.export import load_policy",
        f'policy = load_policy("dist/{name}")          # 先按 manifest.json 校验每个文件',
        "out = policy.predict(frames, [\"把夹爪移动到目标点\"], state)   # frames uint8 [B, T, 3, H, W]，state 为机器人单位",
        "out[\"mean\"]                                   # [B, H, Da] 动作块（机器人单位）",
        "```", "",
        f"校验：`vla export --verify dist/{name}`（任何文件被改动都会报出其文件名，退出码 2）。", "",
        "## 日志", "",
        "- `logs/metrics.jsonl`：训练损失曲线与评测行；`logs/buckets.jsonl`：Token Bucket 状态（如检查点中存在）。",
        "- `manifest.json` 的 `training` 字段：温度、最后的损失权重与损失、最后的桶状态。", "",
        "## 局限", "",
        "- 体检指标是离线指标；上线前仍需在线仿真小基准（第 5 章 §5.8 经验法则）。",
        "- 动作单位与归一化统计来自训练数据集；换机器人需重新归一化。", "",
    ]
    return "\n".join(lines)
