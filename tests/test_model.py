"""The model is exactly Hugging Face's LlamaForCausalLM: logits parity both ways, plus cache and mask semantics."""

import json

import pytest
import torch

from pocketchat.errors import UserError
from pocketchat.model import CausalLM, ModelConfig

transformers = pytest.importorskip("transformers")


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0)
    return ModelConfig(**{**base, **kw})


def hf_model(config: ModelConfig):
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in config.to_hf().items() if k not in ("architectures", "torch_dtype")})
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(hf_cfg).eval()


@pytest.mark.parametrize("tied", [True, False])
def test_loads_transformers_checkpoint_with_identical_logits(tmp_path, tied):
    config = tiny_config(tie_word_embeddings=tied)
    ref = hf_model(config)
    ref.save_pretrained(tmp_path)
    ours = CausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, config.vocab_size, (3, 40))
    with torch.no_grad():
        expected = ref(ids).logits
        got = ours(ids)
    assert (got - expected).abs().max().item() < 1e-4


def test_saved_folder_opens_in_transformers_with_same_logits(tmp_path):
    torch.manual_seed(1)
    ours = CausalLM(tiny_config(rope_theta=500.0)).eval()
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 300, (2, 50))
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max().item() < 1e-4


def test_loss_matches_shifted_cross_entropy():
    torch.manual_seed(0)
    model = CausalLM(tiny_config()).eval()
    ids = torch.randint(0, 300, (2, 20))
    targets = ids.roll(-1, dims=1)
    targets[:, -1] = -100
    logits = model(ids)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 300), ids[:, 1:].reshape(-1))
    assert torch.allclose(model(ids, targets), expected, atol=1e-6)


def test_block_mask_and_position_reset_equal_separate_documents():
    """Two packed documents with a block-diagonal mask and restarted positions give each one's own logits."""
    torch.manual_seed(0)
    model = CausalLM(tiny_config()).eval()
    a, b = torch.randint(0, 300, (1, 7)), torch.randint(0, 300, (1, 5))
    packed = torch.cat([a, b], dim=1)
    seg = torch.tensor([[0] * 7 + [1] * 5])
    mask = (seg.unsqueeze(-1) == seg.unsqueeze(-2)) & torch.ones(12, 12, dtype=torch.bool).tril()
    pos = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        out = model(packed, position_ids=pos, attn_mask=mask.unsqueeze(1))
        assert torch.allclose(out[:, :7], model(a), atol=1e-5)
        assert torch.allclose(out[:, 7:], model(b), atol=1e-5)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        CausalLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match="Llama-architecture"):
        CausalLM.from_pretrained(tmp_path)


def test_reward_model_opens_in_transformers_as_sequence_classifier(tmp_path):
    from pocketchat.model import RewardModel

    torch.manual_seed(0)
    lm = CausalLM(tiny_config(pad_token_id=1))
    rm = RewardModel.from_causal_lm(lm).eval()
    torch.nn.init.normal_(rm.score.weight)
    rm.save_pretrained(tmp_path)
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(2, 300, (2, 12))
    ids[1, 9:] = 1  # right padding: transformers reads the last non-pad token, we read at lengths - 1
    lengths = torch.tensor([12, 9])
    with torch.no_grad():
        assert torch.allclose(rm(ids, lengths), theirs(ids).logits.squeeze(-1), atol=1e-4)
        assert torch.allclose(RewardModel.from_pretrained(tmp_path)(ids, lengths), rm(ids, lengths))


@pytest.mark.parametrize("tied", [True, False])
def test_flops_per_token_counts_every_matmul_including_a_tied_lm_head(tied):
    c = tiny_config(tie_word_embeddings=tied)
    d, kv = c.hidden_size, c.num_key_value_heads * c.head_dim
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * c.intermediate_size  # q, k+v, o, gate+up+down
    matmul = c.num_hidden_layers * per_layer + c.vocab_size * d
    attention = 12 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * 32
    assert CausalLM(c).flops_per_token(32) == 6 * matmul + attention
