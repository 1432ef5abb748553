"""Training throughput of the `tiny` pretraining config: pocketchat vs transformers' LlamaForCausalLM, same run.

Prints tokens/s and MFU against the matmul peak measured in this run. Usage:
    python benchmarks/bench_train.py [--steps 20] [--batch 32] [--dtype auto|float32|bfloat16] [--optimizer muon|adamw] [--compile]

Both models get the same optimizer (the preset's, Muon by default), so the rows differ only in the model code.
"""

from __future__ import annotations

import argparse
import time

import torch

from pocketchat.hardware import autocast_dtype, matmul_flops
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.train.loop import lm_loss
from pocketchat.train.optim import build_optimizer
from pocketchat.train.pretrain import PRESETS


def tiny_config() -> ModelConfig:
    p = PRESETS["tiny"]
    return ModelConfig(vocab_size=p["vocab_size"], hidden_size=p["hidden_size"], intermediate_size=p["intermediate_size"],
                       num_hidden_layers=p["num_hidden_layers"], num_attention_heads=p["num_attention_heads"],
                       num_key_value_heads=p["num_key_value_heads"], max_position_embeddings=p["seq_len"])


def time_steps(step, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def make_step(model, loss_fn, batch, amp, optimizer):
    def step():
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=PRESETS["tiny"]["batch_size"])
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--optimizer", default=PRESETS["tiny"]["optimizer"], choices=["muon", "adamw"])
    ap.add_argument("--compile", action="store_true", help="also time both with torch.compile")
    args = ap.parse_args()

    config = tiny_config()
    T = config.max_position_embeddings
    amp = autocast_dtype(torch.device("cpu"), args.dtype)
    peak = matmul_flops("cpu", amp or torch.float32)
    ids = torch.randint(0, config.vocab_size, (args.batch, T + 1))
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}
    tokens = args.batch * T
    rows = []

    def optimizer(model):
        return build_optimizer(model, args.optimizer, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), fused=True)

    def ours(compiled: bool):
        torch.manual_seed(0)
        model = CausalLM(config)
        if compiled:
            model.compile()
        return model, lm_loss, optimizer(model)

    def theirs(compiled: bool):
        import transformers

        hf_cfg = transformers.LlamaConfig(**{k: v for k, v in config.to_hf().items() if k not in ("architectures", "torch_dtype")})
        model = transformers.LlamaForCausalLM(hf_cfg)
        model.config._attn_implementation = "sdpa"
        if compiled:
            model.compile()
        return model, lambda m, b: m(input_ids=b["input_ids"], labels=b["input_ids"]).loss, optimizer(model)

    flops_per_token = CausalLM(config).flops_per_token(T)
    modes = [False, True] if args.compile else [False]
    for compiled in modes:
        suffix = " + torch.compile" if compiled else ""
        pair = []
        for name, build in (("pocketchat", ours), ("transformers LlamaForCausalLM", theirs)):
            model, loss_fn, opt = build(compiled)
            pair.append((name + suffix, tokens / time_steps(make_step(model, loss_fn, batch, amp, opt), args.steps)))
        # the last column: against transformers in the same mode, eager or compiled
        rows += [(name, tps, tps * flops_per_token / peak, tps / pair[1][1]) for name, tps in pair]

    dtype = "bf16 autocast" if amp else "fp32"
    print(f"\ntiny config: {CausalLM(config).num_params() / 1e6:.2f} M non-embedding params, batch {args.batch} x {T}, "
          f"{dtype}, {args.optimizer}, {torch.get_num_threads()} threads; measured matmul peak {peak / 1e9:.0f} GFLOP/s\n")
    print(f"| {'implementation':<45} | {'tokens/s':>9} | {'MFU':>5} | {'vs transformers':>15} |")
    print(f"|{'-' * 47}|{'-' * 11}|{'-' * 7}|{'-' * 17}|")
    for name, tps, mfu, ratio in rows:
        print(f"| {name:<45} | {tps:>9,.0f} | {mfu:>5.0%} | {ratio:>14.2f}x |")


if __name__ == "__main__":
    main()
