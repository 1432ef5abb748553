"""The server, end to end: a real uvicorn on 127.0.0.1 and the real `openai` client.

Two tiny models. A random one (untied embeddings, so greedy text varies with the prompt) for what must equal
the engine: greedy text, seeds, logprobs, concurrent requests. A "scripted" one whose weights make it say
known text (each token has a fixed successor), for exact tool calls and, in test_web.py, the page.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
import torch
import uvicorn

from pocketchat.chat_format import render_prompt, tool_turn_renderer
from pocketchat.cli import main
from pocketchat.engine import Engine, SamplingParams
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.serve.app import create_app
from pocketchat.tokenizer import Tokenizer

# What the scripted model says: REPLY after any chat prompt, then " la" until max_tokens; after <tool_call>,
# CALL then </tool_call>. Written so that no token repeats (the model only sees the last token).
REPLY = """Hi <img src='x' onerror="pwned=1"> and<SCRIPT >boom()</script> **bold**"""
CALL = '{"name":"get_weather","arguments":{"days":3}}'
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "forecast",
                                                 "parameters": {"type": "object", "properties": {"days": {"type": "integer"}}}}}
QUESTIONS = ["What color is the sky?", "What color is the apple?", "hello there", "What color is coal?",
             "how are you", "The sun is", "What color is the grass? And the snow?", "hi"]


# ---- models and a server in a thread (test_web.py uses these too) --------------------------------------------

def random_engine(context: int = 1024) -> Engine:
    texts = [f"What color is the {t}? The {t} is {c}." for t, c in
             {"apple": "red", "sky": "blue", "grass": "green", "coal": "black", "sun": "yellow"}.items()] * 20
    tok = Tokenizer.train(texts + ["hello there, how are you"] * 20, vocab_size=300)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                         tie_word_embeddings=False, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                         pad_token_id=tok.pad_id)
    return Engine(CausalLM(config).eval(), tok, tool_turn=tool_turn_renderer(tok))


def scripted_engine(context: int = 2048) -> Engine:
    """A model that greedily says REPLY (then " la" forever) after a chat prompt, and CALL after <tool_call>.

    Attention and MLP outputs are zeroed, so the last hidden state is the current token's embedding, a
    one-hot vector; the LM head maps it to the logit of the next token. Any other token is followed by
    <|im_end|>."""
    tok = Tokenizer.train([REPLY + " la la la", CALL] * 50, vocab_size=400)
    end, tool_open, tool_close = tok.token_id("<|im_end|>"), tok.token_id("<tool_call>"), tok.token_id("</tool_call>")
    la = tok.encode(" la")
    chains = [[render_prompt(tok, [{"role": "user", "content": "x"}])[-1], *tok.encode(REPLY), *la, *la],
              [tool_open, *tok.encode(CALL), tool_close]]
    for chain in chains:
        assert len(set(chain[:-1])) == len(chain) - 1, "a scripted token repeats; the model can't say this"
    V = tok.vocab_size
    config = ModelConfig(vocab_size=V, hidden_size=-(-V // 8) * 8, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=context,
                         tie_word_embeddings=False, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                         pad_token_id=tok.pad_id)
    model = CausalLM(config).eval()
    head = torch.zeros(V, config.hidden_size)
    head[end, :V] = 1
    for chain in chains:
        for a, b in zip(chain, chain[1:]):
            head[:, a] = 0
            head[b, a] = 1
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(V, config.hidden_size))
        model.lm_head.weight.copy_(head)
    return Engine(model, tok, tool_turn=tool_turn_renderer(tok))


@contextmanager
def running(app):
    """Serve `app` with uvicorn on a free port of 127.0.0.1 in a thread; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---- fixtures ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rnd():
    """(engine for reference outputs, base URL, the app) of a server over the random model."""
    engine = random_engine()
    app = create_app(Engine(engine.model, engine.tokenizer, tool_turn=engine.tool_turn), "rnd", max_batch=8, max_queue=32)
    with running(app) as url:
        yield engine, url, app


