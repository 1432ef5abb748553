"""The chat page's route, /chat/api/completions: the server runs the model's tool calls (the engine's tool loop,
limited to the tools named) and streams the whole turn as messages; and `serve --tools`.

The model is a script: `script_engine()` behind a model whose hidden state is the one-hot of the token a
Python function picks from the whole conversation so far (each token id rides in the key cache, so batching,
joining and compaction carry it like any key). It calls the calculator for "What is A + B?", Python for a
question that names it, and after a tool turn answers with the tool's result (on and on when the question
says "forever"); otherwise it greets. test_web.py drives the page with it.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
import torch
from torch import nn

from pocketchat.chat_format import render_prompt, tool_turn_renderer
from pocketchat.cli import main
from pocketchat.engine import Engine, SamplingParams
from pocketchat.engine.toolcalls import run_tool_call
from pocketchat.errors import UserError
from pocketchat.model import ModelConfig
from pocketchat.serve.app import create_app
from pocketchat.tokenizer import Tokenizer
from test_serve import random_engine, running

GREETING = "Hello! <b>Ask</b> me a sum."
PYTHON_CODE = "print(6 * 7)"


def call_text(name: str, arguments: dict) -> str:
    return json.dumps({"name": name, "arguments": arguments})


def planned_reply(context: str) -> str:
    """What the script says in the assistant turn that follows `context` (the text of the turns before it)."""
    turns = [t.removesuffix("<|im_end|>\n") for t in context.split("<|im_start|>")[1:]]
    role, _, content = turns[-1].partition("\n")
    question = next(t.partition("\n")[2] for t in reversed(turns) if t.startswith("user\n"))
    if role == "tool":
        if content.startswith("Error"):
            return f"I could not run it ({content})."
        return f"So the answer is {content}." + " And again." * (300 if "forever" in question else 0)
    if "python" in question.lower():
        return f"<tool_call>{call_text('python', {'code': PYTHON_CODE})}</tool_call>"
    if sum_ := re.search(r"(\d+) \+ (\d+)", question):
        return f"<tool_call>{call_text('calculator', {'expression': sum_.group(0)})}</tool_call>"
    return GREETING


class ScriptBody(nn.Module):
    """Stores each fed token id in layer 0's keys; the hidden state at a row's last position is the one-hot
    (×100, so sampling at any temperature picks it) of `next_token(the row's valid tokens)`."""

    def __init__(self, config: ModelConfig, next_token):
        super().__init__()
        self.config, self.next_token = config, next_token

    def forward(self, input_ids, position_ids=None, attn_mask=None, cache=None):
        B, T = input_ids.shape
        c = self.config
        kv = input_ids.to(torch.float32)[:, None, :, None].expand(B, c.num_key_value_heads, T, c.head_dim)
        keys, _ = cache.update(0, kv, kv)
        h = torch.zeros(B, T, c.vocab_size)
        for b in range(B):
            valid = attn_mask[b, 0, -1] if attn_mask is not None else torch.ones(keys.shape[2], dtype=torch.bool)
            h[b, -1, self.next_token(keys[b, 0, valid, 0].long().tolist())] = 100.0
        return h


class ScriptModel(nn.Module):
    def __init__(self, config: ModelConfig, next_token):
        super().__init__()
        self.config = config
        self.model = ScriptBody(config, next_token)
        self.lm_head = nn.Identity()
        self.anchor = nn.Parameter(torch.zeros(1))  # the engine reads device and dtype off a parameter


def script_engine(context: int = 1024) -> Engine:
    tok = Tokenizer.train([GREETING, call_text("calculator", {"expression": "12 + 34"}), "So the answer is 5.",
                           call_text("python", {"code": PYTHON_CODE})] * 20, vocab_size=300)
    im_start, im_end = tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")
    header = tok.encode("assistant\n")

    def next_token(ids: list[int]) -> int:
        start = max((i for i, t in enumerate(ids) if t == im_start), default=None)
        if start is None or ids[start + 1 : start + 1 + len(header)] != header:
            return im_end  # not an assistant turn: nothing to say
        said = ids[start + 1 + len(header):]
        reply = tok.encode(planned_reply(tok.decode(ids[:start])), allow_special=True)
        return reply[len(said)] if len(said) < len(reply) else im_end

    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=context,
                         bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    return Engine(ScriptModel(config, next_token), tok, tool_turn=tool_turn_renderer(tok))


def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def stream_deltas(url: str, body: dict) -> tuple[list[dict], list]:
    """The deltas of a streamed page request, and the finish reasons."""
    deltas, finishes = [], []
    with httpx.stream("POST", f"{url}/chat/api/completions", json=body | {"stream": True}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                (choice,) = json.loads(line[6:])["choices"]
                deltas.append(choice["delta"])
                finishes.append(choice["finish_reason"])
    return deltas, finishes


def messages_of(deltas: list[dict]) -> list[dict]:
    """The messages the page builds from the deltas: a delta with a role starts the next one."""
    messages = []
    for d in deltas:
        if "role" in d:
            messages.append(dict(d))
        elif d:
            m = messages[-1]
            m["content"] += d.get("content", "")
            if "tool_calls" in d:
                m["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in d["tool_calls"]]
    return messages


@pytest.fixture(scope="module")
def site():
    app = create_app(script_engine(), "script")
    with running(app) as url:
        yield url, app


# ---- the engine: a per-request list of tools ----------------------------------------------------------------

def test_the_engine_runs_only_the_tools_named():
    assert run_tool_call(f"<tool_call>{call_text('calculator', {'expression': '2 + 3'})}</tool_call>",
                         allowed=("calculator",)) == "5"
    refused = run_tool_call(f"<tool_call>{call_text('python', {'code': 'open(1)'})}</tool_call>",
                            allowed=("calculator",))
    assert refused == "Error: the 'python' tool is turned off here (available: calculator)"
    assert run_tool_call(f"<tool_call>{call_text('nope', {})}</tool_call>", allowed=()) == \
        "Error: unknown tool 'nope' (available: none)"
    engine = script_engine()
    for bad in ("calculator", ["calculator"], (1,)):
        with pytest.raises(UserError, match="SamplingParams.tools"):
            SamplingParams(tools=bad)
    for question, tools, result in [("Use python, please", ("calculator",), "Error: the 'python' tool is turned off"),
                                    ("What is 37 + 45?", ("calculator",), "82"),
                                    ("What is 37 + 45?", True, "82")]:
        prompt = render_prompt(engine.tokenizer, ask(question))
        (c,) = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=200, tools=tools))
        assert f"<|im_start|>tool\n{result}" in c.text and c.finish_reason == "stop", c.text
    # no tools: the reply ends at the call, which nothing ran
    (c,) = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=200, tools=()))
    assert c.finish_reason == "tool_calls" and c.text.endswith("</tool_call>")


# ---- the route -----------------------------------------------------------------------------------------------

def test_a_calculator_turn_streams_as_call_result_and_answer(site):
    url, _ = site
    deltas, finishes = stream_deltas(url, {"model": "script", "messages": ask("What is 37 + 45?")})
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    assert not any(tag in json.dumps(deltas) for tag in ("<tool_call>", "</tool_call>", "<|im_start|>", "<|im_end|>"))
    call, result, answer = messages_of(deltas)
    assert call["role"] == "assistant" and call["content"] == ""
    (c,) = call["tool_calls"]
    assert c["type"] == "function" and c["function"]["name"] == "calculator" and c["id"].startswith("call_")
    assert json.loads(c["function"]["arguments"]) == {"expression": "37 + 45"}
    assert result == {"role": "tool", "tool_call_id": c["id"], "content": "82"}
    assert answer == {"role": "assistant", "content": "So the answer is 82."}
    # the same turn, not streamed
    r = httpx.post(f"{url}/chat/api/completions", json={"model": "script", "messages": ask("What is 37 + 45?")},
                   timeout=60).json()
    (choice,) = r["choices"]
    assert [m["role"] for m in choice["messages"]] == ["assistant", "tool", "assistant"]
    assert choice["messages"][1]["content"] == "82" and choice["finish_reason"] == "stop"
    # sent back as history, the turn renders as the model saw it: the next question is answered normally
    history = ask("What is 37 + 45?") + messages_of(deltas) + ask("hi")
    deltas, _ = stream_deltas(url, {"model": "script", "messages": history})
    assert messages_of(deltas) == [{"role": "assistant", "content": GREETING}]


def test_a_tool_not_named_is_refused_not_run(site, tmp_path):
    url, _ = site
    deltas, finishes = stream_deltas(url, {"model": "script", "messages": ask("Use python: " + PYTHON_CODE)})
    call, result, answer = messages_of(deltas)
    assert call["tool_calls"][0]["function"]["name"] == "python"
    assert result["content"] == "Error: the 'python' tool is turned off here (available: calculator)"
    assert answer["content"].startswith("I could not run it") and finishes[-1] == "stop"
    # builtin_tools: [] runs nothing: the reply ends at the call
    deltas, finishes = stream_deltas(url, {"model": "script", "messages": ask("What is 1 + 2?"), "builtin_tools": []})
    (call,) = messages_of(deltas)
    assert call["tool_calls"][0]["function"]["name"] == "calculator" and finishes[-1] == "tool_calls"


def test_python_runs_when_the_server_names_it(tmp_path):
    app = create_app(script_engine(), "script", tools=["calculator", "python"])
    with running(app) as url:
        assert httpx.get(f"{url}/chat/api/tools").json() == {"tools": ["calculator", "python"]}
        deltas, _ = stream_deltas(url, {"model": "script", "messages": ask("Use python"), "builtin_tools": ["python"]})
        assert [m["content"] for m in messages_of(deltas)[1:]] == ["42", "So the answer is 42."]
        # a request may name fewer tools than the server runs
        deltas, _ = stream_deltas(url, {"model": "script", "messages": ask("Use python"),
                                        "builtin_tools": ["calculator"]})
        assert messages_of(deltas)[1]["content"].startswith("Error: the 'python' tool is turned off here")


def test_bad_requests_name_the_field(site):
    url, _ = site
    assert httpx.get(f"{url}/chat/api/tools").json() == {"tools": ["calculator"]}
    good = {"model": "script", "messages": ask("hi")}
    tool = {"type": "function", "function": {"name": "f"}}
    for change, param in [({"builtin_tools": ["python"]}, "builtin_tools"),
                          ({"builtin_tools": ["nope"]}, "builtin_tools"),
                          ({"builtin_tools": "calculator"}, "builtin_tools"), ({"tools": [tool]}, "tools"),
                          ({"tool_choice": "auto"}, "tool_choice"), ({"logprobs": True}, "logprobs"),
                          ({"response_format": {"type": "json_object"}}, "response_format"),
                          ({"ignore_eos": True}, "ignore_eos"), ({"model": "other"}, "model"),
                          ({"messages": []}, "messages"), ({"temperature": 5}, "temperature")]:
        r = httpx.post(f"{url}/chat/api/completions", json=good | change)
        assert 400 <= r.status_code < 500 and r.json()["error"]["param"] == param, (change, r.text)
    refused = httpx.post(f"{url}/chat/api/completions", json=good | {"builtin_tools": ["python"]}).json()["error"]
    assert refused["message"].startswith("builtin_tools: 'python' is not among the tools this server runs (calculator")
    # the OpenAI route is unchanged: the field means nothing there, and a call comes back unrun
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "script", "messages": ask("What is 1 + 2?"),
                                                       "builtin_tools": ["calculator"]}).json()
    (choice,) = r["choices"]
    assert choice["message"]["content"].startswith("<tool_call>") and choice["finish_reason"] == "stop"


def test_the_page_route_needs_the_api_key():
    app = create_app(script_engine(), "script", api_key="sekrit")
    with running(app) as url:
        for path in ("tools", "completions"):
            r = httpx.request("GET" if path == "tools" else "POST", f"{url}/chat/api/{path}", json={})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.get(f"{url}/chat/api/tools", headers={"Authorization": "Bearer sekrit"})
        assert r.json() == {"tools": ["calculator"]}
        assert "/chat/api/completions" not in app.openapi()["paths"]  # not part of the API OpenAI clients read


def test_tools_the_server_runs(tmp_path):
    engine = random_engine(context=64)
    assert create_app(engine, "rnd").state.server.tools == ("calculator",)
    assert create_app(engine, "rnd", tools=[]).state.server.tools == ()
    with pytest.raises(UserError, match="unknown tool 'nope'"):
        create_app(engine, "rnd", tools=["nope"])
    engine.model.save_pretrained(tmp_path / "m")
    engine.tokenizer.save(tmp_path / "m")
    assert main(["serve", "--model", str(tmp_path / "m"), "--tools", "calculator,nope"]) == 2
