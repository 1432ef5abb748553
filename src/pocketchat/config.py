"""Configs are flat dataclasses; presets are dicts of overrides; TOML files and `--key=value` flags override them.

Flat keys (`--lr=1e-3`, not `--optim.lr=1e-3`) keep the command line short; every stage's config inherits the
shared training-loop fields from `TrainConfig` and adds its own.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from pocketchat.errors import UserError


@dataclass
class TrainConfig:
    """The shared training loop's knobs (pretrain, SFT, RM, DPO and the RL learner all use these)."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # sequences per optimizer step, summed over all ranks and micro-batches
    micro_batch_size: int = 0  # sequences per forward pass per rank; 0 = batch_size / world size (no accumulation)
    seq_len: int = 256
    optimizer: str = "adamw"  # adamw | muon (Muon on hidden matrices, AdamW on the rest; see train/optim.py)
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # the schedule decays to lr * min_lr_ratio
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    dtype: str = "auto"  # auto | float32 | bfloat16 (auto: bf16 autocast where the hardware is fast at it)
    compile: bool = False  # torch.compile the training step, and RL's decode step (~30 s of compiling; needs g++ on CPU)
    eval_every: int = 200  # 0 = only at the end
    eval_batches: int = 16
    save_every: int = 200  # 0 = only at the end
    log_every: int = 10
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    fsdp: bool = False  # under torchrun: shard parameters with FSDP2 instead of replicating with DDP


# String fields that take one of a few values (checked wherever a config is built).
CHOICES = {"optimizer": ("adamw", "muon"), "schedule": ("cosine", "linear", "constant"),
           "dtype": ("auto", "float32", "bfloat16")}


def coerce(value, typ, key: str, where: str):
    """Turn a TOML value or a command-line string into the field's type, or say clearly why not."""
    options = typing.get_args(typ) if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union else (typ,)
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        if type(None) in options:
            return None
        raise UserError(f"{where}: {key} cannot be None")
    errors = []
    for t in (o for o in options if o is not type(None)):
        try:
            if t is bool:
                if isinstance(value, bool):
                    return value
                if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                    return value.lower() in ("true", "1", "yes")
                raise ValueError
            if t is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
            if t is float:
                if isinstance(value, bool):
                    raise ValueError
                return float(value)
            if t is str:
                if not isinstance(value, str):
                    raise ValueError
                return value
            if typing.get_origin(t) in (list, tuple):
                return value if isinstance(value, list) else [v for v in str(value).split(",") if v]
        except (TypeError, ValueError):
            errors.append(getattr(t, "__name__", str(t)))
    raise UserError(f"{where}: {key} must be {' or '.join(errors)}, got {value!r}")


def apply_overrides(cfg, overrides: dict, where: str):
    """Return a copy of `cfg` with `overrides` applied; unknown keys are named with the valid ones listed."""
    valid = {f.name for f in fields(cfg)}
    types_ = typing.get_type_hints(type(cfg))
    changes = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in valid:
            raise UserError(f"{where}: unknown config key {key!r}. Valid keys: {', '.join(sorted(valid))}")
        changes[name] = coerce(value, types_[name], name, where)
        allowed = CHOICES.get(name)
        if allowed and changes[name] not in allowed:
            raise UserError(f"{where}: {name} must be one of {' | '.join(allowed)}, got {changes[name]!r}")
    return dataclasses.replace(cfg, **changes)


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`--key=value` / `--key value` pairs from the command line (after the stage's own flags were taken)."""
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}; config overrides look like --key=value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, value = arg[2:], args[i + 1]
            i += 1
        else:
            key, value = arg[2:], "true"
        out[key] = value
        i += 1
    return out


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: invalid TOML ({e})") from None


def build_config(cls, presets: dict[str, dict], preset: str | None, config_file: str | None, overrides: dict):
    """Defaults <- preset <- TOML file <- command-line overrides."""
    cfg = cls()
    if preset is not None:
        if preset not in presets:
            raise UserError(f"unknown preset {preset!r}. Valid presets: {', '.join(presets)}")
        cfg = apply_overrides(cfg, presets[preset], f"preset {preset}")
    if config_file:
        cfg = apply_overrides(cfg, load_toml(config_file), str(config_file))
    return apply_overrides(cfg, overrides, "command line")
