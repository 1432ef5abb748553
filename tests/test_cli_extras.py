"""`--rag INDEX` on `ask` and `chat` (the passages found for a question reach the model); constrained and compiled
`sample`."""

import pytest
import torch

from pocketchat.chat_format import render_prompt
from pocketchat.cli import main
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.tasks.facts import facts_corpus, write_documents
from pocketchat.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model folder, index, a question and its answer) over the made-up facts corpus."""
    docs, questions = facts_corpus(12, 2, seed=3)
    root = tmp_path_factory.mktemp("rag")
    tok = Tokenizer.train([d.text for d in docs], vocab_size=400)
    torch.manual_seed(0)
    CausalLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)).save_pretrained(root / "m")
    tok.save(root / "m")
    write_documents(docs, root / "facts.jsonl")
    assert main(["index", str(root / "facts.jsonl"), "--out", str(root / "facts.idx"), "--embedder", f"model:{root / 'm'}",
                 "--chunk-tokens", "64", "--overlap", "8"]) == 0
    return root / "m", root / "facts.idx", questions[0]


def test_ask_rag_shows_the_passages_it_answered_from(setup, capsys):
    model, index, q = setup
    capsys.readouterr()
    assert main(["ask", q.question, "--model", str(model), "--strategy", "rag", "--rag", str(index), "--retrieval", "bm25",
                 "--k", "2", "--max-tokens", "4"]) == 0
    out = capsys.readouterr().out
    passages = [line for line in out.splitlines() if line.startswith("[")]
    assert len(passages) == 2 and q.answer in passages[0] and "answer: " in out


def test_ask_rag_needs_an_index(setup, capsys):
    model, _, q = setup
    assert main(["ask", q.question, "--model", str(model), "--strategy", "rag"]) == 2
    assert "--rag INDEX" in capsys.readouterr().err


def test_chat_rag_puts_retrieved_passages_into_the_prompt(setup, monkeypatch, capsys):
    model, index, q = setup
    sent = []
    from pocketchat.engine import Engine

    real_stream = Engine.stream

    def stream(self, prompt, params):  # record what the model is asked
        sent.append(self.tokenizer.decode(prompt))
        return real_stream(self, prompt, params)

    monkeypatch.setattr(Engine, "stream", stream)
    lines = iter([q.question, "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", str(model), "--rag", str(index), "--retrieval", "bm25", "--max-tokens", "3"]) == 0
    assert "(retrieved: " in capsys.readouterr().out
    assert q.answer in sent[0] and f"Question: {q.question}" in sent[0]


def test_sample_with_a_json_schema_gives_valid_json(setup, capsys):
    import json

    model, _, _ = setup
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    capsys.readouterr()
    assert main(["sample", "--model", str(model), "--chat", "--prompt", "a number?", "--json-schema", json.dumps(schema),
                 "--max-tokens", "40", "--seed", "1"]) == 0
    reply = capsys.readouterr().out.strip()
    assert set(json.loads(reply)) == {"n"} and isinstance(json.loads(reply)["n"], int)
    assert main(["sample", "--model", str(model), "--regex", "a+", "--choices", "x|y"]) == 2
    assert main(["sample", "--model", str(model), "--json-schema", "nope.json"]) == 2
    assert "--json-schema: nope.json is neither" in capsys.readouterr().err


def test_serve_rag_puts_retrieved_passages_into_chat_requests(setup):
    import argparse

    from pocketchat.cli import rag_augmenter
    from pocketchat.engine import Engine
    from pocketchat.lora import load_model
    from pocketchat.serve.app import create_app
    from test_serve import client, running

    model, index, q = setup
    augment = rag_augmenter(argparse.Namespace(rag=str(index), retrieval="bm25", k=2))
    engine = Engine(load_model(model).eval(), Tokenizer.load(model))
    with running(create_app(engine, "m", augment=augment)) as url:
        r = client(url).chat.completions.create(model="m", messages=[{"role": "user", "content": q.question}], max_tokens=2,
                                                temperature=0)
    # the model saw the grounded-QA prompt over the retrieved passages, which hold the answer
    grounded = render_prompt(engine.tokenizer, [{"role": "user", "content": augment(q.question)}])
    assert q.answer in engine.tokenizer.decode(grounded) and r.usage.prompt_tokens == len(grounded)


@pytest.mark.slow  # torch.compile with max-autotune: a minute or two on 2 CPU cores
def test_sample_compile_prints_what_the_eager_engine_prints(setup, capsys):
    model, _, _ = setup
    args = ["sample", "--model", str(model), "--prompt", "The capital", "--temperature", "0", "--max-tokens", "12"]
    capsys.readouterr()
    assert main(args) == 0
    eager = capsys.readouterr().out
    from pocketchat.engine.generate import _DecodeStep

    steps = _DecodeStep.made
    assert main([*args, "--compile"]) == 0
    assert capsys.readouterr().out == eager
    assert _DecodeStep.made == steps + 1  # the compiled step did the decoding
