"""From an API request body to what the engine runs: prompt token ids, one `SamplingParams` per completion,
and the logits processor of a constrained answer. Every check that the schema can't express happens here,
before anything is queued, and fails as a 400 naming the field.

Tool calls: when a chat request offers tools, the model's <tool_call>{json}</tool_call> goes back to the
client as OpenAI `tool_calls` (the server never runs them; the engine stops at </tool_call>). pocketchat's
ChatML template has no place for tool definitions, so its models only call the tools they were trained on;
a checkpoint with its own chat template gets `tools` passed to it, as transformers does. A forced call
(tool_choice "required" or a named function) is decoded under a grammar (engine/constrain.py, llguidance):
the call tags, a name among those allowed, and arguments valid under that tool's `parameters` schema.
"""

from __future__ import annotations

import json

import torch

from pocketchat.chat_format import CHAT_TEMPLATE, render_prompt, render_with_template
from pocketchat.engine import SamplingParams
from pocketchat.errors import UserError
from pocketchat.serve.errors import APIError
from pocketchat.serve.schemas import ChatRequest, Sampling
from pocketchat.serve.state import ServerState, sample_seeds

# A forced tool call's JSON (see forced_call_processor): compact or json.dumps-spaced, nothing more.
TOOL_CALL_JSON = {"whitespace_flexible": True, "whitespace_pattern": " ?", "lenient": True}


def check_model(state: ServerState, name: str) -> None:
    if name != state.model_id:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {state.model_id!r}",
                       param="model", code="model_not_found")


def check_context(state: ServerState, prompt: list[int], param: str) -> None:
    if len(prompt) > state.context:
        raise APIError(400, f"this model's maximum context length is {state.context} tokens; the {param} have "
                       f"{len(prompt)} tokens", param=param, code="context_length_exceeded")
    if not prompt:
        raise APIError(400, f"the {param} are empty", param=param)


def sampling(body: Sampling, max_tokens: int, logprobs: bool, top_logprobs: int, processor,
             tools: tuple[str, ...] = ()) -> list[SamplingParams]:
    """SamplingParams for each of the n completions; a seeded request seeds completion i with seed + i.
    tools: the engine's tools the completions run (the chat page's route); the API's routes run none."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise APIError(400, f"{name} is not supported", param=name)
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if not all(stop):
        raise APIError(400, "stop: stop strings must not be empty", param="stop")
    common = dict(temperature=1.0 if body.temperature is None else body.temperature,
                  top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k or 0, min_p=body.min_p or 0.0,
                  max_tokens=max_tokens, stop=stop, ignore_eos=body.ignore_eos, logprobs=logprobs,
                  top_logprobs=top_logprobs, logits_processor=processor, tools=tools)
    return [SamplingParams(**common, seed=seed) for seed in sample_seeds(body.seed, body.n or 1)]


def chat_prompt(state: ServerState, body: ChatRequest, tools: bool) -> list[int]:
    tokenizer = state.tokenizer
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    for m in messages:
        if m["role"] == "developer":
            m["role"] = "system"
    last_user = next((m for m in reversed(messages) if m["role"] == "user"), None)
    if state.augment and last_user and isinstance(last_user.get("content"), str):
        last_user["content"] = state.augment(last_user["content"])
    try:
        if tools and tokenizer.chat_template not in (None, CHAT_TEMPLATE):
            specs = [t.model_dump(exclude_none=True) for t in body.tools]
            return render_with_template(tokenizer.chat_template, messages, tokenizer, True, tools=specs)[0]
        return render_prompt(tokenizer, messages)
    except UserError as e:
        raise APIError(400, f"messages: {e}", param="messages") from None


def chat_processor(state: ServerState, body: ChatRequest, tools: bool):
    """The logits_processor a request needs: a forced tool call, or a JSON response format."""
    engine = state.engine
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
        return forced and forced_call_processor(state, forced)
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
        return json_schema_processor(state.tokenizer, schema)
    except UserError as e:
        raise APIError(400, f"response_format: {e}", param="response_format") from None


def forced_call_processor(state: ServerState, specs: list) -> object:
    """One call to one of `specs`: <tool_call>{"name": N, "arguments": A}</tool_call> where A is valid under
    N's `parameters` schema, so a forced call always parses. The JSON may be compact or spaced as
    json.dumps writes it (at most one space in each place), so a model keeps its own style but can't pad.
    Keywords the grammar engine can't enforce are ignored (lenient), as a model would ignore them."""
    engine = state.engine
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
        return GrammarProcessor(state.tokenizer, llguidance.LLMatcher.grammar_from_lark(lark), "tools")
    except (UserError, ValueError) as e:
        raise APIError(400, f"tools: {e}", param="tools") from None


def force_prefix(tokens: list[int]):
    """A logits_processor that makes a completion start with `tokens` (a forced tool call's opening)."""

    def processor(generated: list[int], logits: torch.Tensor) -> torch.Tensor | None:
        if len(generated) >= len(tokens):
            return None
        allowed = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        allowed[tokens[len(generated)]] = True
        return allowed

    return processor


def text_prompts(state: ServerState, prompt) -> tuple[list[list[int]], list[str]]:
    """The prompt field (a string, strings, token ids, or lists of token ids) as token-id prompts, and
    their text (what echo repeats). A string prompt starts with the bos token when the model's tokenizer
    adds one (Tokenizer.encode_prompt), as transformers' `tokenizer(text)` would. Token ids are checked
    against the vocabulary before anything decodes them."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt is empty", param="prompt")
    vocab = state.engine.config.vocab_size
    ids = []
    for p in prompt:
        ids.append(state.tokenizer.encode_prompt(p) if isinstance(p, str) else list(p))
        check_context(state, ids[-1], "prompt")
        bad = next((t for t in ids[-1] if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"prompt has the token id {bad}, outside the vocabulary [0, {vocab})", param="prompt")
    return ids, [p if isinstance(p, str) else state.tokenizer.decode(p) for p in prompt]
