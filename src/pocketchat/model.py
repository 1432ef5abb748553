"""The Llama-architecture decoder, in one file.

RMSNorm, rotary position embeddings, grouped-query attention through SDPA, SwiGLU MLP. Module and parameter
names mirror Hugging Face's `LlamaForCausalLM` exactly (`model.layers.0.self_attn.q_proj.weight`, ...), so a
checkpoint is a plain HF folder: `transformers`, vLLM and llama.cpp open what we train, and we open theirs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketchat.errors import UserError
from pocketchat.files import atomic_write, atomic_write_json


@dataclass
class ModelConfig:
    """Field names are Hugging Face's `LlamaConfig` names, so config.json maps one to one."""

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 0
    pad_token_id: int | None = 1

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise UserError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:  # RoPE rotates the two halves of each head against each other
            raise UserError(f"head_dim ({self.head_dim}) must be even: hidden_size / num_attention_heads, or set head_dim")

    def to_hf(self) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            **asdict(self),
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "rope_scaling": None,
            "torch_dtype": "float32",
        }

    @classmethod
    def from_hf(cls, d: dict, where: str = "config.json") -> "ModelConfig":
        """Read a Llama config.json; refuse what this model does not implement rather than load it wrongly."""
        if d.get("model_type") != "llama":
            raise UserError(f"{where}: model_type is {d.get('model_type')!r}; pocketchat loads Llama-architecture models only")
        if d.get("hidden_act", "silu") != "silu" or d.get("attention_bias") or d.get("mlp_bias"):
            raise UserError(f"{where}: unsupported Llama variant (needs silu, no attention/MLP biases)")
        rope = d.get("rope_scaling") or d.get("rope_parameters")
        if rope and rope.get("rope_type", rope.get("type", "default")) != "default":
            raise UserError(f"{where}: rope scaling {rope!r} is not supported")
        if rope and "rope_theta" in rope and "rope_theta" not in d:
            d = {**d, "rope_theta": rope["rope_theta"]}
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # Normalise in fp32 like the reference implementation; bf16 variance is too coarse.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, 1, T, head_dim] in fp32, HF layout: the two halves of each head share frequencies.

    Computed from the positions on every call (cheap) rather than cached in a buffer that `.to(bfloat16)`
    would silently round."""
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(half, dtype=torch.float32, device=position_ids.device) / half))
    freqs = position_ids.float().unsqueeze(-1) * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """x: [B, H, T, D]; cos/sin: [B, 1, T, D]. Rotates (x1, x2) halves, the `rotate_half` convention."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin, attn_mask=None, cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # all keys/values so far: [B, n_kv, S, D]
        S = k.shape[2]
        if attn_mask is None and T > 1 and S > T:
            # Chunked prefill onto a cache: causal with the new queries sitting at the end of the keys.
            attn_mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
        # A branch, not `is_causal=... and T > 1`: under torch.compile with dynamic shapes T > 1 is a symbolic bool,
        # which sdpa does not take (the compiled graph would break at every layer); a branch guards on it instead.
        is_causal = False
        if attn_mask is None and T > 1:
            is_causal = True
        sdpa = dict(attn_mask=attn_mask, is_causal=is_causal, enable_gqa=self.n_kv != self.n_head)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # PyTorch's CPU flash attention runs its backward about twice as fast in fp32 as in bf16 (measured: a
            # tiny-preset training step ~18% faster); the projections around it stay in bf16.
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **sdpa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, **sdpa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, attn_mask=None, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """The decoder body: embeddings -> blocks -> final norm. Returns hidden states; heads live outside."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, position_ids=None, attn_mask=None, cache=None):
        """
        input_ids: [B, T]. position_ids: [B, T] (default 0..T-1, or continuing after the cache).
        attn_mask: optional bool [B or 1, 1, T, S], True = may attend (padding, packed documents); None = causal.
        cache: optional object with `update(layer_idx, k, v) -> (k_all, v_all)` (see pocketchat.engine).
        """
        B, T = input_ids.shape
        if position_ids is None:
            start = cache.length if cache is not None else 0
            position_ids = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        if not torch.compiler.is_compiling() and position_ids.max() >= self.config.max_position_embeddings:
            raise ValueError(f"position {int(position_ids.max())} is past the context length {self.config.max_position_embeddings}")
        x = self.embed_tokens(input_ids)
        cos, sin = rope(position_ids, self.config.head_dim, self.config.rope_theta)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, attn_mask, cache)
        return self.norm(x)


class HFFolder:
    """save_pretrained / from_pretrained for both heads (CausalLM, RewardModel): one path, so the two folder kinds
    never drift apart. A head says which JSON files describe it (`hf_files`) and how it ties weights (`tie_weights`)."""

    TIED = ("lm_head.weight",)  # safetensors refuses shared tensors: a tied head is left out and re-tied on load
    KIND = ""  # what a folder whose weights don't match is not, for the error

    def save_pretrained(self, path: str | os.PathLike, state_dict: dict | None = None) -> None:
        """Write model.safetensors and the head's JSON files into `path` (atomically per file).

        state_dict: the weights to write if not this module's own (e.g. gathered from FSDP shards)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in (state_dict or self.state_dict()).items()}
        if self.config.tie_word_embeddings:
            for key in self.TIED:
                state.pop(key, None)
        atomic_write(path / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        for name, content in self.hf_files().items():
            atomic_write_json(path / name, content)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32, device="cpu"):
        """Load a local Llama-architecture HF folder of this head (ours, TinyLlama, SmolLM, Llama, ...)."""
        path = Path(path)
        config = load_config(path)
        with torch.device("meta"):  # no random init of weights about to be replaced
            model = cls(config)
        state = load_state_dict(path)
        tied = set(cls.TIED) & set(model.state_dict()) if config.tie_word_embeddings else set()
        for key in tied:
            state.pop(key, None)
        missing, unexpected = set(model.state_dict()) - set(state) - tied, set(state) - set(model.state_dict())
        if missing or unexpected:
            raise UserError(f"{path}: {cls.KIND}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
        return model.to(device=device, dtype=dtype)


class CausalLM(HFFolder, nn.Module):
    """`LlamaForCausalLM`: the body plus a language-modelling head (optionally tied to the embeddings)."""

    KIND = "weights do not match a LlamaForCausalLM"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        self.tie_weights()

    def _init_weights(self, module):
        # The HF Llama initialisation: N(0, initializer_range) for every matrix, ones for the norms.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)

    def forward(self, input_ids, targets=None, *, position_ids=None, attn_mask=None, cache=None, logits_to_keep=0):
        """Returns logits [B, T, V], or the mean cross-entropy over targets != -100 when targets are given.
        logits_to_keep > 0 (as in transformers) keeps the logits of the last that many positions only: scoring a
        completion needs none at its prompt's positions, and the vocabulary projection is a large part of a
        small model's work."""
        h = self.model(input_ids, position_ids, attn_mask, cache)
        if logits_to_keep:
            h = h[:, -logits_to_keep:].contiguous()  # a strided slice would send lm_head's matmuls down a batched path
        if targets is None:
            return self.lm_head(h)
        logits = self.lm_head(h).float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)

    def num_params(self, exclude_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.model.embed_tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 per matmul weight (forward + backward) plus attention scores (PaLM appendix B)."""
        c = self.config
        # The lm_head matmul counts even when its weight is tied to the (lookup-only) embedding.
        matmul = sum(p.numel() for n, p in self.model.layers.named_parameters() if "norm" not in n)
        matmul += self.lm_head.weight.numel()
        attention = 12 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * seq_len
        return 6 * matmul + attention

    def hf_files(self) -> dict[str, dict]:
        generation = {k: getattr(self.config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        return {"config.json": self.config.to_hf(), "generation_config.json": generation}

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight


class RewardModel(HFFolder, nn.Module):
    """`LlamaForSequenceClassification` with one label: the decoder body plus a scalar `score` head.

    The reward of a sequence is the score at its last real token (the end-of-turn token of the completion);
    right padding is skipped by reading at position `lengths - 1`.
    """

    KIND = "not a reward model (LlamaForSequenceClassification)"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.score = nn.Linear(config.hidden_size, 1, bias=False)
        self.apply(lambda m: nn.init.normal_(m.weight, std=config.initializer_range) if isinstance(m, (nn.Linear, nn.Embedding)) else None)

    def forward(self, input_ids, lengths=None, *, position_ids=None, attn_mask=None):
        """Rewards [B] read at index lengths-1 (default: the last position), or per-token values [B, T] if
        lengths is the string "all" (what a PPO critic needs)."""
        values = self.score(self.model(input_ids, position_ids, attn_mask)).squeeze(-1)
        if isinstance(lengths, str) and lengths == "all":
            return values
        if lengths is None:
            return values[:, -1]
        return values.gather(1, (lengths - 1).long().unsqueeze(1)).squeeze(1)

    @classmethod
    def from_causal_lm(cls, lm: CausalLM) -> "RewardModel":
        """Initialise from a (SFT) language model: same body, fresh zero-mean score head."""
        rm = cls(lm.config).to(next(lm.parameters()).device)
        rm.model.load_state_dict(lm.model.state_dict())
        return rm

    def hf_files(self) -> dict[str, dict]:
        hf = self.config.to_hf() | {"architectures": ["LlamaForSequenceClassification"], "num_labels": 1,
                                     "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
        return {"config.json": hf}

    def tie_weights(self) -> None:  # the score head is never tied
        pass


def load_config(path: Path) -> ModelConfig:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise UserError(f"{path}: not a checkpoint folder (no config.json)")
    try:
        d = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{file}: invalid JSON ({e})") from None
    return ModelConfig.from_hf(d, where=str(file))


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder's safetensors file(s), sharded (`model.safetensors.index.json`) or not."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    state = {}
    for name in files:
        f = path / name
        if not f.is_file():
            raise UserError(f"{path}: missing weights file {name}")
        try:
            state.update(load_file(f))
        except (SafetensorError, OSError) as e:
            raise UserError(f"{f}: corrupt safetensors file ({e})") from None
    return state
