"""The OpenAI-compatible API: GET /health (no key) and, behind the API key, GET /v1/models,
POST /v1/chat/completions, POST /v1/completions (streamed as SSE when asked).

The handlers only orchestrate: prepare.py turns a body into prompt, sampling params and constraint; a `Job`
(jobs.py) runs them on the shared batcher; the functions below shape the answer. A route that runs a chat
another way (e.g. with the engine's own tools on) reuses `chat_prompt`, `sampling` and `chat_stream`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict

from fastapi import APIRouter, Depends, Request

from pocketchat.chat_format import TOOL_CALL, parse_assistant
from pocketchat.serve.errors import APIError
from pocketchat.serve.jobs import (Choice, ChunkFrames, GenerationFailed, Job, failed_frame, sse,
                                   stream_response, usage_of)
from pocketchat.serve.prepare import chat_processor, chat_prompt, check_context, check_model, sampling, text_prompts
from pocketchat.serve.schemas import ChatRequest, CompletionRequest
from pocketchat.serve.state import Server, ServerState, authorize

router = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])


@router.get("/health")
async def health(state: Server):
    return {"status": "ok", "model": state.model_id, **asdict(state.batcher.stats)}


@v1.get("/models")
async def models(state: Server):
    return {"object": "list", "data": [{"id": state.model_id, "object": "model", "created": state.created,
                                        "owned_by": "pocketchat", "max_model_len": state.context}]}


@v1.post("/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, state: Server):
    check_model(state, body.model)
    tools = bool(body.tools) and body.tool_choice != "none"
    if body.top_logprobs and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    state.check_size(body.n or 1, f"n = {body.n}", "n")
    prompt = chat_prompt(state, body, tools)
    check_context(state, prompt, "messages")
    params = sampling(body, body.max_completion_tokens or body.max_tokens or state.context, bool(body.logprobs),
                      body.top_logprobs or 0, chat_processor(state, body, tools))
    job = Job(state.batcher, [(prompt, params)])
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.model_id}
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return stream_response(chat_stream(state, job, meta, len(prompt), tools, bool(body.logprobs), usage))
    choices = await job.collect(request)
    out = []
    for i, c in enumerate(choices):
        message, finish = chat_message(c, tools)
        logprobs = {"content": logprob_entries(state, c.token_ids, c.logprobs, c.top_logprobs)} if body.logprobs else None
        out.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
    return {**meta, "object": "chat.completion", "choices": out, "usage": usage_of(len(prompt), choices)}


@v1.post("/completions")
async def completions(body: CompletionRequest, request: Request, state: Server):
    check_model(state, body.model)
    if body.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if body.best_of not in (None, body.n or 1):
        raise APIError(400, "best_of is not supported (it must equal n)", param="best_of")
    prompts, texts = text_prompts(state, body.prompt)
    n = body.n or 1
    state.check_size(len(prompts) * n, f"{len(prompts)} prompts × n = {n}", "prompt" if len(prompts) > 1 else "n")
    k = body.logprobs
    params = sampling(body, body.max_tokens or 16, k is not None, k or 0, None)
    job = Job(state.batcher, [(p, params) for p in prompts])
    echo = [text if body.echo else "" for text in texts for _ in params]
    meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.model_id}
    prompt_tokens = sum(len(p) for p in prompts)
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return stream_response(completion_stream(state, job, meta, prompt_tokens, echo, k is not None, usage))
    choices = await job.collect(request)
    out = [{"index": i, "text": echo[i] + c.text, "finish_reason": completion_finish(c.finish_reason),
            "logprobs": legacy_logprobs(state, c.token_ids, c.logprobs, c.top_logprobs, len(echo[i])) if k is not None else None}
           for i, c in enumerate(choices)]
    return {**meta, "object": "text_completion", "choices": out, "usage": usage_of(prompt_tokens, choices)}


router.include_router(v1)


# ---- chat answers ----------------------------------------------------------------------------------------------

def chat_message(c: Choice, tools: bool) -> tuple[dict, str]:
    """The assistant message and finish reason of a finished choice."""
    if tools:
        message = parse_assistant(c.text)
        if "tool_calls" in message:
            for call in message["tool_calls"]:
                call["id"] = f"call_{uuid.uuid4().hex[:24]}"
            return message, "tool_calls"
    # without tools offered, a </tool_call> the model writes is just where its answer stops
    return {"role": "assistant", "content": c.text}, "stop" if c.finish_reason == "tool_calls" else c.finish_reason


def logprob_entries(state: ServerState, ids: list[int], lps: list[float], tops: list[dict[int, float]]) -> list[dict]:
    pieces = state.pieces

    def entry(i: int, lp: float) -> dict:
        return {"token": pieces.text(i), "logprob": lp, "bytes": list(pieces.bytes(i))}

    return [{**entry(i, lp), "top_logprobs": [entry(t, l) for t, l in (tops[k] if tops else {}).items()]}
            for k, (i, lp) in enumerate(zip(ids, lps))]


async def chat_stream(state: ServerState, job: Job, meta: dict, prompt_tokens: int, tools: bool, logprobs: bool,
                      usage: bool):
    """SSE frames: a role delta per choice, content deltas, a last delta with finish_reason; then usage
    (when asked) and [DONE]. With tools, text from <tool_call> on is held back and sent as tool_calls."""
    frames = ChunkFrames(meta, usage)
    frame = frames.choice
    for i in range(job.n):
        yield frame(i, {"role": "assistant", "content": ""})
    choices = [Choice() for _ in range(job.n)]
    sent = [0] * job.n  # characters of each choice's text sent as content
    try:
        async for d in job.added(choices):
            c = choices[d.index]
            visible = c.text
            if tools:  # show text up to a tool call, less a tail that may be the start of its tag
                cut = visible.find(TOOL_CALL)
                if cut >= 0:
                    visible = visible[:cut]
                elif d.finish_reason is None:
                    visible = visible[: len(visible) - partial_suffix(visible, TOOL_CALL)]
            content = visible[sent[d.index]:]
            sent[d.index] += len(content)
            lp = None
            if logprobs and d.token_ids:
                lp = logprob_entries(state, d.token_ids, d.logprobs, d.top_logprobs or [])
            if content or lp:
                yield frame(d.index, {"content": content} if content else {}, lp=lp)
            if d.finish_reason is not None:
                message, finish = chat_message(c, tools)
                delta = {}
                if "tool_calls" in message:
                    delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]
                elif len(c.text) > sent[d.index]:  # held back as a possible tool call, but it was not one
                    delta["content"] = c.text[sent[d.index]:]
                yield frame(d.index, delta, finish)
    except GenerationFailed as e:
        yield e.frame
        return
    for end in frames.end(prompt_tokens, choices):
        yield end


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    return max((k for k in range(1, len(tag)) if text.endswith(tag[:k])), default=0)


# ---- text completions ------------------------------------------------------------------------------------------

async def completion_stream(state: ServerState, job: Job, meta: dict, prompt_tokens: int, echo: list[str],
                            logprobs: bool, usage: bool):
    base = {**meta, "object": "text_completion"}
    extra = {"usage": None} if usage else {}
    choices = [Choice() for _ in range(job.n)]
    offsets = [len(e) for e in echo]
    async for d in job.deltas():
        if d.finish_reason == "error":
            job.cancel()
            yield failed_frame(d)
            return
        c = choices[d.index]
        text = (echo[d.index] if not c.text and not c.token_ids else "") + d.text
        c.add(d)
        lp = legacy_logprobs(state, d.token_ids, d.logprobs, d.top_logprobs, offsets[d.index]) if logprobs else None
        offsets[d.index] += len(d.text)
        finish = completion_finish(d.finish_reason)
        if text or lp or finish:
            choice = {"index": d.index, "text": text, "logprobs": lp, "finish_reason": finish}
            yield sse({**base, "choices": [choice], **extra})
    if usage:
        yield sse({**base, "choices": [], "usage": usage_of(prompt_tokens, choices)})
    yield "data: [DONE]\n\n"


def legacy_logprobs(state: ServerState, ids, lps, tops, offset: int) -> dict:
    """/v1/completions' logprobs: parallel lists, and each token's character offset in the choice text."""
    texts = [state.pieces.text(i) for i in ids]
    starts = []
    for t in texts:
        starts.append(offset)
        offset += len(t)
    return {"tokens": texts, "token_logprobs": lps, "text_offset": starts,
            "top_logprobs": [{state.pieces.text(t): l for t, l in top.items()} for top in tops] if tops else None}


def completion_finish(reason: str | None) -> str | None:
    # a text completion has no tool calls: the </tool_call> it stopped at is just a stop
    return "stop" if reason == "tool_calls" else reason
