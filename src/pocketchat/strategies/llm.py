"""The one interface every strategy reaches a model through: `LLM.complete(messages, ...)`.

Two backends: `LocalLLM` runs pocketchat's engine in this process; `OpenAILLM` talks to any OpenAI-compatible
endpoint (pocketchat's own server, vLLM, llama.cpp's server), so one strategy serves our small models and
big remote ones alike.

Tools run on the client, the same way for both backends: the model asks for a call (a ChatML <tool_call>
locally, `tool_calls` over the API), the backend runs it, appends the assistant and tool turns and asks
again, up to `max_tool_calls` rounds. Any `Tool` works, not only the engine's built-in ones, so a
retrieval tool over a document store plugs in like the calculator.

Many strategies at once: `LocalLLM.batched()` puts a continuous batcher (`pocketchat.engine.batcher`) in
front of the engine, so calls made from many threads (one per problem, see `strategies.run.evaluate`'s
`workers`) share the engine's decode steps, the way concurrent requests share a server's. An endpoint
batches concurrent requests itself.

Compute is counted in tokens, as an API bills them: each generation carries its completion tokens and the
prompt tokens it caused to be read (a prompt shared by n samples counts once, on the first), so summing a
strategy's generations gives what it spent. `Metered` does that sum for a strategy.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from pocketchat.chat_format import parse_assistant, render_prompt
from pocketchat.engine import Completion, Engine, SamplingParams
from pocketchat.engine.toolcalls import call_tool
from pocketchat.engine.tools import Tool
from pocketchat.errors import UserError


@dataclass
class ToolCall:
    """A tool call the model made and what the tool answered."""

    name: str
    arguments: str  # the JSON text the model wrote
    output: str


@dataclass
class Generation:
    text: str  # the final assistant content (after any tool rounds)
    tokens: int  # completion tokens, over every tool round
    prompt_tokens: int  # prompt tokens read for this generation (see the module docstring)
    finish_reason: str  # "stop" | "length" | "tool_calls" (still calling tools when the rounds ran out)
    tool_calls: list[ToolCall] = field(default_factory=list)


class LLM(Protocol):
    def complete(self, messages: list[dict], *, n: int = 1, temperature: float = 0.0, max_tokens: int = 256,
                 stop: Sequence[str] | None = None, seed: int | None = None,
                 tools: Sequence[Tool] | None = None) -> list[Generation]:
        """n completions of the next assistant turn of `messages` (OpenAI-style). temperature 0 is greedy;
        with a seed, sample i uses seed + i, so a run repeats exactly."""

    def complete_text(self, prompt: str, *, n: int = 1, temperature: float = 0.0, max_tokens: int = 256,
                      stop: Sequence[str] | None = None, seed: int | None = None) -> list[Generation]:
        """n continuations of a plain-text document, no chat template (how a base model is asked); seeds as above."""


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Result:
    """What every strategy returns: its answer (None when it found none), how it got there, what it spent."""

    answer: str | None
    trace: dict  # strategy-specific: the samples, votes, attempts, tree or steps (see each strategy)
    usage: Usage


class Metered:
    """An LLM that adds up what every call through it spent; each strategy wraps its model in one."""

    def __init__(self, llm: LLM):
        self.llm, self.usage = llm, Usage()

    def complete(self, messages: list[dict], **kwargs) -> list[Generation]:
        return self._count(self.llm.complete(messages, **kwargs))

    def complete_text(self, prompt: str, **kwargs) -> list[Generation]:
        return self._count(self.llm.complete_text(prompt, **kwargs))

    def _count(self, out: list[Generation]) -> list[Generation]:
        self.usage.calls += 1
        self.usage.prompt_tokens += sum(g.prompt_tokens for g in out)
        self.usage.completion_tokens += sum(g.tokens for g in out)
        return out


@dataclass
class _Raw:
    """One sampled assistant turn, before tools run: its text and the calls it asks for (name, JSON text)."""

    text: str
    calls: list[tuple[str, str]]
    tokens: int
    prompt_tokens: int
    finish_reason: str


class ChatBackend:
    """What both backends share: argument checks, seeds per sample, and the client-side tool loop."""

    max_tool_calls = 4

    def _sample(self, messages: list[dict], n: int, temperature: float, max_tokens: int, stop: list[str],
                seed: int | None, tools: list[dict] | None) -> list[_Raw]:
        raise NotImplementedError

    def _sample_text(self, prompt: str, n: int, temperature: float, max_tokens: int, stop: list[str],
                     seed: int | None) -> list[_Raw]:
        raise NotImplementedError

    def complete_text(self, prompt: str, *, n: int = 1, temperature: float = 0.0, max_tokens: int = 256,
                      stop: Sequence[str] | None = None, seed: int | None = None) -> list[Generation]:
        if n < 1:
            raise UserError(f"complete_text: n must be >= 1, got {n}")
        raws = self._sample_text(prompt, n, temperature, max_tokens, list(stop or []), seed)
        return [Generation(r.text, r.tokens, r.prompt_tokens, r.finish_reason) for r in raws]

    def complete(self, messages: list[dict], *, n: int = 1, temperature: float = 0.0, max_tokens: int = 256,
                 stop: Sequence[str] | None = None, seed: int | None = None,
                 tools: Sequence[Tool] | None = None) -> list[Generation]:
        if n < 1:
            raise UserError(f"complete: n must be >= 1, got {n}")
        stop = list(stop or [])
        specs = [t.spec() for t in tools] if tools else None
        raws = self._sample(messages, n, temperature, max_tokens, stop, seed, specs)
        out = []
        for i, raw in enumerate(raws):
            calls: list[ToolCall] = []
            tokens, prompt_tokens, convo = raw.tokens, raw.prompt_tokens, list(messages)
            for _ in range(self.max_tool_calls if tools else 0):
                if not raw.calls:
                    break
                ids = [f"call_{len(calls) + k}" for k in range(len(raw.calls))]
                convo.append({"role": "assistant", "content": raw.text or None, "tool_calls": [
                    {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}
                    for id_, (name, arguments) in zip(ids, raw.calls)]})
                for id_, (name, arguments) in zip(ids, raw.calls):
                    calls.append(ToolCall(name, arguments, call_tool(name, arguments, {t.name: t for t in tools})))
                    convo.append({"role": "tool", "tool_call_id": id_, "name": name, "content": calls[-1].output})
                raw = self._sample(convo, 1, temperature, max_tokens, stop, None if seed is None else seed + i, specs)[0]
                tokens, prompt_tokens = tokens + raw.tokens, prompt_tokens + raw.prompt_tokens
            finish = "tool_calls" if raw.calls else raw.finish_reason
            out.append(Generation(raw.text, tokens, prompt_tokens, finish, calls))
        return out


class LocalLLM(ChatBackend):
    """pocketchat's engine: the prompt is rendered with the checkpoint's chat template, all n samples run as
    one batch. The engine stops at a </tool_call> (its own tool running is off) and the loop above runs it.

    Inside `with llm.batched():` calls from any number of threads join one running batch instead."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._batcher = None

    @contextmanager
    def batched(self, max_batch: int = 16) -> Iterator[LocalLLM]:
        """Continuous batching for concurrent callers: up to `max_batch` completions decode together, the
        rest wait for a free row. Re-entering an open context reuses its batcher."""
        if self._batcher is not None:
            yield self
            return
        from pocketchat.engine.batcher import Batcher

        with Batcher(self.engine, max_batch=max_batch, max_queue=1 << 20) as batcher:
            self._batcher = batcher
            try:
                yield self
            finally:
                self._batcher = None

    def _generate(self, prompt: list[int], params: list[SamplingParams]) -> list[Completion]:
        """len(params) completions of one prompt: one engine batch, or rows of the running batcher's batch."""
        batcher = self._batcher
        if batcher is None:
            return self.engine.generate([prompt] * len(params), params)
        out: list[Completion | None] = [None] * len(params)
        failed: list[str] = []
        left, done, lock = [len(params)], threading.Event(), threading.Lock()

        def on_delta(delta) -> None:  # called on the batcher's thread
            if delta.finish_reason is None:
                return
            if delta.completion is None or delta.finish_reason == "error":
                failed.append(delta.error or delta.finish_reason)
            out[delta.index] = delta.completion
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        batcher.submit(prompt, params, on_delta)
        done.wait()
        if failed:
            raise RuntimeError(f"generation failed: {failed[0]}")
        return out

    @staticmethod
    def _params(n, temperature, max_tokens, stop, seed) -> list[SamplingParams]:
        return [SamplingParams(temperature=temperature, max_tokens=max_tokens, stop=stop,
                               seed=None if seed is None else seed + i) for i in range(n)]

    def _sample_text(self, prompt, n, temperature, max_tokens, stop, seed):
        ids = self.engine.tokenizer.encode_prompt(prompt)
        return [_Raw(c.text, [], len(c.token_ids), len(ids) if i == 0 else 0, c.finish_reason)
                for i, c in enumerate(self._generate(ids, self._params(n, temperature, max_tokens, stop, seed)))]

    def _sample(self, messages, n, temperature, max_tokens, stop, seed, tools):
        prompt = render_prompt(self.engine.tokenizer, messages)
        raws = []
        for i, c in enumerate(self._generate(prompt, self._params(n, temperature, max_tokens, stop, seed))):
            text, calls, finish = c.text, [], c.finish_reason
            if finish == "tool_calls":  # without tools offered, a </tool_call> is just where the answer stops
                message = parse_assistant(text) if tools else {}
                calls = [(call["function"]["name"], call["function"]["arguments"]) for call in message.get("tool_calls", [])]
                text, finish = ((message["content"] or ""), finish) if calls else (text, "stop")
            raws.append(_Raw(text, calls, len(c.token_ids), len(prompt) if i == 0 else 0, finish))
        return raws


