"""The OpenAI-compatible server and the web chat page, over one shared `Batcher`.

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models   GET /health   GET / (chat page)
    GET /label and /label/api/* (the labeling page, when create_app is given a comparison file; labeling.py)

Request handlers run on the asyncio loop; the model runs in the batcher's thread. A request becomes a
`Job`: its completions are submitted to the batcher, whose callback puts each `Delta` on the job's asyncio
queue (`call_soon_threadsafe`). A job whose client goes away is cancelled, so its rows leave the batch at
the next step: for a stream, starlette cancels the response when the client disconnects; a non-streamed
request polls for the disconnect while it waits.

Tool calls: when the request offers tools, the model's <tool_call>{json}</tool_call> is returned to the
client as OpenAI `tool_calls` (the server never runs them; the engine stops at </tool_call>). pocketchat's
ChatML template has no place for tool definitions, so its models only call the tools they were trained
on; a checkpoint with its own chat template gets `tools` passed to it, as transformers does. A forced call
(tool_choice "required" or a named function) is decoded under a grammar (engine/constrain.py, llguidance):
the call tags, a name among those allowed, and arguments valid under that tool's `parameters` schema.

Every error is OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with a 4xx status for
anything the client can fix; the server keeps serving whatever a request holds.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from pocketchat.chat import CHAT_TEMPLATE, TOOL_CALL, parse_assistant, render_prompt, render_with_template
from pocketchat.engine import Completion, Engine, SamplingParams
from pocketchat.engine.batcher import Batcher, Delta, QueueFull
from pocketchat.errors import UserError
from pocketchat.serve.schemas import ChatRequest, CompletionRequest, Sampling, error_param
from pocketchat.tokenizer import UNICODE_TO_BYTE

STATIC = Path(__file__).parent / "static"
# A forced tool call's JSON (see forced_call_processor): compact or json.dumps-spaced, nothing more.
TOOL_CALL_JSON = {"whitespace_flexible": True, "whitespace_pattern": " ?", "lenient": True}
DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there
# The chat page loads nothing from elsewhere and runs no inline script: even a rendering bug could not
# execute model output.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class TokenPieces:
    """Each token's bytes and display text, for logprobs (a byte-level token may be part of a character)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.added = set(tokenizer.hf.get_added_tokens_decoder())
        self._bytes: dict[int, bytes] = {}

    def bytes(self, i: int) -> bytes:
        if i not in self._bytes:
            piece = self.tokenizer.hf.id_to_token(i) or ""
            try:
                b = piece.encode() if i in self.added else bytes(UNICODE_TO_BYTE[c] for c in piece)
            except KeyError:  # not a byte-level vocabulary
                b = self.tokenizer.decode([i]).encode()
            self._bytes[i] = b
        return self._bytes[i]

    def text(self, i: int) -> str:
        return self.bytes(i).decode("utf-8", errors="replace")


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


