"""Stage 1: a base model that predicts the next token of raw text.

tokenizer (trained on the corpus, or given) -> token shards -> Llama model -> the shared loop on random windows,
evaluated by validation loss and bits per byte on whole held-out documents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from pocketchat.config import TrainConfig
from pocketchat.data.corpus import iter_documents
from pocketchat.data.shards import build_shards, load_tokens
from pocketchat.errors import UserError
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.tokenizer import Tokenizer
from pocketchat.train import dist
from pocketchat.train.loop import hf_export, train


@dataclass
class PretrainConfig(TrainConfig):
    # model shape (ModelConfig fields)
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    # data
    data: str = "embedded"  # "embedded", a folder of .txt, a .txt, .jsonl or .parquet file
    text_field: str = "text"  # for .jsonl / .parquet
    data_dir: str = ""  # where token shards go / are read from; default RUN/data
    tokenizer: str = ""  # an existing tokenizer folder; default: train one on the corpus into RUN/
    sample_prompt: str = "KING HENRY:"  # shown at every eval so the log shows what the model writes


PRESETS: dict[str, dict] = {
    # CI: the whole path (tokenizer, shards, model, eval, checkpoint) in well under a minute on 2 cores.
    "smoke": dict(vocab_size=512, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, seq_len=128, batch_size=8, steps=40, warmup_steps=5, lr=3e-3,
                  eval_every=20, eval_batches=4, save_every=20, log_every=5),
    # ~12 minutes on 2 CPU cores, data and tokenizer included (README has the measured bits per byte). Muon: the
    # same steps with AdamW leave the model unable to copy a number from its context.
    "tiny": dict(vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=6, num_attention_heads=8,
                 num_key_value_heads=4, seq_len=256, batch_size=32, steps=400, warmup_steps=30, lr=2e-3, optimizer="muon",
                 compile=True, eval_every=100, eval_batches=16, save_every=100, log_every=10),
    # GPU presets (documented, not run in CI).
    "small": dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, seq_len=512, batch_size=64, steps=5000, warmup_steps=200, lr=1e-3,
                  eval_every=500, eval_batches=32, save_every=500, log_every=20),
    "gpt2": dict(vocab_size=32768, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=12, seq_len=1024, batch_size=256, micro_batch_size=32, steps=20000, warmup_steps=700,
                 lr=6e-4, eval_every=1000, eval_batches=64, save_every=1000, log_every=50),
}


def model_config(cfg: PretrainConfig, tokenizer: Tokenizer) -> ModelConfig:
    names = {f.name for f in fields(ModelConfig)}
    shape = {k: getattr(cfg, k) for k in names if hasattr(cfg, k)}
    shape.update(vocab_size=tokenizer.vocab_size, max_position_embeddings=cfg.seq_len,
                 bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    return ModelConfig(**shape)


def prepare_tokenizer(cfg: PretrainConfig, out: Path, info: dist.DistInfo) -> Tokenizer:
    """Load the given tokenizer, or train one on the corpus's train split (rank 0; the others wait)."""
    if cfg.tokenizer:
        return Tokenizer.load(cfg.tokenizer)
    if info.is_main and not (out / "tokenizer.json").is_file():
        texts = (doc.text for doc in iter_documents(cfg.data, split="train", text_field=cfg.text_field))
        Tokenizer.train(texts, vocab_size=cfg.vocab_size).save(out)
    dist.barrier()
    return Tokenizer.load(out)


def prepare_shards(cfg: PretrainConfig, out: Path, tokenizer: Tokenizer, info: dist.DistInfo) -> Path:
    data_dir = Path(cfg.data_dir) if cfg.data_dir else out / "data"
    if info.is_main and not (data_dir / "meta.json").is_file():
        build_shards(cfg.data, tokenizer, data_dir, text_field=cfg.text_field)
    dist.barrier()
    return data_dir


def window_batch(tokens, starts: np.ndarray, seq_len: int) -> dict[str, torch.Tensor]:
    rows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    rows = torch.from_numpy(rows)
    return {"input_ids": rows[:, :-1].contiguous(), "targets": rows[:, 1:].contiguous()}


def run(cfg: PretrainConfig, out: str | Path, resume: bool = False) -> list[dict]:
    out = Path(out)
    info = dist.setup(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = prepare_tokenizer(cfg, out, info)
    data_dir = prepare_shards(cfg, out, tokenizer, info)
    train_tokens, val_tokens = load_tokens(data_dir, "train"), load_tokens(data_dir, "val")
    for name, arr in (("train", train_tokens), ("val", val_tokens)):
        if len(arr) <= cfg.seq_len + 1:
            raise UserError(f"{data_dir}: the {name} split has {len(arr)} tokens, fewer than seq_len+1 = {cfg.seq_len + 1}")

    mcfg = model_config(cfg, tokenizer)
    torch.manual_seed(cfg.seed)
    model = CausalLM(mcfg).to(info.device)
    if info.is_main:
        print(f"model: {model.num_params() / 1e6:.2f} M parameters (plus {mcfg.vocab_size * mcfg.hidden_size / 1e6:.2f} M embedding), "
              f"{len(train_tokens) / 1e6:.2f} M train tokens, device {info.device}")

    def get_batch(step: int, index: int, count: int) -> dict[str, torch.Tensor]:
        # The whole global batch is drawn from a generator seeded by the step, then sliced: resume and any
        # number of ranks see exactly the same data.
        rng = np.random.default_rng([cfg.seed, step])
        starts = rng.integers(0, len(train_tokens) - cfg.seq_len - 1, size=cfg.batch_size)
        per = cfg.batch_size // count
        return window_batch(train_tokens, starts[index * per : (index + 1) * per], cfg.seq_len)

    # Fixed, evenly spaced windows over the held-out documents: the same every eval, every run.
    n_windows = min(cfg.eval_batches * cfg.batch_size, (len(val_tokens) - 1) // cfg.seq_len)
    eval_starts = np.linspace(0, len(val_tokens) - cfg.seq_len - 1, n_windows).astype(np.int64)
    bytes_per_token = val_tokens.num_bytes / len(val_tokens)

    def evaluate(model: CausalLM) -> dict:
        losses = []
        for i in range(0, len(eval_starts), cfg.batch_size):
            batch = window_batch(val_tokens, eval_starts[i : i + cfg.batch_size], cfg.seq_len)
            losses.append(model(batch["input_ids"].to(info.device), batch["targets"].to(info.device)).item())
        val_loss = float(np.mean(losses))
        return {"val_loss": val_loss, "val_bpb": val_loss / math.log(2) / bytes_per_token,
                "sample": sample(model, tokenizer, cfg.sample_prompt, info.device)}

    evals = train(model, cfg, out, get_batch, info=info, evaluate=evaluate, export=hf_export(model, tokenizer), resume=resume,
                  flops_per_token=model.flops_per_token(cfg.seq_len), desc="pretrain")
    dist.teardown()
    return evals


def sample(model: CausalLM, tokenizer: Tokenizer, prompt: str, device, max_new_tokens: int = 48) -> str:
    """A short seeded sample for the log (full recompute per token: a few dozen tokens, no cache needed)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = [tokenizer.eos_id] + tokenizer.encode(prompt)
    for _ in range(max_new_tokens):
        ctx = torch.tensor([ids[-model.config.max_position_embeddings :]], device=device)
        probs = torch.softmax(model(ctx)[0, -1].float() / 0.8, dim=-1).cpu()
        ids.append(int(torch.multinomial(probs, 1, generator=g)))
    return prompt + tokenizer.decode(ids[len(tokenizer.encode(prompt)) + 1 :])
