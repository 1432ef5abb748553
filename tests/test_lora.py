"""LoRA: PEFT reads our adapters and we read PEFT's (same logits), merging is exact, training moves only A and B."""

import json

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file

from pocketchat.errors import UserError
from pocketchat.lora import (LoRAConfig, LoRALinear, inject_lora, load_adapter, lora_parameters, merge_lora,
                             save_adapter)
from pocketchat.model import CausalLM, ModelConfig

CONFIG = ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def tiny_model(seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(CONFIG).eval()


def randomize_lora(model) -> None:
    """Fresh adapters are a no-op (B = 0); give A and B values that change the logits."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.1)


def test_parse_spec():
    assert LoRAConfig.parse("r=4,alpha=8,targets=q_proj+v_proj+down_proj") == LoRAConfig(
        r=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"))
    assert LoRAConfig.parse("dropout=0.1") == LoRAConfig(dropout=0.1)
    assert LoRAConfig.parse("r=16").scale == 1.0


@pytest.mark.parametrize("spec, message", [
    ("rank=8", "'rank=8' is not key=value with a key from r, alpha, dropout, targets"),
    ("r", "'r' is not key=value"),
    ("r=eight", "r='eight' is not a number"),
    ("r=0", "r must be a positive integer"),
    ("dropout=1", r"dropout must be in \[0, 1\)"),
    ("targets=q_proj+lm_head", "must be distinct names from q_proj, k_proj, v_proj, o_proj, gate_proj"),
])
def test_parse_errors_name_the_problem(spec, message):
    with pytest.raises(UserError, match=message):
        LoRAConfig.parse(spec)


def test_inject_wraps_targets_and_keeps_names():
    model = inject_lora(tiny_model(), LoRAConfig(r=4, targets=("q_proj", "up_proj")))
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert wrapped == {f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "mlp.up_proj")}
    assert "model.layers.1.mlp.up_proj.lora_B.weight" in model.state_dict()
    with pytest.raises(UserError, match="already has LoRA layers"):
        inject_lora(model, LoRAConfig())


def test_peft_opens_our_adapter_with_same_logits(tmp_path):
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in CONFIG.to_hf().items() if k not in ("architectures", "torch_dtype")})
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(hf_cfg).save_pretrained(tmp_path / "base")
    ours = CausalLM.from_pretrained(tmp_path / "base").eval()
    config = LoRAConfig(r=4, alpha=8, targets=("q_proj", "v_proj", "o_proj", "gate_proj"))
    inject_lora(ours, config)
    randomize_lora(ours)
    save_adapter(ours, config, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))

    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (saved["peft_type"], saved["r"], saved["lora_alpha"]) == ("LORA", 4, 8)
    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys and len(keys) == 2 * 4 * 2

    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert set(peft.get_peft_model_state_dict(theirs)) == keys
    ids = torch.randint(0, CONFIG.vocab_size, (2, 30))
    with torch.no_grad():
        got, expected = ours(ids), theirs(input_ids=ids).logits
        assert (got - expected).abs().max().item() < 1e-4
        with theirs.disable_adapter():
            assert (got - theirs(input_ids=ids).logits).abs().max().item() > 1e-2  # the adapter matters


def test_we_load_a_peft_adapter_with_same_logits(tmp_path):
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in CONFIG.to_hf().items() if k not in ("architectures", "torch_dtype")})
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_cfg)
    hf.save_pretrained(tmp_path / "base")
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=2, lora_alpha=6, target_modules=["k_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)
    theirs.save_pretrained(tmp_path / "adapter")

    ours = load_adapter(CausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
    assert {n.rsplit(".", 1)[-1] for n, m in ours.named_modules() if isinstance(m, LoRALinear)} == {"k_proj", "down_proj"}
    ids = torch.randint(0, CONFIG.vocab_size, (2, 30))
    with torch.no_grad():
        assert (ours(ids) - theirs.eval()(input_ids=ids).logits).abs().max().item() < 1e-4


def test_merge_gives_same_logits_and_plain_linears(tmp_path):
    model = tiny_model()
    inject_lora(model, LoRAConfig(r=4, targets=("k_proj", "o_proj", "up_proj", "down_proj")))
    randomize_lora(model)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 25))
    with torch.no_grad():
        unmerged = model(ids)
        merged = merge_lora(model)(ids)
    assert (merged - unmerged).abs().max().item() < 1e-5
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(tiny_model().state_dict())
    model.save_pretrained(tmp_path)  # an ordinary checkpoint again
    with torch.no_grad():
        assert (CausalLM.from_pretrained(tmp_path)(ids) - unmerged).abs().max().item() < 1e-5


def test_training_moves_only_lora_weights():
    model = tiny_model()
    base = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in base.items()}
    inject_lora(model, LoRAConfig(r=4, alpha=8))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(model)} and len(trainable) == 2 * 4 * 2

    model.train()
    torch.manual_seed(2)
    ids = torch.randint(0, CONFIG.vocab_size, (4, 32))
    targets = ids.roll(-1, dims=1)
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(ids, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    assert all(torch.equal(base[n], before[n]) for n in base)


def test_malformed_adapter_folders_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="no adapter_config.json"):
        load_adapter(tiny_model(), tmp_path)
    config_file = tmp_path / "adapter_config.json"
    config_file.write_text("{\n  \"r\": 4,\n")
    with pytest.raises(UserError, match=r"adapter_config.json:3: invalid JSON"):
        load_adapter(tiny_model(), tmp_path)
    config_file.write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(UserError, match="peft_type is 'IA3'"):
        load_adapter(tiny_model(), tmp_path)
    config_file.write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
                                       "use_dora": True}))
    with pytest.raises(UserError, match="use_dora=True is not supported"):
        load_adapter(tiny_model(), tmp_path)

    model = inject_lora(tiny_model(), LoRAConfig(r=4, targets=("q_proj",)))
    save_adapter(model, LoRAConfig(r=4, targets=("q_proj",)), tmp_path, "tiny")
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "target_modules": ["q_proj", "v_proj"]}))
    with pytest.raises(UserError, match=r"missing \['model.layers.0.self_attn.v_proj.lora_A.weight'"):
        load_adapter(tiny_model(), tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="corrupt safetensors file"):
        load_adapter(tiny_model(), tmp_path)
