"""Foreign checkpoints behave like ours: a Llama folder saved by `transformers` samples exactly as transformers'
greedy `generate()` does (bos only when its tokenizer adds one), and chats without tool tokens."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from pocketchat import cli
from pocketchat.cli import load_engine, main
from pocketchat.engine import Engine
from pocketchat.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

CORPUS = ["the quick brown fox jumps over the lazy dog.", "hello world, how are you today?",
          "once upon a time there was a tiny model."] * 20
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PROMPT = "the quick brown"


def llama_folder(folder: Path, *, add_bos: bool, chatml: bool = False) -> Path:
    """A tiny random LlamaForCausalLM and a Llama-style byte-level BPE tokenizer (<unk> <s> </s>), both
    written by transformers' save_pretrained. With chatml, the tokenizer also has <|im_start|>/<|im_end|> (the
    end of turn is its eos) and a ChatML template, but no tool tokens."""
    specials = ["<unk>", "<s>", "</s>"] + (["<|im_start|>", "<|im_end|>"] if chatml else [])
    hf = HFTokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    # no byte alphabet: every token is ASCII, so any sequence of them decodes to whole characters
    hf.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=specials, show_progress=False))
    eos = "<|im_end|>" if chatml else "</s>"
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=hf, bos_token="<s>", eos_token=eos,
                                               unk_token="<unk>", add_bos_token=add_bos)
    if chatml:
        tok.chat_template = CHATML
    tok.save_pretrained(folder)
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      initializer_range=0.2)
    torch.manual_seed(1)  # a model whose greedy text with no bos runs the full 12 tokens
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


def transformers_greedy(folder: Path, prompt: str, max_new_tokens: int) -> tuple[list[int], list[int]]:
    """(the prompt ids transformers' tokenizer gives, the ids its greedy generate() adds, less a final eos)."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    inputs = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.eos_token_id)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    return inputs["input_ids"][0].tolist(), new[:-1] if new and new[-1] == tok.eos_token_id else new


def recorded_stream(monkeypatch) -> tuple[list, list]:
    """Make Engine.stream record its prompt and the ids it generates."""
    prompts, generated = [], []
    real_stream = Engine.stream

    def stream(self, prompt, params):
        prompts.append(list(prompt))
        for event in real_stream(self, prompt, params):
            generated.extend(event.token_ids)
            yield event

    monkeypatch.setattr(Engine, "stream", stream)
    return prompts, generated


def edit_json(file: Path, **changes) -> None:
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


# ---- bos follows the folder's tokenizer ---------------------------------------------------------------------

def no_bos_post_processor(folder: Path) -> None:
    """transformers 5 saves add_bos_token=False as a post-processor without bos (and no config key)."""


def no_post_processor_add_bos_false(folder: Path) -> None:
    """A GPT-2/SmolLM2-style folder: no post-processor, add_bos_token false in tokenizer_config.json."""
    edit_json(folder / "tokenizer.json", post_processor=None)
    edit_json(folder / "tokenizer_config.json", add_bos_token=False)


def no_post_processor_add_bos_true(folder: Path) -> None:
    """add_bos_token true but no post-processor: transformers follows tokenizer.json and adds no bos."""
    edit_json(folder / "tokenizer.json", post_processor=None)
    edit_json(folder / "tokenizer_config.json", add_bos_token=True)


def bos_post_processor(folder: Path) -> None:
    """A Llama 3-style folder: the post-processor in tokenizer.json adds bos; tokenizer_config says nothing."""
    assert "add_bos_token" not in json.loads((folder / "tokenizer_config.json").read_text())


def bos_post_processor_add_bos_false(folder: Path) -> None:
    """The post-processor adds bos and tokenizer_config says add_bos_token false: transformers adds bos."""
    edit_json(folder / "tokenizer_config.json", add_bos_token=False)


@pytest.mark.parametrize("add_bos, variant", [
    (False, no_bos_post_processor), (False, no_post_processor_add_bos_false), (False, no_post_processor_add_bos_true),
    (True, bos_post_processor), (True, bos_post_processor_add_bos_false)])
def test_greedy_sample_matches_transformers_generate(tmp_path, monkeypatch, capsys, add_bos, variant):
    folder = llama_folder(tmp_path / "m", add_bos=add_bos)
    variant(folder)
    ref_prompt, ref_new = transformers_greedy(folder, PROMPT, 12)
    bos = json.loads((folder / "config.json").read_text())["bos_token_id"]
    assert (ref_prompt[0] == bos) == add_bos  # the folder does what the case says

    prompts, generated = recorded_stream(monkeypatch)
    assert main(["sample", "--model", str(folder), "--prompt", PROMPT, "--temperature", "0", "--max-tokens", "12",
                 "--device", "cpu"]) == 0
    eos = Tokenizer.load(folder).eos_id
    assert [i for i in generated if i != eos] == ref_new
    assert prompts == [ref_prompt]
    ref_tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert capsys.readouterr().out == PROMPT + ref_tok.decode(ref_new, clean_up_tokenization_spaces=False) + "\n"


def test_bos_survives_a_save(tmp_path):
    """A foreign tokenizer keeps its bos behaviour through our save (e.g. what an SFT run of it writes)."""
    for add_bos in (True, False):
        folder = llama_folder(tmp_path / str(add_bos), add_bos=add_bos)
        Tokenizer.load(folder).save(tmp_path / f"saved{add_bos}")
        saved = Tokenizer.load(tmp_path / f"saved{add_bos}")
        assert saved.add_bos is add_bos
        hf = transformers.AutoTokenizer.from_pretrained(tmp_path / f"saved{add_bos}")
        assert hf("hello world")["input_ids"] == saved.encode_prompt("hello world")


def test_own_tokenizer_keeps_bos_and_tools(tmp_path, capsys):
    """Ours: <|endoftext|> starts every raw prompt (pretraining put it before every document), yet the
    saved folder keeps add_bos_token false so transformers' tokenizer(text) is our encode(text); tools are on."""
    Tokenizer.train(CORPUS, vocab_size=300).save(tmp_path)
    tok = Tokenizer.load(tmp_path)
    assert tok.add_bos and tok.encode_prompt(PROMPT) == [tok.bos_id] + tok.encode(PROMPT)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["add_bos_token"] is False
    assert cli.chat_tools(SimpleNamespace(tokenizer=tok), "ours", None) is True
    assert capsys.readouterr().err == ""


# ---- chat and serve without tool tokens ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chatml_folder(tmp_path_factory):
    return llama_folder(tmp_path_factory.mktemp("chatml") / "m", add_bos=False, chatml=True)


def test_chat_without_tool_tokens_turns_tools_off(chatml_folder, monkeypatch, capsys):
    assert Tokenizer.load(chatml_folder).chat_template == CHATML  # transformers wrote it to chat_template.jinja
    lines = iter(["hello world", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", str(chatml_folder), "--max-tokens", "5", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"note: {chatml_folder}'s tokenizer has no <tool_call>, </tool_call> tokens; "
                            "tools are off\n")
    assert "assistant> " in captured.out and "error" not in captured.out

    lines = iter(["hello world", "/quit"])
    assert main(["chat", "--model", str(chatml_folder), "--max-tokens", "5", "--no-tools", "--device", "cpu"]) == 0
    assert capsys.readouterr().err == ""  # asked for no tools: nothing to note


def test_chat_explicit_tools_without_tool_tokens_is_an_error(chatml_folder, monkeypatch, capsys):
    monkeypatch.setattr("builtins.input", lambda prompt="": pytest.fail("chat started"))
    assert main(["chat", "--model", str(chatml_folder), "--tools", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--tools" in err and "no <tool_call>, </tool_call> special tokens" in err and "Traceback" not in err


def test_serve_without_tool_tokens(chatml_folder):
    from fastapi.testclient import TestClient

    from pocketchat.serve.app import create_app

    app = create_app(load_engine(str(chatml_folder), "cpu"), "m")
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                      "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
        r = client.post("/v1/completions", json={"model": "m", "prompt": PROMPT, "max_tokens": 4, "temperature": 0,
                                                 "echo": True})
        assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith(PROMPT)
    # a string prompt has no bos, as with transformers' tokenizer(text)
    _, ref_new = transformers_greedy(chatml_folder, PROMPT, 4)
    ref_tok = transformers.AutoTokenizer.from_pretrained(chatml_folder)
    assert r.json()["choices"][0]["text"] == PROMPT + ref_tok.decode(ref_new, clean_up_tokenization_spaces=False)


# ---- the recipe from a pretrained model ------------------------------------------------------------------------

@pytest.mark.slow  # a smoke speedrun from a base model, ~15 s
def test_speedrun_from_a_pretrained_model(tmp_path, capsys):
    """`speedrun --base DIR`: no pretraining, SFT with LoRA, every stage judged against the model as given on the
    same held-out instances, and the shipped model a plain folder that transformers opens."""
    from pocketchat.speedrun import BASE_STAGES

    base = llama_folder(tmp_path / "base", add_bos=False, chatml=True)
    edit_json(base / "config.json", max_position_embeddings=512)  # task prompts in a 200-token vocabulary run long
    run = tmp_path / "run"
    assert main(["speedrun", "--base", str(base), "--preset", "smoke", "--out", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    assert list(report) == [name for name, _ in BASE_STAGES] and "pretrain" not in report
    assert (run / "sft" / "adapter_config.json").is_file()  # LoRA by default
    for name in ("sft", "ppo", "grpo", "dpo"):
        m = report[name]["metrics"]
        assert {"accuracy", "accuracy_base", "n", "p_accuracy", "gold_base", "p_gold"} <= set(m), name
        assert m["n"] == 6 and 0 <= m["p_accuracy"] <= 1 and m["temperature"] == 0.0
        assert report[name]["peak_rss_mib"] > 0
    assert {"accuracy_sft", "p_accuracy_sft"} <= set(report["grpo"]["metrics"])
    assert "base:add2/direct" in report["eval"]["metrics"]
    out = capsys.readouterr().out
    shipped = Path(out.split("pocketchat serve --model ")[1].split()[0])
    assert (shipped / "config.json").is_file() and not (shipped / "adapter_config.json").exists()
    transformers.AutoModelForCausalLM.from_pretrained(shipped)
    assert "accuracy: base → model" in (run / "report.md").read_text()

    assert main(["speedrun", "--preset", "smoke", "--out", str(run)]) == 2  # a base run is continued with its --base
    assert "started from" in capsys.readouterr().err
    assert main(["speedrun", "--full-sft", "--out", str(tmp_path / "x")]) == 2