def create_app(engine: Engine, model_id: str, api_key: str | None = None, max_batch: int = 16,
               max_queue: int = 64, label: str | Path | None = None, label_tasks: Sequence[str] | None = None,
               augment: Callable[[str], str] | None = None) -> FastAPI:
    """The server for one model. `app.state.batcher` runs from startup to shutdown (the app's lifespan).

    augment: applied to the last user message of every chat request before rendering (`serve --rag INDEX`
    puts retrieved passages there).

    label: a comparison JSONL file; with it the app also serves the labeling page at /label (see
    serve/labeling.py), drawing task prompts from `label_tasks` (default: those `pocketchat compare` uses)."""
    batcher = Batcher(engine, max_batch=max_batch, max_queue=max_queue)
    tokenizer, context = engine.tokenizer, engine.config.max_position_embeddings
    pieces = TokenPieces(tokenizer)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.close()

    app = FastAPI(title="pocketchat", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher

    # ---- errors --------------------------------------------------------------------------------------------

    @app.exception_handler(APIError)
    async def on_api_error(request, e: APIError):
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return error_response(e.status, e.message, e.type, e.param, e.code, headers)

    @app.exception_handler(UserError)
    async def on_user_error(request, e: UserError):
        return error_response(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, e: RequestValidationError):
        errors = e.errors()
        first = errors[0]
        if first["type"] == "json_invalid":
            return error_response(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
        param = error_param(tuple(first["loc"]))
        if not param:
            return error_response(400, "the request body must be a JSON object with the request's fields")
        # A union (e.g. stop: str | list[str]) fails once per alternative: say them all.
        messages = [err["msg"] for err in errors if error_param(tuple(err["loc"])) == param]
        return error_response(400, f"{param}: {' or '.join(dict.fromkeys(messages))}", param=param)

    @app.exception_handler(Exception)
    async def on_bug(request, e: Exception):
        return error_response(500, f"internal error: {type(e).__name__}: {e}", type="server_error")

    @app.exception_handler(HTTPException)
    async def on_http_error(request, e: HTTPException):
        return error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                              code="not_found" if e.status_code == 404 else None)

    # ---- the API -------------------------------------------------------------------------------------------

    async def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "missing or wrong API key (send the header Authorization: Bearer KEY)",
                           code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    def check_model(name: str) -> None:
        if name != model_id:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_id!r}",
                           param="model", code="model_not_found")

    def check_context(prompt: list[int], param: str) -> None:
        if len(prompt) > context:
            raise APIError(400, f"this model's maximum context length is {context} tokens; the {param} have "
                           f"{len(prompt)} tokens", param=param, code="context_length_exceeded")
        if not prompt:
            raise APIError(400, f"the {param} are empty", param=param)

    def sampling(body: Sampling, max_tokens: int, logprobs: bool, top_logprobs: int, processor) -> list[SamplingParams]:
        """SamplingParams for each of the n completions; a seeded request seeds completion i with seed + i."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(body, name):
                raise APIError(400, f"{name} is not supported", param=name)
        if body.logit_bias:
            raise APIError(400, "logit_bias is not supported", param="logit_bias")
        n = body.n or 1
        if n > max_queue:
            raise APIError(400, f"n is {n}; this server takes at most {max_queue} completions per request", param="n")
        stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
        if not all(stop):
            raise APIError(400, "stop: stop strings must not be empty", param="stop")
        common = dict(temperature=1.0 if body.temperature is None else body.temperature,
                      top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k or 0, min_p=body.min_p or 0.0,
                      max_tokens=max_tokens, stop=stop, ignore_eos=body.ignore_eos, logprobs=logprobs,
                      top_logprobs=top_logprobs, logits_processor=processor)
        return [SamplingParams(**common, seed=None if body.seed is None else body.seed + i) for i in range(n)]

    def chat_prompt(body: ChatRequest, tools: bool) -> list[int]:
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        for m in messages:
            if m["role"] == "developer":
                m["role"] = "system"
        last_user = next((m for m in reversed(messages) if m["role"] == "user"), None)
        if augment and last_user and isinstance(last_user.get("content"), str):
            last_user["content"] = augment(last_user["content"])
        try:
            if tools and tokenizer.chat_template not in (None, CHAT_TEMPLATE):
                specs = [t.model_dump(exclude_none=True) for t in body.tools]
                return render_with_template(tokenizer.chat_template, messages, tokenizer, True, tools=specs)[0]
            return render_prompt(tokenizer, messages)
        except UserError as e:
            raise APIError(400, f"messages: {e}", param="messages") from None

    def chat_processor(body: ChatRequest, tools: bool):
        """The logits_processor a request needs: a forced tool call, or a JSON response format."""
        choice, fmt = body.tool_choice, body.response_format
        if choice not in (None, "none", "auto") and not body.tools:
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        forced = None  # the tools one of which must be called
        if tools and choice == "required":
            forced = body.tools
        elif tools and choice not in (None, "auto"):
            forced = [t for t in body.tools if t.function.name == choice.function.name][:1]
            if not forced:
                raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not in tools", param="tool_choice")
        if forced and None in (engine.tool_open, engine.tool_close):
            raise APIError(400, "this model's tokenizer has no <tool_call> and </tool_call> tokens, so it can't be made "
                           "to call a tool", param="tool_choice")
        if fmt is None or fmt.type == "text":
            return forced and forced_call_processor(forced)
        if forced:
            raise APIError(400, "response_format can't be combined with a forced tool_choice", param="response_format")
        if fmt.type == "json_schema" and fmt.json_schema is None:
            raise APIError(400, "response_format: json_schema needs {\"json_schema\": {\"schema\": ...}}",
                           param="response_format")
        schema = {"type": "object"} if fmt.type == "json_object" else fmt.json_schema.schema_
        try:
            from pocketchat.engine.constrain import json_schema_processor
        except ImportError as e:
            raise APIError(400, f"response_format {fmt.type} is not supported by this install ({e})",
                           param="response_format") from None
        try:
            return json_schema_processor(tokenizer, schema)
        except UserError as e:
            raise APIError(400, f"response_format: {e}", param="response_format") from None

    def forced_call_processor(specs: list) -> object:
        """One call to one of `specs`: <tool_call>{"name": N, "arguments": A}</tool_call> where A is valid under
        N's `parameters` schema, so a forced call always parses. The JSON may be compact or spaced as
        json.dumps writes it (at most one space in each place), so a model keeps its own style but can't pad.
        Keywords the grammar engine can't enforce are ignored (lenient), as a model would ignore them."""
        rules = []
        for i, spec in enumerate(specs):
            parameters = {"type": "object", **(spec.function.parameters or {})}
            if parameters["type"] != "object":
                raise APIError(400, f"tools: the parameters of {spec.function.name!r} must be a JSON schema of type "
                               f"object, not {parameters['type']!r}", param="tools")
            call = {"type": "object", "properties": {"name": {"const": spec.function.name}, "arguments": parameters},
                    "required": ["name", "arguments"], "additionalProperties": False, "x-guidance": TOOL_CALL_JSON}
            rules.append(f"call_{i}: %json {json.dumps(call)}")
        try:
            import llguidance

            from pocketchat.engine.constrain import GrammarProcessor
        except ImportError:  # no grammar engine: force the opening tag only
            return force_prefix([engine.tool_open])
        alternatives = " | ".join(f"call_{i}" for i in range(len(specs)))
        lark = "\n".join([f"start: <[{engine.tool_open}]> ({alternatives}) <[{engine.tool_close}]>", *rules])
        try:
            return GrammarProcessor(tokenizer, llguidance.LLMatcher.grammar_from_lark(lark), "tools")
        except (UserError, ValueError) as e:
            raise APIError(400, f"tools: {e}", param="tools") from None

    def logprob_entries(ids: list[int], lps: list[float], tops: list[dict[int, float]]) -> list[dict]:
        def entry(i: int, lp: float) -> dict:
            return {"token": pieces.text(i), "logprob": lp, "bytes": list(pieces.bytes(i))}
        return [{**entry(i, lp), "top_logprobs": [entry(t, l) for t, l in (tops[k] if tops else {}).items()]}
                for k, (i, lp) in enumerate(zip(ids, lps))]

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

    @v1.get("/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "pocketchat", "max_model_len": context}]}

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        check_model(body.model)
        tools = bool(body.tools) and body.tool_choice != "none"
        if body.top_logprobs and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        prompt = chat_prompt(body, tools)
        check_context(prompt, "messages")
        params = sampling(body, body.max_completion_tokens or body.max_tokens or context, bool(body.logprobs),
                          body.top_logprobs or 0, chat_processor(body, tools))
        job = Job(batcher, [(prompt, params)])
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return stream_response(chat_stream(job, meta, len(prompt), tools, bool(body.logprobs), usage))
        choices = await job.collect(request)
        out = []
        for i, c in enumerate(choices):
            message, finish = chat_message(c, tools)
            logprobs = {"content": logprob_entries(c.token_ids, c.logprobs, c.top_logprobs)} if body.logprobs else None
            out.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
        return {**meta, "object": "chat.completion", "choices": out, "usage": usage_of(len(prompt), choices)}

    async def chat_stream(job: Job, meta: dict, prompt_tokens: int, tools: bool, logprobs: bool, usage: bool):
        """SSE frames: a role delta per choice, content deltas, a last delta with finish_reason; then usage
        (when asked) and [DONE]. With tools, text from <tool_call> on is held back and sent as tool_calls."""
        base = {**meta, "object": "chat.completion.chunk", "system_fingerprint": None}
        extra = {"usage": None} if usage else {}

        def frame(i: int, delta: dict, finish: str | None = None, lp: list | None = None) -> str:
            choice = {"index": i, "delta": delta, "logprobs": lp and {"content": lp}, "finish_reason": finish}
            return sse({**base, "choices": [choice], **extra})

        for i in range(job.n):
            yield frame(i, {"role": "assistant", "content": ""})
        choices = [Choice() for _ in range(job.n)]
        sent = [0] * job.n  # characters of each choice's text sent as content
        async for d in job.deltas():
            if d.finish_reason == "error":
                job.cancel()
                yield failed_frame(d)
                return
            c = choices[d.index]
            c.add(d)
            visible = c.text
            if tools:  # show text up to a tool call, less a tail that may be the start of its tag
                cut = visible.find(TOOL_CALL)
                if cut >= 0:
                    visible = visible[:cut]
                elif d.finish_reason is None:
                    visible = visible[: len(visible) - _partial_suffix(visible, TOOL_CALL)]
            content = visible[sent[d.index]:]
            sent[d.index] += len(content)
            lp = logprob_entries(d.token_ids, d.logprobs, d.top_logprobs or []) if logprobs and d.token_ids else None
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
        if usage:
            yield sse({**base, "choices": [], "usage": usage_of(prompt_tokens, choices)})
        yield "data: [DONE]\n\n"

    @v1.post("/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        if body.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        if body.best_of not in (None, body.n or 1):
            raise APIError(400, "best_of is not supported (it must equal n)", param="best_of")
        prompts, texts = text_prompts(body.prompt)
        for p in prompts:
            check_context(p, "prompt")
            if max(p) >= engine.config.vocab_size or min(p) < 0:
                raise APIError(400, f"prompt has a token id outside the vocabulary [0, {engine.config.vocab_size})", param="prompt")
        k = body.logprobs
        params = sampling(body, body.max_tokens or 16, k is not None, k or 0, None)
        job = Job(batcher, [(p, params) for p in prompts])
        echo = [text if body.echo else "" for text in texts for _ in params]
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}
        prompt_tokens = sum(len(p) for p in prompts)
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return stream_response(completion_stream(job, meta, prompt_tokens, echo, k is not None, usage))
        choices = await job.collect(request)
        out = [{"index": i, "text": echo[i] + c.text, "finish_reason": completion_finish(c.finish_reason),
                "logprobs": legacy_logprobs(c.token_ids, c.logprobs, c.top_logprobs, len(echo[i])) if k is not None else None}
               for i, c in enumerate(choices)]
        return {**meta, "object": "text_completion", "choices": out, "usage": usage_of(prompt_tokens, choices)}

    async def completion_stream(job: Job, meta: dict, prompt_tokens: int, echo: list[str], logprobs: bool, usage: bool):
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
            lp = legacy_logprobs(d.token_ids, d.logprobs, d.top_logprobs, offsets[d.index]) if logprobs else None
            offsets[d.index] += len(d.text)
            finish = completion_finish(d.finish_reason)
            if text or lp or finish:
                choice = {"index": d.index, "text": text, "logprobs": lp, "finish_reason": finish}
                yield sse({**base, "choices": [choice], **extra})
        if usage:
            yield sse({**base, "choices": [], "usage": usage_of(prompt_tokens, choices)})
        yield "data: [DONE]\n\n"

    def text_prompts(prompt) -> tuple[list[list[int]], list[str]]:
        """The prompt field (a string, strings, token ids, or lists of token ids) as token-id prompts, and
        their text (what echo repeats). A string prompt starts with the bos token when the model's tokenizer
        adds one (Tokenizer.encode_prompt), as transformers' `tokenizer(text)` would."""
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not prompt:
            raise APIError(400, "prompt is empty", param="prompt")
        ids = [tokenizer.encode_prompt(p) if isinstance(p, str) else list(p) for p in prompt]
        return ids, [p if isinstance(p, str) else tokenizer.decode(p) for p in prompt]

    def legacy_logprobs(ids, lps, tops, offset: int) -> dict:
        """/v1/completions' logprobs: parallel lists, and each token's character offset in the choice text."""
        texts = [pieces.text(i) for i in ids]
        starts = []
        for t in texts:
            starts.append(offset)
            offset += len(t)
        return {"tokens": texts, "token_logprobs": lps, "text_offset": starts,
                "top_logprobs": [{pieces.text(t): l for t, l in top.items()} for top in tops] if tops else None}

    app.include_router(v1)
    if label is not None:
        from pocketchat.serve.labeling import label_router

        app.include_router(label_router(engine, batcher, label, authorize, label_tasks))

    # ---- health and the chat page --------------------------------------------------------------------------

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, **asdict(batcher.stats)}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def failed_frame(d: Delta) -> str:
    """The SSE frame that ends a stream whose generation failed (OpenAI's error shape)."""
    return sse({"error": {"message": f"generation failed: {d.error}", "type": "server_error", "param": None, "code": None}})


def stream_response(frames) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def usage_of(prompt_tokens: int, choices: list[Choice]) -> dict:
    completion = sum(c.generated for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def completion_finish(reason: str | None) -> str | None:
    # a text completion has no tool calls: the </tool_call> it stopped at is just a stop
    return "stop" if reason == "tool_calls" else reason


def force_prefix(tokens: list[int]):
    """A logits_processor that makes a completion start with `tokens` (a forced tool call's opening)."""

    def processor(generated: list[int], logits: torch.Tensor) -> torch.Tensor | None:
        if len(generated) >= len(tokens):
            return None
        allowed = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        allowed[tokens[len(generated)]] = True
        return allowed

    return processor


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    return max((k for k in range(1, len(tag)) if text.endswith(tag[:k])), default=0)
