"""The engine computes what a full forward computes, samples what it is asked to, and stops where it must."""

import copy
import json

import pytest
import torch

import pocketchat.engine.generate as generate_module
from pocketchat.chat_format import render_prompt, tool_turn_renderer
from pocketchat.engine import Engine, KVCache, SamplingParams
from pocketchat.engine.generate import TextStream
from pocketchat.engine.toolcalls import run_tool_call
from pocketchat.errors import UserError
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.tokenizer import Tokenizer

TEXT = ("The quick brown fox jumps over the lazy dog. A café serves crème brûlée and naïve jalapeño tea; "
        "2 + 3 = 5, 10 * 4 = 40. Hello world, hello there! ") * 20


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT], vocab_size=400)


@pytest.fixture(scope="module")
def model(tok) -> CausalLM:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return CausalLM(config).eval()


@pytest.fixture(scope="module")
def engine(model, tok) -> Engine:
    return Engine(model, tok, tool_turn=tool_turn_renderer(tok))


def full_logprobs(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """log_softmax of a plain full forward over prompt + completion at the positions predicting `completion`."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion]))[0, len(prompt) - 1 : -1]
    return logits.float().log_softmax(-1)


def prompts(tok) -> list[list[int]]:
    return [tok.encode(t) for t in ("Hello", "The quick brown fox jumps over", "A café serves", "2 + 3 =")]


def test_kv_cache_decode_equals_full_forward_at_every_step(model):
    config = model.config
    ids = torch.randint(0, config.vocab_size, (2, 24))
    cache = KVCache(config, batch_size=2, capacity=16, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        full = model(ids)
        assert cache.prepare(torch.ones(2, 10, dtype=torch.bool)) is None  # no padding: plain causal attention
        assert torch.allclose(model(ids[:, :10], cache=cache), full[:, :10], atol=1e-4)  # prefill
        cache.prepare(torch.ones(2, 4, dtype=torch.bool))
        assert torch.allclose(model(ids[:, 10:14], cache=cache), full[:, 10:14], atol=1e-4)  # a chunk onto the cache
        storage = cache.k[0].data_ptr()
        for t in range(14, 24):
            assert cache.prepare_step() is None
            step = model(ids[:, t : t + 1], cache=cache)
            assert cache.length == t + 1
            assert torch.allclose(step[:, 0], full[:, t], atol=1e-4)
            if t < 15:
                assert cache.k[0].data_ptr() == storage  # written in place while it fits
    assert cache.capacity == 32  # it doubled once when full


def test_every_step_of_a_ragged_batch_matches_a_full_forward(engine, model, tok):
    """Left padding, per-row positions, rows finishing early (compaction): each row's full distribution at
    every step equals a full forward over that row alone."""
    ps = prompts(tok)
    V = model.config.vocab_size
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=6 + 5 * i, ignore_eos=True, top_logprobs=V)
              for i in range(len(ps))]
    outs = engine.generate(ps, params)
    for p, out, sp in zip(ps, outs, params):
        assert len(out.token_ids) == sp.max_tokens and out.finish_reason == "length"
        expected = full_logprobs(model, p, out.token_ids)
        got = torch.tensor([[top[v] for v in range(V)] for top in out.top_logprobs])
        assert (got - expected).abs().max().item() < 1e-4


def test_batched_greedy_equals_each_prompt_alone(engine, tok):
    ps = prompts(tok)
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=True)
    batched = engine.generate(ps, params)
    for p, b in zip(ps, batched):
        alone = engine.generate([p], params)[0]
        assert b.token_ids == alone.token_ids and b.text == alone.text
        assert max(abs(x - y) for x, y in zip(b.logprobs, alone.logprobs)) < 1e-4


def test_logprobs_are_the_raw_model_distribution_at_the_chosen_tokens(engine, model, tok):
    p = tok.encode("Hello world")
    out = engine.generate([p], SamplingParams(temperature=0.7, top_k=20, seed=3, max_tokens=10, ignore_eos=True,
                                              logprobs=True, top_logprobs=3))[0]
    expected = full_logprobs(model, p, out.token_ids)
    chosen = expected.gather(1, torch.tensor(out.token_ids).unsqueeze(1)).squeeze(1)
    assert torch.allclose(torch.tensor(out.logprobs), chosen, atol=1e-4)
    for top, row in zip(out.top_logprobs, expected):
        values, ids = row.topk(3)
        assert list(top) == ids.tolist()
        assert torch.allclose(torch.tensor(list(top.values())), values, atol=1e-4)


def test_seed_fixes_the_sample_whatever_the_batch(engine, tok):
    p = tok.encode("The quick brown fox")
    params = lambda seed: SamplingParams(temperature=1.0, seed=seed, max_tokens=20, ignore_eos=True)
    a = engine.generate([p], params(1))[0]
    assert engine.generate([p], params(1))[0].token_ids == a.token_ids
    assert engine.generate([p], params(2))[0].token_ids != a.token_ids
    with_companions = engine.generate([tok.encode("Hi"), p, tok.encode("A café serves crème brûlée")],
                                      [params(7), params(1), SamplingParams(temperature=0, max_tokens=5)])
    assert with_companions[1].token_ids == a.token_ids


@pytest.mark.parametrize("filters", [dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)])
def test_filters_that_leave_one_token_equal_greedy(engine, tok, filters):
    ps = prompts(tok)
    greedy = engine.generate(ps, SamplingParams(temperature=0, max_tokens=15, ignore_eos=True))
    sampled = engine.generate(ps, SamplingParams(temperature=1.5, seed=0, max_tokens=15, ignore_eos=True, **filters))
    assert [g.token_ids for g in greedy] == [s.token_ids for s in sampled]


def test_sampler_draws_from_the_filtered_softmax():
    """20,000 seeded rows of one logits vector: each token's frequency is its probability after temperature and
    top-p (within 5 standard errors), and a token top-p removed is never drawn."""
    from pocketchat.engine.sampling import Sampler

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n, params = 20_000, SamplingParams(temperature=0.8, top_p=0.9)
    sampler = Sampler([SamplingParams(temperature=0.8, top_p=0.9, seed=i) for i in range(n)], 6, torch.device("cpu"))
    counts = torch.bincount(sampler(logits.expand(n, -1).clone()), minlength=6).double()
    p = (logits / params.temperature).softmax(-1).double()
    kept = (p.cumsum(0) - p) < params.top_p  # the mass before a kept token is below top_p
    p = torch.where(kept, p, 0.0) / p[kept].sum()
    assert counts[~kept].sum() == 0 and (~kept).any()
    assert ((counts / n - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-12).all(), (counts / n, p)


def test_top_k_samples_only_among_the_k_most_likely(engine, tok):
    out = engine.generate([tok.encode("Hello")], SamplingParams(temperature=2.0, top_k=4, seed=5, max_tokens=40,
                                                                ignore_eos=True, top_logprobs=4))[0]
    assert all(t in top for t, top in zip(out.token_ids, out.top_logprobs))
    assert len({t for t in out.token_ids}) > 1  # it did sample, not just take the argmax


def test_logits_processor_mask_is_obeyed(engine, model, tok):
    V = model.config.vocab_size
    banned = set(range(0, V, 2))  # every even id, the special tokens among them
    seen_prefixes = []

    def only_odd(ids, logits):
        seen_prefixes.append(list(ids))
        assert logits.shape == (V,)
        mask = torch.ones(V, dtype=torch.bool)
        mask[::2] = False
        return mask

    outs = engine.generate(prompts(tok), SamplingParams(temperature=1.0, seed=0, max_tokens=30, logits_processor=only_odd))
    assert all(t not in banned for out in outs for t in out.token_ids)
    assert all(len(out.token_ids) == 30 for out in outs)  # the stop tokens (even ids) were banned too
    assert [] in seen_prefixes and any(len(s) == 29 for s in seen_prefixes)


def test_mask_allowing_nothing_is_a_clear_error(engine, tok):
    nothing = lambda ids, logits: torch.zeros_like(logits, dtype=torch.bool)
    with pytest.raises(UserError, match="allowed no token"):
        engine.generate([tok.encode("Hello")], SamplingParams(logits_processor=nothing))


def force(tokens: list[int]):
    """A logits processor that makes the model emit exactly `tokens` after any forced tool turn."""

    def processor(ids, logits):
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[tokens[len(ids)] if len(ids) < len(tokens) else tokens[-1]] = True
        return mask

    return processor


def test_stop_token_ends_with_stop_and_is_excluded_from_text(engine, tok):
    im_end = tok.token_id("<|im_end|>")
    body = tok.encode(" hello there")
    out = engine.generate([tok.encode("Hi")], SamplingParams(logits_processor=force(body + [im_end]), max_tokens=50))[0]
    assert out.token_ids == body + [im_end] and out.finish_reason == "stop" and out.text == " hello there"
    streamed = list(engine.stream(tok.encode("Hi"), SamplingParams(logits_processor=force(body + [im_end]))))
    assert "".join(e.text for e in streamed) == " hello there" and streamed[-1].finish_reason == "stop"


def test_max_tokens_finishes_with_length(engine, tok):
    out = engine.generate([tok.encode("Hi")], SamplingParams(temperature=0, max_tokens=7, ignore_eos=True))[0]
    assert len(out.token_ids) == 7 and out.finish_reason == "length"
    assert out.text == tok.decode(out.token_ids)


def test_stop_string_cuts_text_and_streaming_never_shows_part_of_it(engine, tok):
    p = tok.encode("The quick brown fox")
    params = dict(temperature=1.0, seed=11, max_tokens=40, ignore_eos=True)
    free = engine.generate([p], SamplingParams(**params))[0]
    # A stop string spanning two tokens in the middle of the text: its first half shows up a step early.
    k = 15
    stop = tok.decode(free.token_ids[k : k + 2])
    cut = free.text.index(stop)
    out = engine.generate([p], SamplingParams(**params, stop=[stop, "never appears \x00"]))[0]
    assert out.finish_reason == "stop" and out.text == free.text[:cut]
    assert out.token_ids == free.token_ids[: len(out.token_ids)] and len(out.token_ids) <= k + 2

    shown = ""
    for event in engine.stream(p, SamplingParams(**params, stop=[stop])):
        shown += event.text
        assert out.text.startswith(shown)  # nothing past the cut, not even the start of the stop string
    assert shown == out.text and event.finish_reason == "stop"


def test_streamed_text_is_whole_characters_and_adds_up_to_the_decoded_text(engine, tok):
    params = SamplingParams(temperature=1.0, seed=4, max_tokens=60, ignore_eos=True)
    events = list(engine.stream(tok.encode("A café serves"), params))
    ids = [t for e in events for t in e.token_ids]
    assert "".join(e.text for e in events) == tok.decode(ids) == engine.generate([tok.encode("A café serves")], params)[0].text


def test_text_stream_holds_back_a_split_utf8_character(tok):
    # "é" is two bytes; as byte tokens it arrives in two halves, and only the whole character may show.
    e1, e2 = tok.token_id("Ã"), tok.token_id("©")  # the byte-level alphabet's symbols for 0xC3 0xA9
    stream = TextStream(tok.decode, stop=[])
    for t in tok.encode("caf"):
        stream.push(t)
    stream.push(e1)
    assert stream.take(final=False) == "caf"
    stream.push(e2)
    assert stream.take(final=False) == "é"


def test_tool_call_runs_and_its_turn_is_forced(engine, model, tok, monkeypatch):
    calls = []
    monkeypatch.setattr(generate_module, "run_tool_call", lambda call, allowed=None: calls.append(call) or run_tool_call(call, allowed=allowed))
    call = json.dumps({"name": "calculator", "arguments": {"expression": "2+3"}})
    open_, close, im_start, im_end = (tok.token_id(s) for s in ("<tool_call>", "</tool_call>", "<|im_start|>", "<|im_end|>"))
    call_ids = [open_, *tok.encode(call), close]
    answer = tok.encode("The answer is 5")
    messages = [{"role": "user", "content": "What is 2+3?"}]
    prompt = render_prompt(tok, messages)
    # The engine's context after the tool turn is exactly the rendered conversation that includes it.
    with_tool = render_prompt(tok, messages + [
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": json.loads(call)}]},
        {"role": "tool", "content": "5"}])
    turn = with_tool[len(prompt) + len(call_ids):]
    script = call_ids + turn + answer + [im_end]
    companion = tok.encode("Hello")  # a plain row beside it: the forced chunk leaves holes in its cache rows
    outs = engine.generate([prompt, companion], [
        SamplingParams(tools=True, logits_processor=force(script), logprobs=True, max_tokens=200),
        SamplingParams(temperature=0, max_tokens=120, ignore_eos=True, logprobs=True),
    ])
    out = outs[0]
    assert calls == [f"<tool_call>{call}</tool_call>"]
    assert out.token_ids == script and out.finish_reason == "stop"
    assert out.forced == [False] * len(call_ids) + [True] * len(turn) + [False] * (len(answer) + 1)
    assert out.text == f"<tool_call>{call}</tool_call><|im_end|>\n<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\nThe answer is 5"
    for p, o in zip([prompt, companion], outs):  # forced tokens included: the chunked feed is exact
        expected = full_logprobs(model, p, o.token_ids).gather(1, torch.tensor(o.token_ids).unsqueeze(1)).squeeze(1)
        assert torch.allclose(torch.tensor(o.logprobs), expected, atol=1e-4)


def test_tools_need_the_chat_formats_tool_turn(model, tok):
    """The engine does not write a tool turn itself: without one from the chat format it runs no tools."""
    bare = Engine(model, tok)
    assert not bare.can_run_tools and tok.end_of_turn_id in bare.default_stop_ids  # it still stops at end of turn
    with pytest.raises(UserError, match="tool turn"):
        bare.generate([render_prompt(tok, [{"role": "user", "content": "hi"}])], SamplingParams(tools=True))


@pytest.mark.parametrize("params", [dict(tools=False), dict(tools=True, max_tool_calls=0)])
def test_tool_call_not_allowed_finishes_with_tool_calls(engine, tok, monkeypatch, params):
    monkeypatch.setattr(generate_module, "run_tool_call", lambda call, allowed=None: pytest.fail("tool must not run"))
    script = [tok.token_id("<tool_call>"), *tok.encode('{"name":"calculator"}'), tok.token_id("</tool_call>"), 9]
    out = engine.generate([tok.encode("Hi")], SamplingParams(logits_processor=force(script), **params))[0]
    assert out.finish_reason == "tool_calls" and out.token_ids == script[:-1]
    assert out.text == '<tool_call>{"name":"calculator"}</tool_call>'


def test_bf16_engine_generates(model, tok):
    bf16 = CausalLM(model.config)
    bf16.load_state_dict(model.state_dict())
    engine = Engine(bf16, tok, dtype=torch.bfloat16)
    assert engine.dtype == torch.bfloat16 and next(bf16.parameters()).dtype == torch.bfloat16
    outs = engine.generate(prompts(tok), SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=True))
    assert all(len(o.token_ids) == 8 and all(lp <= 0 for lp in o.logprobs) for o in outs)


def test_bad_input_is_a_clear_error(engine, tok):
    with pytest.raises(UserError, match="prompt 1 is empty"):
        engine.generate([[5], []])
    with pytest.raises(UserError, match="context is 256"):
        engine.generate([[5] * 300])
    with pytest.raises(UserError, match="outside the vocabulary"):
        engine.generate([[5, 10_000]])
    with pytest.raises(UserError, match="SamplingParams.top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(UserError, match="2 SamplingParams for 1 prompts"):
        engine.generate([[5]], [SamplingParams(), SamplingParams()])


def test_context_length_ends_generation(engine, tok):
    prompt = [100] * 250
    out = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))[0]
    assert len(out.token_ids) == 256 + 1 - 250 and out.finish_reason == "length"


def test_shared_prompts_prefill_once_and_sample_what_separate_prefills_sample(engine, tok, monkeypatch):
    """The n samples of a prompt (GRPO groups, API n, self-consistency) share one prefill; each seeded row still
    draws exactly what it draws when its prompt is prefilled alone."""
    rows = [p for p in prompts(tok)[:3] for _ in range(4)]
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=4 + i, ignore_eos=True, logprobs=True)
              for i in range(len(rows))]
    prefill_rows = []
    forward = engine._forward_chunks
    monkeypatch.setattr(engine, "_forward_chunks", lambda cache, pos, chunks: prefill_rows.append(len(chunks))
                        or forward(cache, pos, chunks))
    shared = engine.generate(rows, params)
    assert prefill_rows == [3]  # one row per distinct prompt
    separate = [engine.generate([p], [sp])[0] for p, sp in zip(rows, params)]
    assert [c.token_ids for c in shared] == [c.token_ids for c in separate]
    assert len({tuple(c.token_ids) for c in shared}) == len(rows)  # the seeds differ, so do the samples
    for a, b in zip(shared, separate):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


@pytest.mark.slow  # torch.compile: ~1 min on 2 CPU cores
@pytest.mark.parametrize("freeze", [True, False])
def test_compiled_decode_gives_the_eager_tokens(model, tok, freeze):
    """The compiled static-cache step and the eager step agree token for token: greedy, and sampled with seeds,
    over a ragged batch (holes under the mask) whose rows finish at different steps (the batch shrinks to 1).
    Frozen, a weight change compiles a new step; unfrozen (RL), the one step reads the new weights."""
    model = copy.deepcopy(model)  # its weights change below
    eager, compiled = Engine(model, tok), Engine(model, tok, compile=True, freeze=freeze)
    ps = prompts(tok)
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=True)
    sampled = [SamplingParams(temperature=1.0, top_p=0.9, seed=i, max_tokens=6 + 6 * i, ignore_eos=True, logprobs=True)
               for i in range(len(ps))]
    before = None
    for params in (greedy, sampled, greedy, "new weights", greedy):  # the second greedy run reuses the compiled step
        if params == "new weights":  # an in-place change: a frozen step must recompile, an unfrozen one read it
            before, step = compiled.generate(ps, greedy), compiled._step
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.5)
            continue
        want, got = eager.generate(ps, params), compiled.generate(ps, params)
        assert [c.token_ids for c in got] == [c.token_ids for c in want]
        assert max(abs(x - y) for a, b in zip(got, want) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
    assert [c.token_ids for c in got] != [c.token_ids for c in before]  # the change did change the greedy tokens
    assert (compiled._step is step) == (not freeze)
