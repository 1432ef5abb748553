"""A tiny training run used by test_loop.py, launched as one process or under torchrun."""

import sys

import torch

from pocketchat.config import TrainConfig
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.train import dist
from pocketchat.train.loop import train

VOCAB, SEQ = 64, 16


def tiny_model() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ))


def make_get_batch(batch_size: int, crash_at: int | None = None):
    """Deterministic in the step: a counting pattern with a per-step random offset (learnable, not trivial)."""

    def get_batch(step, index, count):
        if crash_at is not None and step == crash_at:
            raise KeyboardInterrupt("simulated crash")
        g = torch.Generator().manual_seed(step)
        start = torch.randint(0, VOCAB, (batch_size, 1), generator=g)
        rows = (start + torch.arange(SEQ + 1) * 3) % VOCAB
        per = batch_size // count
        rows = rows[index * per : (index + 1) * per]
        return {"input_ids": rows[:, :-1], "targets": rows[:, 1:]}

    return get_batch


def run(out: str, fsdp: bool = False, micro_batch_size: int = 0) -> None:
    cfg = TrainConfig(steps=6, batch_size=8, micro_batch_size=micro_batch_size, seq_len=SEQ, lr=1e-2,
                      warmup_steps=2, eval_every=0, save_every=3, log_every=1, dtype="float32", fsdp=fsdp)
    info = dist.setup("cpu")
    train(tiny_model(), cfg, out, make_get_batch(cfg.batch_size), info=info)
    dist.teardown()


if __name__ == "__main__":
    run(sys.argv[1], fsdp=sys.argv[2] == "fsdp", micro_batch_size=int(sys.argv[3]) if len(sys.argv) > 3 else 0)
