"""LoRA: train a low-rank update of some Linear layers and nothing else, saved in PEFT's format.

A target Linear `W` becomes `LoRALinear`: y = W x + (alpha / r) * B A dropout(x), with A [r, in] and
B [out, r]. B starts at zero, so the injected model is exactly the base model until training moves B.
The module keeps its name (`model.layers.0.self_attn.q_proj`) and holds `base`, `lora_A`, `lora_B`, so
our state-dict names for A and B are PEFT's names without its `base_model.model.` prefix: an adapter
we save opens with `peft.PeftModel.from_pretrained`, and one PEFT saved loads here.

`merge_lora` folds B A into W and puts plain Linears back, giving a model that saves as an ordinary
checkpoint (before merging, the base weights are named `...q_proj.base.weight`, which no HF loader reads).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from pocketchat.errors import UserError
from pocketchat.files import atomic_write, atomic_write_json
from pocketchat.model import CausalLM

# The Linear layers of a Llama block, by the module names PEFT's `target_modules` uses.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_PREFIX = "base_model.model."  # PEFT wraps the model twice: PeftModel -> LoraModel -> our model
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self):
        self.targets = tuple(self.targets)
        def number(x) -> bool:  # values may come from a JSON file: reject "16" and true
            return isinstance(x, (int, float)) and not isinstance(x, bool)

        if not (number(self.r) and isinstance(self.r, int) and self.r >= 1):
            raise UserError(f"LoRA r must be a positive integer, got {self.r!r}")
        if not (number(self.alpha) and self.alpha > 0):
            raise UserError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not (number(self.dropout) and 0 <= self.dropout < 1):
            raise UserError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
            raise UserError(f"LoRA targets {list(self.targets)} must be distinct names from {', '.join(LORA_TARGETS)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    @classmethod
    def parse(cls, spec: str) -> LoRAConfig:
        """Read the CLI form "r=8,alpha=16,dropout=0.05,targets=q_proj+v_proj"; omitted keys keep defaults."""
        parsers = {"r": int, "alpha": float, "dropout": float, "targets": lambda v: tuple(v.split("+"))}
        values = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, sep, value = (s.strip() for s in item.partition("="))
            if key not in parsers or not sep:
                raise UserError(f"LoRA spec {spec!r}: {item!r} is not key=value with a key from {', '.join(parsers)} "
                                f"(targets from {', '.join(LORA_TARGETS)}, joined by +)")
            try:
                values[key] = parsers[key](value)
            except ValueError:
                raise UserError(f"LoRA spec {spec!r}: {key}={value!r} is not a number") from None
        return cls(**values)


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update; see the module docstring."""

    def __init__(self, base: nn.Linear, config: LoRAConfig):
        super().__init__()
        self.base = base.requires_grad_(False)
        kw = dict(bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Linear(base.in_features, config.r, **kw)
        self.lora_B = nn.Linear(config.r, base.out_features, **kw)
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.scale = config.scale
        # PEFT's initialisation: A like a fresh nn.Linear, B zero so training starts from the base model.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base Linear with B A * scale added to its weight (computed in fp32, stored in its dtype)."""
        delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scale
        self.base.weight.add_(delta.to(self.base.weight.dtype))
        return self.base


def _lora_modules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, child) for every child Linear/LoRALinear named like a LoRA target."""
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if name in LORA_TARGETS and isinstance(child, (nn.Linear, LoRALinear))]


def inject_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Wrap every Linear named in config.targets in a LoRALinear, in place, and freeze everything else."""
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise UserError("the model already has LoRA layers; merge_lora() them before injecting new ones")
    model.requires_grad_(False)
    replaced = 0
    for parent, name, child in _lora_modules(model):
        if name in config.targets:
            setattr(parent, name, LoRALinear(child, config))
            replaced += 1
    if not replaced:
        raise UserError(f"no Linear layer named {' or '.join(config.targets)} in the model")
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable A and B matrices, in module order (what the optimizer gets)."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A.weight, m.lora_B.weight)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and restore plain nn.Linear layers, in place.

    The logits do not change; the parameters stay frozen as inject_lora left them."""
    for parent, name, child in _lora_modules(model):
        if isinstance(child, LoRALinear):
            setattr(parent, name, child.merged())
    return model


def save_adapter(model: nn.Module, config: LoRAConfig, path: str | os.PathLike, base_model_name_or_path: str) -> None:
    """Write a PEFT LoRA folder: adapter_config.json + adapter_model.safetensors (each file atomically).

    base_model_name_or_path is recorded for PEFT's AutoPeftModel, which loads that base model first."""
    from safetensors.torch import save_file

    state = {PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if ".lora_A." in k or ".lora_B." in k}
    if not state:
        raise UserError("the model has no LoRA layers to save (inject_lora first)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write_json(path / CONFIG_FILE, {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model_name_or_path),
        "r": config.r,
        "lora_alpha": int(config.alpha) if float(config.alpha).is_integer() else config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": list(config.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    })


# PEFT options that change the math or the saved weights; an adapter that sets one is refused, not misread.
_UNSUPPORTED = {"bias": "none", "lora_bias": False, "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
                "modules_to_save": None, "layers_to_transform": None, "exclude_modules": None, "rank_pattern": {},
                "alpha_pattern": {}, "layer_replication": None, "trainable_token_indices": None,
                "target_parameters": None, "alora_invocation_tokens": None}


def read_adapter_config(path: str | os.PathLike) -> LoRAConfig:
    """The LoRAConfig of a PEFT LoRA folder, refusing adapters this implementation would compute wrongly."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise UserError(f"{path}: not a LoRA adapter folder (no {CONFIG_FILE})")
    try:
        d = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{file}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(d, dict) or d.get("peft_type") != "LORA":
        raise UserError(f"{file}: peft_type is {d.get('peft_type') if isinstance(d, dict) else None!r}, expected 'LORA'")
    for key, default in _UNSUPPORTED.items():
        if d.get(key) not in (None, default):
            raise UserError(f"{file}: {key}={d[key]!r} is not supported (pocketchat loads plain LoRA adapters)")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in d]
    if missing:
        raise UserError(f"{file}: missing {', '.join(missing)}")
    if not isinstance(d["target_modules"], list):
        raise UserError(f"{file}: target_modules must be a list of module names, got {d['target_modules']!r}")
    try:
        return LoRAConfig(r=d["r"], alpha=d["lora_alpha"], dropout=d.get("lora_dropout", 0.0),
                          targets=tuple(d["target_modules"]))
    except UserError as e:
        raise UserError(f"{file}: {e}") from None


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Inject the LoRA layers a PEFT folder describes and load its weights; returns `model`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_adapter_config(path)
    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise UserError(f"{path}: no {WEIGHTS_FILE}")
    try:
        saved = load_file(file)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{file}: corrupt safetensors file ({e})") from None
    saved = {k.removeprefix(PEFT_PREFIX): v for k, v in saved.items()}
    inject_lora(model, config)
    params = {k: v for k, v in model.state_dict(keep_vars=True).items() if ".lora_A." in k or ".lora_B." in k}
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise UserError(f"{file}: weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, param in params.items():
            if saved[name].shape != param.shape:
                raise UserError(f"{file}: {name} has shape {list(saved[name].shape)}, expected {list(param.shape)}")
            param.copy_(saved[name])
    return model


def load_model(path: str | os.PathLike, device="cpu", merge: bool = True) -> CausalLM:
    """A model folder, or a PEFT adapter folder on top of the base its adapter_config.json names.

    Every `--model` flag goes through here, so an SFT run trained with --lora is used like any other model.
    merge=True folds the adapter into the weights: inference then costs nothing extra."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        return CausalLM.from_pretrained(path, device=device)
    base = json.loads((path / CONFIG_FILE).read_text()).get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise UserError(f"{path / CONFIG_FILE}: base_model_name_or_path {base!r} is not a local model folder")
    model = load_adapter(CausalLM.from_pretrained(base), path)
    # merged, it is a plain model like any other: trainable again (inject_lora froze the base weights)
    return (merge_lora(model).requires_grad_(True) if merge else model).to(device)