@pytest.fixture(scope="module")
def scripted():
    engine = scripted_engine()
    app = create_app(engine, "scripted")
    with running(app) as url:
        yield engine, url, app


def client(url: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def greedy(engine: Engine, question: str, max_tokens: int, **kw):
    return engine.generate([render_prompt(engine.tokenizer, ask(question))],
                           SamplingParams(temperature=0, max_tokens=max_tokens, **kw))[0]


# ---- the random model: what the engine computes, through HTTP ------------------------------------------------

def test_models_and_health(rnd):
    _, url, _ = rnd
    assert [m.id for m in client(url).models.list().data] == ["rnd"]
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["model"] == "rnd"


def test_chat_completion_is_the_engines_greedy_answer(rnd):
    engine, url, _ = rnd
    expected = greedy(engine, QUESTIONS[0], 12)
    r = client(url).chat.completions.create(model="rnd", messages=ask(QUESTIONS[0]), temperature=0, max_tokens=12)
    assert r.object == "chat.completion" and r.model == "rnd" and len(r.choices) == 1
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected.text
    assert r.choices[0].finish_reason == expected.finish_reason
    prompt_tokens = len(render_prompt(engine.tokenizer, ask(QUESTIONS[0])))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt_tokens, len(expected.token_ids))
    # max_completion_tokens is the newer name of max_tokens
    r2 = client(url).chat.completions.create(model="rnd", messages=ask(QUESTIONS[0]), temperature=0,
                                             max_completion_tokens=5)
    assert r2.usage.completion_tokens <= 5 and expected.text.startswith(r2.choices[0].message.content)


def test_async_stream_frames_add_up_to_the_answer(rnd):
    engine, url, _ = rnd
    expected = greedy(engine, QUESTIONS[1], 20, ignore_eos=True)

    async def run():
        aclient = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        stream = await aclient.chat.completions.create(model="rnd", messages=ask(QUESTIONS[1]), temperature=0,
                                                       max_tokens=20, stream=True, stream_options={"include_usage": True},
                                                       extra_body={"ignore_eos": True})
        return [chunk async for chunk in stream]

    chunks = asyncio.run(run())
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == expected.text
    assert len(with_choices) > 3  # streamed, not sent in one piece
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_seed_n_and_sampling_extras(rnd):
    _, url, _ = rnd
    c = client(url)

    def sample(seed, n=3, **kw):
        r = c.chat.completions.create(model="rnd", messages=ask(QUESTIONS[2]), temperature=1.0, max_tokens=12, n=n,
                                      seed=seed, **kw)
        assert [ch.index for ch in r.choices] == list(range(n))
        return [ch.message.content for ch in r.choices]

    first = sample(7)
    assert sample(7) == first  # a seed fixes the samples
    assert len(set(first)) > 1  # the n completions differ (completion i is seeded with seed + i)
    assert sample(8, n=1) == [first[1]]
    assert sample(9) != first
    # top_k=1 leaves only the most likely token: the greedy answer, whatever the seed
    greedy_text = c.chat.completions.create(model="rnd", messages=ask(QUESTIONS[2]), temperature=0,
                                            max_tokens=12).choices[0].message.content
    assert sample(3, n=2, extra_body={"top_k": 1}) == [greedy_text] * 2