def concurrently(llm: LLM, workers: int, max_batch: int | None = None):
    """A context in which `workers` threads may call `llm` at once and share its batches: a local engine
    gets a continuous batcher (rows: max_batch, default workers); an endpoint batches by itself."""
    batched = getattr(llm, "batched", None)
    if workers <= 1 or batched is None:
        return nullcontext(llm)
    return batched(max_batch or workers)


def parallel_map(llm: LLM, fn: Callable, items: Iterable, workers: int = 1, max_batch: int | None = None) -> list:
    """[fn(item) for item in items], `workers` items at a time, their calls to `llm` batched together."""
    if workers <= 1:
        return [fn(item) for item in items]
    with concurrently(llm, workers, max_batch), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _api_url(url: str) -> str:
    """OpenAI-compatible servers live under /v1: a bare host:port gets it appended."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise UserError(f"--endpoint must be a URL like http://127.0.0.1:8000/v1, got {url!r}")
    return url.rstrip("/") + "/v1" if parts.path in ("", "/") else url


class OpenAILLM(ChatBackend):
    """Any OpenAI-compatible chat completions endpoint, through the `openai` client.

    Servers that ignore `n` (llama.cpp's) return fewer choices; the rest are asked for one request at a
    time. Per-choice completion tokens are not reported by the API, so a request's total is split evenly.
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout: float = 600.0):
        try:
            import openai
        except ImportError:
            raise UserError("the endpoint backend needs the openai client: pip install openai") from None
        self.openai, self.base_url = openai, _api_url(base_url)
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
                                    timeout=timeout, max_retries=1)
        self.model = model or self._call(lambda: self.client.models.list().data[0].id)

    def _call(self, request):
        try:
            return request()
        except self.openai.APIConnectionError as e:
            raise UserError(f"cannot reach {self.base_url}: {e}") from None
        except self.openai.APIStatusError as e:
            raise UserError(f"{self.base_url} answered {e.status_code}: {e.message}") from None
        except IndexError:
            raise UserError(f"{self.base_url} lists no models; pass the model name") from None

    def _collect(self, n: int, seed: int | None, create, read) -> list[_Raw]:
        """n choices: create(k, seed) asks for k more (servers that ignore n return fewer, so ask again); read(choice)
        gives its (text, calls). A response's completion tokens are split evenly over its choices."""
        raws: list[_Raw] = []
        while len(raws) < n:
            response = self._call(lambda: create(n - len(raws), None if seed is None else seed + len(raws)))
            if not response.choices:
                raise UserError(f"{self.base_url} returned no choices")
            usage = response.usage
            share, extra_tokens = divmod(usage.completion_tokens if usage else 0, len(response.choices))
            for k, choice in enumerate(response.choices):
                text, calls = read(choice)
                raws.append(_Raw(text, calls, share + (k < extra_tokens),
                                 (usage.prompt_tokens if usage else 0) if k == 0 else 0, choice.finish_reason))
        return raws[:n]

    def _sample_text(self, prompt, n, temperature, max_tokens, stop, seed):
        return self._collect(n, seed, lambda k, s: self.client.completions.create(
            model=self.model, prompt=prompt, n=k, temperature=temperature, max_tokens=max_tokens, stop=stop or None,
            seed=s), lambda choice: (choice.text, []))

    def _sample(self, messages, n, temperature, max_tokens, stop, seed, tools):
        extra = {"tools": tools} if tools else {}
        return self._collect(n, seed, lambda k, s: self.client.chat.completions.create(
            model=self.model, messages=messages, n=k, temperature=temperature, max_tokens=max_tokens,
            stop=stop or None, seed=s, **extra),
            lambda choice: (choice.message.content or "",
                            [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]))
