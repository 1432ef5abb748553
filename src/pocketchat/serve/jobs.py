"""A request's completions in flight on the shared `Batcher`, and the SSE framing of streamed answers.

Request handlers run on the asyncio loop; the model runs in the batcher's thread. A request becomes a
`Job`: its completions are submitted to the batcher, whose callback puts each `Delta` on the job's asyncio
queue (`call_soon_threadsafe`). A job whose client goes away is cancelled, so its rows leave the batch at
the next step: for a stream, starlette cancels the response when the client disconnects; a non-streamed
request polls for the disconnect while it waits.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from pocketchat.engine import Completion, SamplingParams
from pocketchat.engine.batcher import Batcher, Delta, QueueFull
from pocketchat.serve.errors import APIError

DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there


@dataclass
class Choice:
    """One completion put together from its deltas."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    generated: int = 0  # tokens generated, a final stop token included (usage counts it)
    completion: Completion | None = None  # the engine's whole completion, once finished

    def add(self, d: Delta) -> None:
        self.text += d.text
        self.token_ids += d.token_ids
        self.logprobs += d.logprobs or []
        self.top_logprobs += d.top_logprobs or []
        if d.finish_reason is not None:
            self.finish_reason, self.completion = d.finish_reason, d.completion
            self.generated = len(d.completion.token_ids) if d.completion else len(self.token_ids)


class GenerationFailed(Exception):
    def __init__(self, frame: str):
        super().__init__(frame)
        self.frame = frame  # the SSE frame that ends the stream (OpenAI's error shape)


class Job:
    """A request's completions in flight: groups of (prompt, params per completion) submitted together.
    Completions are numbered across the groups in order (OpenAI's choice index)."""

    def __init__(self, batcher: Batcher, groups: list[tuple[list[int], list[SamplingParams]]]):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Delta] | None] = asyncio.Queue()  # None: the client disconnected
        self.tickets, self.n = [], 0
        try:
            for prompt, params in groups:
                push = lambda d, offset=self.n: loop.call_soon_threadsafe(self.queue.put_nowait, (offset, d))
                self.tickets.append(batcher.submit(prompt, params, push))
                self.n += len(params)
        except QueueFull as e:
            self.cancel()
            raise APIError(503, f"the server is busy ({e}); retry shortly", type="server_overloaded",
                           code="queue_full") from None

    def cancel(self) -> None:
        for t in self.tickets:
            t.cancel()

    async def deltas(self, request: Request | None = None) -> AsyncIterator[Delta]:
        """Deltas as they come, index set to the choice; ends when every completion has finished. With
        `request`, also ends (cancelling the job) when that client disconnects."""
        watcher = asyncio.create_task(self._watch(request)) if request is not None else None
        left = self.n
        try:
            while left:
                item = await self.queue.get()
                if item is None:  # the client went away
                    return
                offset, d = item
                left -= d.finish_reason is not None
                d.index += offset
                yield d
        finally:
            self.cancel()  # a no-op once all finished; otherwise the client is gone or the stream broke
            if watcher is not None:
                watcher.cancel()

    async def added(self, choices: list[Choice]) -> AsyncIterator[Delta]:
        """Deltas as they come, each added to its choice first (for a stream). A failed generation cancels
        the job and raises `GenerationFailed`, which carries the frame that ends the stream."""
        async for d in self.deltas():
            if d.finish_reason == "error":
                self.cancel()
                raise GenerationFailed(failed_frame(d))
            choices[d.index].add(d)
            yield d

    async def _watch(self, request: Request) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        self.cancel()
        self.queue.put_nowait(None)

    async def collect(self, request: Request) -> list[Choice]:
        choices = [Choice() for _ in range(self.n)]
        async for d in self.deltas(request):
            if d.finish_reason == "error":
                self.cancel()
                raise APIError(500, f"generation failed: {d.error}", type="server_error")
            if d.finish_reason == "cancelled":
                self.cancel()
                raise APIError(503, "the request was cancelled (the server is shutting down)", type="server_error")
            choices[d.index].add(d)
        return choices


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class ChunkFrames:
    """The SSE frames of a streamed chat answer (chat.completion.chunk), for each route that streams one."""

    def __init__(self, meta: dict, usage: bool):
        self.base = {**meta, "object": "chat.completion.chunk", "system_fingerprint": None}
        self.usage = usage  # stream_options.include_usage: every chunk says "usage": null, a last one has it

    def choice(self, i: int, delta: dict, finish: str | None = None, lp: list | None = None) -> str:
        choice = {"index": i, "delta": delta, "logprobs": lp and {"content": lp}, "finish_reason": finish}
        return sse({**self.base, "choices": [choice], **({"usage": None} if self.usage else {})})

    def end(self, prompt_tokens: int, choices: list[Choice]) -> Iterator[str]:
        if self.usage:
            yield sse({**self.base, "choices": [], "usage": usage_of(prompt_tokens, choices)})
        yield "data: [DONE]\n\n"


def failed_frame(d: Delta) -> str:
    """The SSE frame that ends a stream whose generation failed (OpenAI's error shape)."""
    return sse({"error": {"message": f"generation failed: {d.error}", "type": "server_error", "param": None, "code": None}})


def stream_response(frames) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def usage_of(prompt_tokens: int, choices: list[Choice]) -> dict:
    completion = sum(c.generated for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}