def test_stop_strings_cut_the_answer(rnd):
    engine, url, _ = rnd
    full = greedy(engine, QUESTIONS[3], 30, ignore_eos=True).text
    assert len(full) > 11
    stop = full[8:11]
    cut = full[: full.find(stop)]
    c = client(url)
    kw = dict(model="rnd", messages=ask(QUESTIONS[3]), temperature=0, max_tokens=30, extra_body={"ignore_eos": True})
    r = c.chat.completions.create(stop=[stop, "never appears"], **kw)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (cut, "stop")
    streamed = [ch for ch in c.chat.completions.create(stop=stop, stream=True, **kw) if ch.choices]
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed) == cut
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_logprobs_are_the_models_distribution(rnd):
    engine, url, _ = rnd
    r = client(url).chat.completions.create(model="rnd", messages=ask(QUESTIONS[4]), temperature=0, max_tokens=8,
                                            logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 8
    prompt = render_prompt(engine.tokenizer, ask(QUESTIONS[4]))
    ids = greedy(engine, QUESTIONS[4], 8, ignore_eos=True).token_ids
    with torch.no_grad():
        logp = engine.model(torch.tensor([prompt + ids]))[0, len(prompt) - 1 : -1].float().log_softmax(-1)
    for k, entry in enumerate(content):
        assert entry.logprob == pytest.approx(logp[k, ids[k]].item(), abs=1e-4)
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(logp[k].topk(3).values.tolist(), abs=1e-4)
    assert b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace") == r.choices[0].message.content


def test_concurrent_streams_share_the_batch_and_equal_solo_answers(rnd):
    engine, url, app = rnd
    expected = [greedy(engine, q, 40, ignore_eos=True).text for q in QUESTIONS]
    stats = app.state.batcher.stats
    peak_before = stats.peak_batch

    async def one(aclient, question):
        stream = await aclient.chat.completions.create(model="rnd", messages=ask(question), temperature=0,
                                                       max_tokens=40, stream=True, extra_body={"ignore_eos": True})
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

    async def run():
        aclient = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        return await asyncio.gather(*(one(aclient, q) for q in QUESTIONS))

    assert asyncio.run(run()) == expected
    assert stats.peak_batch >= max(peak_before, 2)  # they really shared decode steps
    wait_for(lambda: stats.running == 0)


def test_json_schema_response_format_gives_valid_json(rnd):
    _, url, _ = rnd
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "blue"]}, "n": {"type": "integer"}},
              "required": ["color", "n"], "additionalProperties": False}
    r = client(url).chat.completions.create(
        model="rnd", messages=ask(QUESTIONS[0]), max_tokens=40, seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"color", "n"} and value["color"] in ("red", "blue") and isinstance(value["n"], int)
    assert r.choices[0].finish_reason == "stop"


def test_text_completions(rnd):
    engine, url, _ = rnd
    tok = engine.tokenizer
    prompt = [tok.bos_id] + tok.encode("The sky is") if tok.bos_id is not None else tok.encode("The sky is")
    expected = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))[0].text
    c = client(url)
    kw = dict(model="rnd", temperature=0, max_tokens=10, extra_body={"ignore_eos": True})
    r = c.completions.create(prompt="The sky is", echo=True, logprobs=2, **kw)
    assert r.object == "text_completion" and r.choices[0].text == "The sky is" + expected
    assert len(r.choices[0].logprobs.tokens) == 10 and len(r.choices[0].logprobs.top_logprobs[0]) == 2
    assert r.choices[0].logprobs.text_offset[0] == len("The sky is")
    by_ids = c.completions.create(prompt=[prompt, prompt], n=2, **kw)
    assert [ch.text for ch in by_ids.choices] == [expected] * 4 and [ch.index for ch in by_ids.choices] == [0, 1, 2, 3]
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(prompt="The sky is", stream=True, **kw) if ch.choices)
    assert streamed == expected


# ---- errors ----------------------------------------------------------------------------------------------

