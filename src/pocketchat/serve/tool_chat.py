"""The chat page's own route: a chat completion whose tool calls the server runs, streamed as the whole turn.

    GET  /chat/api/tools         the tools this server runs for the page (`serve --tools`, calculator by default)
    POST /chat/api/completions   a chat request as /v1/chat/completions takes it, plus `builtin_tools`: the names
                                 of the server's tools to run (default: all of them; [] runs none)

/v1/chat/completions keeps OpenAI's contract: a client that passes `tools` gets `tool_calls` back and runs them
itself. The server runs tools only here, for a request that asks by name, so a third-party client never sees
it run anything. The calls go through the engine's own tool loop (`SamplingParams.tools` = the names), which
answers a call to any other tool with a refusal as the tool's result and runs nothing. Like the pages, these
routes are the page's private API: they stay out of the OpenAPI schema that OpenAI clients read.

The stream is chat.completion.chunk frames as /v1 sends them, where a delta that carries `role` starts the
next message of the turn:

    {"role": "assistant", "content": "..."}, {"content": "..."}, ...     the model's text
    {"tool_calls": [{"index": 0, "id": ..., "type": "function", "function": {"name", "arguments"}}]}
    {"role": "tool", "tool_call_id": ..., "content": "82"}               the tool's result (or its refusal)
    {"role": "assistant", "content": "..."}, ...                          the model's continuation

and the last frame carries the finish_reason. The page keeps these messages as the conversation, so sending
them back renders the turns the model saw (`chat_format.render` writes the same tool turn the engine forced). No
markup reaches a delta: the ChatML the engine forces between the turns is what splits them, a call is held
back until it is whole, and any other special token the model writes is left out of the text.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from fastapi import APIRouter, Depends, Request

from pocketchat.chat_format import IM_END, IM_START, TOOL_CALL, missing_tool_tokens, parse_assistant
from pocketchat.engine.toolcalls import TOOLS
from pocketchat.errors import UserError
from pocketchat.serve.errors import APIError
from pocketchat.serve.jobs import Choice, ChunkFrames, GenerationFailed, Job, stream_response, usage_of
from pocketchat.serve.openai_api import partial_suffix
from pocketchat.serve.prepare import chat_prompt, check_context, check_model, sampling
from pocketchat.serve.schemas import ToolChatRequest
from pocketchat.serve.state import Server, ServerState, authorize
from pocketchat.tokenizer import Tokenizer

DEFAULT_TOOLS = ("calculator",)  # Python only when named: it runs the model's code (in the sandbox)
TURN_SEPARATOR = f"{IM_END}\n{IM_START}"  # what the engine forces around a tool turn; the model can't write it
# (<|im_end|> ends its reply)

router = APIRouter(prefix="/chat/api", dependencies=[Depends(authorize)], include_in_schema=False)


def builtin_tools(tokenizer: Tokenizer, names: Sequence[str]) -> tuple[str, ...]:
    """The tools a server runs for the page: `names`, checked against the engine's registry; none when the
    tokenizer lacks the tokens a call and its tool turn are written with (most foreign chat models)."""
    for name in names:
        if name not in TOOLS:
            raise UserError(f"--tools: unknown tool {name!r} (available: {', '.join(TOOLS)}; none turns them off)")
    return () if missing_tool_tokens(tokenizer) else tuple(dict.fromkeys(names))


@router.get("/tools")
async def tools(state: Server):
    return {"tools": list(state.tools)}


@router.post("/completions")
async def completions(body: ToolChatRequest, request: Request, state: Server):
    check_model(state, body.model)
    # what this route can't honour is refused, not dropped (/v1/chat/completions takes all of it)
    for name in ("tools", "tool_choice", "response_format", "logprobs", "top_logprobs"):
        if getattr(body, name):
            raise APIError(400, f"{name} is not supported here: this route runs the server's own tools "
                           "(builtin_tools); /v1/chat/completions takes it", param=name)
    if body.ignore_eos:  # the model would write past its end of turn, where the turns are split
        raise APIError(400, "ignore_eos is not supported here", param="ignore_eos")
    names = state.tools if body.builtin_tools is None else tuple(dict.fromkeys(body.builtin_tools))
    for name in names:
        if name not in state.tools:
            raise APIError(400, f"builtin_tools: {name!r} is not among the tools this server runs "
                           f"({', '.join(state.tools) or 'none'}; `pocketchat serve --tools` sets them)",
                           param="builtin_tools")
    state.check_size(body.n or 1, f"n = {body.n}", "n")
    prompt = chat_prompt(state, body, tools=False)
    check_context(state, prompt, "messages")
    params = sampling(body, body.max_completion_tokens or body.max_tokens or state.context, False, 0, None,
                      tools=names)
    job = Job(state.batcher, [(prompt, params)])
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.model_id}
    specials = special_texts(state.tokenizer)
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return stream_response(turn_stream(job, meta, len(prompt), specials, usage))
    choices = await job.collect(request)
    out = []
    for i, c in enumerate(choices):
        turn = Turn(specials)
        turn.update(c.text, final=True)
        out.append({"index": i, "messages": turn.messages, "finish_reason": c.finish_reason})
    return {**meta, "object": "chat.completion", "choices": out, "usage": usage_of(len(prompt), choices)}


# ---- a completion's text as the messages of its turn ------------------------------------------------------------

def special_texts(tokenizer: Tokenizer) -> list[str]:
    """The text of every special token: decoding keeps them, the screen must not."""
    return [t.content for t in tokenizer.hf.get_added_tokens_decoder().values() if t.special]


def turn_messages(text: str, final: bool, specials: Sequence[str]) -> list[dict]:
    """The messages that a completion's text (with the tool turns the engine forced) shows for sure so far:
    assistant and tool messages in turn. Until `final`, the last assistant message stops before a call that
    may still be unfinished."""
    segments = text.split(TURN_SEPARATOR)
    messages = []
    for i, segment in enumerate(segments):
        done = final or i < len(segments) - 1
        role, _, content = ("assistant", "", segment) if i == 0 else segment.partition("\n")
        if role == "tool":
            messages.append({"role": "tool", "content": content})
        else:  # the engine forces only tool turns and the assistant turn after each
            messages.append(assistant_message(content, done, specials))
    return messages


def assistant_message(text: str, done: bool, specials: Sequence[str]) -> dict:
    """The model's text, and its tool call once the call is whole. A call that doesn't parse is left out: the
    engine answered it with an "Error: ..." result, which the tool message that follows shows."""
    cut = text.find(TOOL_CALL)
    if cut < 0:
        cut = len(text) if done else len(text) - partial_suffix(text, TOOL_CALL)
    message = {"role": "assistant", "content": without(text[:cut], specials)}
    if done and cut < len(text):
        calls = parse_assistant(text[cut:]).get("tool_calls")
        if calls:
            message["tool_calls"] = calls
    return message


def without(text: str, specials: Sequence[str]) -> str:
    for s in specials:
        text = text.replace(s, "")
    return text


class Turn:
    """One completion's messages as the client has been sent them; `update` says what is new as deltas."""

    def __init__(self, specials: Sequence[str]):
        self.specials = specials
        self.messages: list[dict] = []

    def update(self, text: str, final: bool) -> list[dict]:
        deltas = []
        for j, m in enumerate(turn_messages(text, final, self.specials)):
            if j == len(self.messages):  # a new message: its role, its text so far, for a result the call
                start = {"role": m["role"], "content": m["content"]}
                if m["role"] == "tool":
                    calls = self.messages[-1].get("tool_calls") if self.messages else None
                    start["tool_call_id"] = calls[-1]["id"] if calls else None  # None: a call that didn't parse
                self.messages.append(start)
                deltas.append(dict(start))
            sent = self.messages[j]
            if len(m["content"]) > len(sent["content"]):
                deltas.append({"content": m["content"][len(sent["content"]):]})
                sent["content"] = m["content"]
            if "tool_calls" in m and "tool_calls" not in sent:
                sent["tool_calls"] = [{**call, "id": f"call_{uuid.uuid4().hex[:24]}"} for call in m["tool_calls"]]
                deltas.append({"tool_calls": [{"index": k, **call} for k, call in enumerate(sent["tool_calls"])]})
        return deltas


async def turn_stream(job: Job, meta: dict, prompt_tokens: int, specials: Sequence[str], usage: bool):
    """SSE frames of the whole turn of each choice (see the module docstring); then usage (when asked) and
    [DONE]."""
    frames = ChunkFrames(meta, usage)
    choices = [Choice() for _ in range(job.n)]
    turns = [Turn(specials) for _ in range(job.n)]
    try:
        async for d in job.added(choices):
            for delta in turns[d.index].update(choices[d.index].text, final=d.finish_reason is not None):
                yield frames.choice(d.index, delta)
            if d.finish_reason is not None:
                yield frames.choice(d.index, {}, d.finish_reason)
    except GenerationFailed as e:
        yield e.frame
        return
    for end in frames.end(prompt_tokens, choices):
        yield end
