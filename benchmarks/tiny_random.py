"""The benchmarks' stand-in model: random weights in the `tiny` pretraining preset's shape, with a tokenizer
trained quickly on the embedded corpus (or on `fallback_text` where the corpus packages are missing)."""

from __future__ import annotations

import torch

from pocketchat.model import CausalLM, ModelConfig
from pocketchat.tokenizer import Tokenizer
from pocketchat.train.pretrain import PRESETS


def tiny_random(fallback_text: list[str], seed: int = 0, corpus_chars: int = 2_000_000) -> tuple[CausalLM, Tokenizer]:
    from pocketchat.data.corpus import embedded_documents

    p = PRESETS["tiny"]
    texts, chars = [], 0
    try:
        for doc in embedded_documents("train"):
            texts.append(doc.text)
            chars += len(doc.text)
            if chars > corpus_chars:
                break
    except Exception as e:  # the corpus packages are missing: any English will do for random weights
        print(f"note: embedded corpus unavailable ({e}); training the tokenizer on this script's text")
        texts = fallback_text
    tok = Tokenizer.train(texts, vocab_size=p["vocab_size"])
    config = ModelConfig(**{k: p[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "num_key_value_heads")},
                         vocab_size=tok.vocab_size, max_position_embeddings=p["seq_len"],
                         bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    torch.manual_seed(seed)
    return CausalLM(config), tok