GOOD = {"model": "rnd", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
BAD_REQUESTS = [
    ({"temperature": 5}, 400, "temperature"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"max_tokens": -1}, 400, "max_tokens"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"n": 1000}, 400, "n"),
    ({"top_p": 0}, 400, "top_p"),
    ({"messages": []}, 400, "messages"),
    ({"messages": "hi"}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, 400, "messages"),
    ({"stop": 5}, 400, "stop"),
    ({"stop": [""]}, 400, "stop"),
    ({"stream": "maybe"}, 400, "stream"),
    ({"top_logprobs": 3}, 400, "top_logprobs"),
    ({"presence_penalty": 1.0}, 400, "presence_penalty"),
    ({"tool_choice": "required"}, 400, "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}}, 400, "response_format"),
    ({"model": "gpt-4"}, 404, "model"),
    ({"messages": [{"role": "user", "content": "hello there " * 600}]}, 400, "messages"),
]


@pytest.mark.parametrize("change,status,param", BAD_REQUESTS, ids=[p for _, _, p in BAD_REQUESTS])
def test_bad_requests_get_openai_errors_naming_the_field(rnd, change, status, param):
    _, url, _ = rnd
    r = httpx.post(f"{url}/v1/chat/completions", json={**GOOD, **change})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


def test_malformed_bodies_and_paths_are_4xx_and_the_server_keeps_serving(rnd):
    _, url, _ = rnd
    for body in (b"{not json", b"[1, 2]", b""):
        r = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "error" in r.json(), body
    assert httpx.post(f"{url}/v1/completions", json={"model": "rnd", "prompt": [10**6]}).status_code == 400
    assert httpx.get(f"{url}/v1/nothing").json()["error"]["code"] == "not_found"
    assert httpx.get(f"{url}/v1/chat/completions").status_code == 405
    long = httpx.post(f"{url}/v1/chat/completions", json=BAD_REQUESTS[-1][0] | {"model": "rnd"}).json()["error"]
    assert long["code"] == "context_length_exceeded" and "1024" in long["message"]
    with pytest.raises(openai.BadRequestError) as e:  # the client sees our errors as its own exceptions
        client(url).chat.completions.create(model="rnd", messages=[], max_tokens=2)
    assert e.value.param == "messages"
    assert client(url).chat.completions.create(**GOOD).choices[0].finish_reason in ("stop", "length")


# ---- the scripted model: tool calls ----------------------------------------------------------------------

