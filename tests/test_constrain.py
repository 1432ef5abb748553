"""Constrained output on a tiny random model: whatever it samples, every output is valid."""

import json
import re

import jsonschema
import pytest
import torch

from pocketchat.chat_format import render_prompt
from pocketchat.engine import Engine, SamplingParams
from pocketchat.engine import constrain
from pocketchat.engine.constrain import choice_processor, json_schema_processor, regex_processor
from pocketchat.errors import UserError
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.tokenizer import Tokenizer

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "ok", "color", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "ok": {"type": "boolean"},
                         "color": {"enum": ["red", "green", "blue"]},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3}}}
SEEDS = range(24)


@pytest.fixture(scope="module")
def engine():
    texts = ['{"name": "Ann", "age": 31, "ok": true, "tags": ["x", "yz"]} The quick brown fox, 2024-06-01.'] * 20
    tok = Tokenizer.train(texts, vocab_size=300)
    torch.manual_seed(0)
    # a model vocabulary padded past the tokenizer's: masks must cover the extra ids too
    model = CausalLM(ModelConfig(vocab_size=tok.vocab_size + 20, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=256, eos_token_id=tok.eos_id)).eval()
    return Engine(model, tok)


def sample(engine, processor, max_tokens=160):
    """One completion per seed at temperature 1, all rows of one batch sharing one processor."""
    prompt = render_prompt(engine.tokenizer, [{"role": "user", "content": "Give me JSON."}])
    params = [SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=s, logits_processor=processor) for s in SEEDS]
    return engine.generate([prompt] * len(params), params)


def valid_json(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
        return True
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False


def test_every_json_output_validates_and_unconstrained_ones_do_not(engine):
    outs = sample(engine, json_schema_processor(engine.tokenizer, SCHEMA))
    assert all(o.finish_reason == "stop" for o in outs)
    assert all(valid_json(o.text) for o in outs), [o.text for o in outs if not valid_json(o.text)]
    assert len({o.text for o in outs}) > len(outs) // 2  # the model really sampled, the mask only steered
    assert sum(valid_json(o.text) for o in sample(engine, None)) == 0


def test_regex_outputs_fullmatch(engine):
    pattern = r"[A-Z][a-z]{1,6} (19|20)[0-9]{2}(, [a-z]{1,8})?"
    outs = sample(engine, regex_processor(engine.tokenizer, pattern))
    assert all(o.finish_reason == "stop" and re.fullmatch(pattern, o.text) for o in outs), [o.text for o in outs]


def test_choices_are_exact(engine):
    choices = ["yes", "no", "yes, but", 'say "maybe"']
    outs = sample(engine, choice_processor(engine.tokenizer, choices))
    assert all(o.finish_reason == "stop" and o.text in choices for o in outs)
    assert len({o.text for o in outs}) >= 2


def test_end_of_turn_only_when_complete_and_no_other_special_token(engine):
    tok = engine.tokenizer
    p = regex_processor(tok, "ab+")
    logits = torch.zeros(engine.config.vocab_size)
    end, specials = tok.token_id("<|im_end|>"), [tok.token_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<tool_call>")]
    assert not p(tok.encode("a"), logits)[end]
    assert p(tok.encode("ab"), logits)[end] and p(tok.encode("abbb"), logits)[end]
    for prefix in ("", "a", "ab"):
        mask = p(tok.encode(prefix), logits)
        assert mask.shape == logits.shape and not mask[specials].any() and not mask[tok.vocab_size:].any()


def test_mask_depends_only_on_the_prefix(engine, monkeypatch):
    """Rows share a processor, so states are per prefix: any call order, and evicted states, give the same masks."""
    tok = engine.tokenizer
    ids = tok.encode(json.dumps({"name": "Ann", "age": 31, "ok": True, "color": "red", "tags": ["x"]}))
    logits = torch.zeros(engine.config.vocab_size)
    fresh = json_schema_processor(tok, SCHEMA)
    expected = [fresh(ids[:i], logits).clone() for i in range(len(ids) + 1)]
    monkeypatch.setattr(constrain, "MAX_STATES", 2)
    shared = json_schema_processor(tok, SCHEMA)
    for i in [5, 0, len(ids), 3, 4, 5, 1, len(ids) - 1]:
        assert torch.equal(shared(ids[:i], logits), expected[i]), i
    assert len(shared.states) <= 3
    assert all(valid_json(o.text) for o in sample(engine, shared))


def test_bad_constraints_are_user_errors(engine):
    tok = engine.tokenizer
    with pytest.raises(UserError, match="unclosed group"):
        regex_processor(tok, "(ab")
    with pytest.raises(UserError, match=r"the JSON schema is not valid JSON: .* \(line 1, column 2\)"):
        json_schema_processor(tok, "{not json")
    with pytest.raises(UserError, match="non-empty list"):
        choice_processor(tok, [])
    p = choice_processor(tok, ["yes", "no"])
    with pytest.raises(UserError, match="position 0 is outside the grammar"):
        p(tok.encode("maybe"), torch.zeros(engine.config.vocab_size))
