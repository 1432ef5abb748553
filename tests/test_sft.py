"""SFT end to end on a tiny model: it learns to answer (accuracy rises), masks prompts, writes a chat checkpoint."""

import json

import pytest
import torch

from pocketchat.chat_format import render_prompt
from pocketchat.cli import main
from pocketchat.engine import Engine, SamplingParams
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.tokenizer import Tokenizer

COLORS = {"apple": "red", "sky": "blue", "grass": "green", "snow": "white", "coal": "black", "sun": "yellow"}


def conversations():
    return [{"messages": [{"role": "user", "content": f"What color is the {thing}?"},
                          {"role": "assistant", "content": f"The {thing} is {color}."}]}
            for thing, color in COLORS.items()]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    texts = [f"What color is the {t}? The {t} is {c}." for t, c in COLORS.items()] * 20 + ["hello there, how are you"] * 20
    tok = Tokenizer.train(texts, vocab_size=300)
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
    model.save_pretrained(folder)
    tok.save(folder)
    return folder


def accuracy(model_dir) -> float:
    engine = Engine(CausalLM.from_pretrained(model_dir).eval(), Tokenizer.load(model_dir))
    prompts = [render_prompt(engine.tokenizer, [{"role": "user", "content": f"What color is the {t}?"}]) for t in COLORS]
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=12))
    return sum(o.text == f"The {t} is {c}." and o.finish_reason == "stop" for o, (t, c) in zip(outs, COLORS.items())) / len(COLORS)


def test_sft_learns_to_answer_and_writes_a_chat_checkpoint(base, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in conversations() * 10))
    assert accuracy(base) == 0
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(base), "--data", str(data), "--out", str(out), "--preset", "smoke",
                 "--steps=80", "--seq_len=64", "--lr=3e-3", "--eval_tasks=", "--val_fraction=0.1"]) == 0
    assert accuracy(out) >= 5 / 6
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"]


def test_bad_chat_data_is_reported_with_file_and_line(base, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(conversations()[0]) + "\n" + "{not json\n")
    assert main(["sft", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "o"), "--preset", "smoke", "--seq_len=64"]) == 2
    assert f"{data}:2" in capsys.readouterr().err


def test_chat_cli_streams_replies_and_handles_commands(base, tmp_path, monkeypatch, capsys):
    lines = iter(["/temp -1", "/temp 0", "What color is the sky?", "/reset", '"""', "What color", "is the sun?", '"""', "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", str(base), "--max-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "(temperature must be a number >= 0" in out and "(temperature 0.0)" in out
    assert out.count("assistant> ") == 2 and "(new conversation)" in out


def test_chat_history_keeps_tool_turns_as_messages():
    from pocketchat.terminal_chat import completion_messages

    text = ('Let me compute.<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}</tool_call>'
            "<|im_end|>\n<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\nAnswer: 5<|im_end|>")
    first, tool, final = completion_messages(text)
    assert first["content"] == "Let me compute." and first["tool_calls"][0]["function"]["name"] == "calculator"
    assert tool == {"role": "tool", "content": "5"}
    assert final == {"role": "assistant", "content": "Answer: 5"}