def test_tools_are_returned_as_tool_calls(scripted):
    _, url, _ = scripted
    c = client(url)
    kw = dict(model="scripted", messages=ask("weather?"), tools=[WEATHER_TOOL], max_tokens=40)
    r = c.chat.completions.create(tool_choice="required", **kw)
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"days": 3}
    # a named tool_choice makes the call valid under that tool's parameters, even a call the model never
    # learned: the scripted model wants get_weather and its days, the grammar leaves it only get_time's zones
    time_tool = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"], "additionalProperties": False}}}
    for seed in range(3):
        named = c.chat.completions.create(**kw | {"tools": [WEATHER_TOOL, time_tool], "max_tokens": 120, "seed": seed},
                                          tool_choice={"type": "function", "function": {"name": "get_time"}})
        (forced,) = named.choices[0].message.tool_calls
        assert named.choices[0].finish_reason == "tool_calls" and forced.function.name == "get_time"
        assert json.loads(forced.function.arguments)["zone"] in ("UTC", "CET")
    # the model's own call passes the grammar as it is (compact JSON here)
    named = c.chat.completions.create(tool_choice={"type": "function", "function": {"name": "get_weather"}}, **kw)
    assert json.loads(named.choices[0].message.tool_calls[0].function.arguments) == {"days": 3}
    bad_tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(**kw | {"tools": [bad_tool]}, tool_choice="required")
    assert e.value.param == "tools"
    # streamed: the call arrives as a tool_calls delta, with no tag text as content
    chunks = [ch for ch in c.chat.completions.create(tool_choice="required", stream=True, **kw) if ch.choices]
    deltas = [ch.choices[0].delta for ch in chunks]
    assert not any(d.content for d in deltas)
    (streamed_call,) = [tc for d in deltas for tc in d.tool_calls or []]
    assert streamed_call.function.name == "get_weather" and json.loads(streamed_call.function.arguments) == {"days": 3}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # the client sends the call and its result back, and the conversation goes on
    history = ask("weather?") + [r.choices[0].message.model_dump(exclude_none=True),
                                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    answer = c.chat.completions.create(model="scripted", messages=history, tools=[WEATHER_TOOL], max_tokens=len(REPLY))
    assert answer.choices[0].message.content.startswith("Hi <img") and answer.choices[0].finish_reason == "length"


def test_without_tool_choice_the_model_answers_in_text(scripted):
    _, url, _ = scripted
    r = client(url).chat.completions.create(model="scripted", messages=ask("hi"), tools=[WEATHER_TOOL], max_tokens=30)
    assert r.choices[0].message.content.startswith(REPLY + " la") and r.choices[0].message.tool_calls is None


def test_a_client_that_disconnects_cancels_its_generation(scripted):
    _, url, app = scripted
    stats = app.state.batcher.stats
    cancelled, generated = stats.cancelled, stats.generated_tokens
    long = dict(model="scripted", messages=ask("hi"), max_tokens=2000)  # this model never stops by itself
    stream = client(url).chat.completions.create(stream=True, **long)
    for _, chunk in zip(range(3), stream):
        pass
    stream.close()
    wait_for(lambda: stats.cancelled == cancelled + 1 and stats.running == 0)
    assert stats.generated_tokens - generated < 2000
    # a non-streamed request whose client gives up is cancelled too
    with pytest.raises(openai.APITimeoutError):
        client(url, timeout=0.5).chat.completions.create(**long)
    wait_for(lambda: stats.cancelled == cancelled + 2 and stats.running == 0)
    assert stats.generated_tokens - generated < 4000


def test_api_key_and_a_full_queue(scripted):
    engine, _, _ = scripted
    app = create_app(engine, "scripted", api_key="sekrit", max_batch=1, max_queue=1)
    with running(app) as url:
        for key in (None, "wrong"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            r = httpx.post(f"{url}/v1/chat/completions", json=GOOD | {"model": "scripted"}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(url, api_key="wrong").models.list()
        assert httpx.get(f"{url}/health").status_code == 200  # no key needed to check the server is up
        ok = client(url, api_key="sekrit")
        long = dict(model="scripted", messages=ask("hi"), max_tokens=2000, stream=True)
        running_stream = ok.chat.completions.create(**long)
        next(iter(running_stream))  # it holds the only batch row now
        waiting = ok.chat.completions.create(**long)  # it holds the only queue place
        stats = app.state.batcher.stats
        wait_for(lambda: stats.queued == 1)
        with pytest.raises(openai.InternalServerError) as e:
            ok.chat.completions.create(**GOOD | {"model": "scripted"})
        assert e.value.status_code == 503 and e.value.code == "queue_full"
        assert e.value.response.headers["retry-after"] == "1"
        running_stream.close()
        waiting.close()
        wait_for(lambda: stats.cancelled == 2 and stats.running == 0 and stats.queued == 0)


# ---- the command line ------------------------------------------------------------------------------------

@pytest.mark.slow  # starts `pocketchat serve` as a process, ~8 s
def test_serve_command_serves_a_model_folder(tmp_path):
    engine = random_engine(context=64)
    engine.model.save_pretrained(tmp_path / "m")
    engine.tokenizer.save(tmp_path / "m")
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert main(["serve", "--model", str(tmp_path / "m"), "--max-batch", "0"]) == 2
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "pocketchat.cli", "serve", "--model", str(tmp_path / "m"),
                             "--port", str(port), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                return httpx.get(f"{url}/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=60)
        r = client(url).chat.completions.create(model="m", messages=ask("hi"), max_tokens=3)
        assert r.model == "m" and r.usage.completion_tokens <= 3
        assert "text/html" in httpx.get(url).headers["content-type"]
    finally:
        proc.terminate()
        proc.wait(30)
