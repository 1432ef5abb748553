"""The chat format: conversations (OpenAI-style message lists) to token ids and an SFT loss mask.

pocketchat's own models speak ChatML, as SmolLM2 and Qwen do:

    <|im_start|>system\\n{content}<|im_end|>\\n        (only when a system message is given)
    <|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n{content}<tool_call>{"name": ..., "arguments": {...}}</tool_call><|im_end|>\\n
    <|im_start|>tool\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n                            (the generation prompt)

An assistant turn has one <tool_call> tag pair per call (none for a plain answer). So after the model
emits </tool_call>, the engine forces `<|im_end|>\\n<|im_start|>tool\\n{output}<|im_end|>\\n<|im_start|>
assistant\\n` (`tool_turn_renderer`, which the engine is given: it knows tokens and tools, not this format) and the
model's context is exactly what `render` gives for [assistant-with-call, tool, assistant].

Two renderers give the same ids for the same messages (a test checks it against transformers):
- `render` builds ChatML turn by turn: special tokens as their ids, the text between two special tokens
  encoded as one string, the way a tokenizer encodes a whole rendered template. Message content is always
  plain text here: a user who types "<|im_end|>" gets the characters, not the token.
- `CHAT_TEMPLATE`, the Jinja template saved in tokenizer_config.json, for transformers, vLLM, llama.cpp.
A checkpoint with another template (an imported SmolLM or Llama) renders through its own template with
`render_with_template`; `render` dispatches there when the tokenizer carries a foreign template.

Loss mask (1 = trained): assistant content, its tool calls (tags included) and the <|im_end|> that closes an
assistant turn, so the model learns to stop; 0 on system, user and tool turns, on the `<|im_start|>
assistant\\n` header and on the newline after <|im_end|>. When content starts with whitespace, BPE can merge
the header's newline with it into one token; that token counts as content (trained).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pocketchat.errors import UserError
from pocketchat.json_text import json_object
from pocketchat.tokenizer import Tokenizer

IM_START, IM_END, TOOL_CALL, TOOL_CALL_END = "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"
ROLES = ("system", "user", "assistant", "tool")

# The same format as Jinja. Written for the environment transformers uses (trim_blocks, lstrip_blocks) but
# with whitespace control on every tag, so no layout whitespace leaks into the output either way.
# transformers drops message keys whose value is None, hence `is defined` before every optional field.
CHAT_TEMPLATE = r"""
{%- for message in messages -%}
  {%- if message.role not in ['system', 'user', 'assistant', 'tool'] -%}
    {{- raise_exception('unknown role ' + message.role | string + ' (expected system, user, assistant or tool)') -}}
  {%- endif -%}
  {{- '<|im_start|>' + message.role + '\n' -}}
  {%- if message.content is string -%}
    {{- message.content -}}
  {%- elif message.content is defined and message.content is not none -%}
    {%- for part in message.content -%}
      {%- if part.type != 'text' -%}
        {{- raise_exception('only text content parts are supported') -}}
      {%- endif -%}
      {{- part.text -}}
    {%- endfor -%}
  {%- endif -%}
  {%- if message.role == 'assistant' and message.tool_calls is defined and message.tool_calls -%}
    {%- for call in message.tool_calls -%}
      {{- '<tool_call>{"name": ' + call.function.name | tojson + ', "arguments": ' -}}
      {%- if call.function.arguments is string -%}
        {{- call.function.arguments -}}
      {%- else -%}
        {{- call.function.arguments | tojson -}}
      {%- endif -%}
      {{- '}</tool_call>' -}}
    {%- endfor -%}
  {%- endif -%}
  {{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
""".strip()


# -- validation ---------------------------------------------------------------------------------------------

def _content_text(content, where: str) -> str:
    """A message's content as one string: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise UserError(f"{where}: content part {j} is not a {{\"type\": \"text\", \"text\": ...}} object "
                                "(only text content is supported)")
            texts.append(part["text"])
        return "".join(texts)
    raise UserError(f"{where}: content must be a string or a list of text parts, not {type(content).__name__}")


def _arguments_text(arguments, where: str) -> str:
    """Tool-call arguments as the JSON text that goes between the tags.

    A dict is dumped the way the template's `tojson` does; a string (OpenAI's wire format) must hold a JSON
    object and is kept verbatim, because a Jinja template cannot re-format it."""
    parsed = json_object(arguments, f"{where}: arguments")
    return arguments if isinstance(arguments, str) else json.dumps(parsed, ensure_ascii=False)


def _tool_call_texts(message: dict, where: str) -> list[str]:
    calls = message.get("tool_calls")
    if calls is None:
        return []
    if message["role"] != "assistant":
        raise UserError(f"{where}: only assistant messages can have tool_calls")
    if not isinstance(calls, list):
        raise UserError(f"{where}: tool_calls must be a list")
    texts = []
    for j, call in enumerate(calls):
        at = f"{where}: tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise UserError(f"{at}: expected {{\"type\": \"function\", \"function\": {{\"name\": ..., \"arguments\": ...}}}}")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise UserError(f"{at}: function.name must be a non-empty string")
        if "arguments" not in fn:
            raise UserError(f"{at}: function.arguments is missing")
        texts.append(f'{{"name": {json.dumps(fn["name"], ensure_ascii=False)}, '
                     f'"arguments": {_arguments_text(fn["arguments"], at)}}}')
    return texts


@dataclass
class Turn:
    """A validated message: its role, content text and tool-call texts (assistant only)."""

    role: str
    content: str
    tool_calls: list[str]


def validate(messages) -> list[Turn]:
    """Check a conversation and normalise it; raises UserError naming the message and what is wrong."""
    if not isinstance(messages, list):
        raise UserError(f"messages must be a list of message objects, not {type(messages).__name__}")
    if not messages:
        raise UserError("messages is empty")
    turns = []
    for i, m in enumerate(messages):
        where = f"message {i}"
        if not isinstance(m, dict):
            raise UserError(f"{where}: expected an object with role and content, not {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise UserError(f"{where}: unknown role {role!r} (expected system, user, assistant or tool)")
        tool_calls = _tool_call_texts(m, where)
        content = m.get("content")
        if content is None:
            # OpenAI sends content null on an assistant message that only calls tools
            if not tool_calls:
                raise UserError(f"{where}: content is missing")
            content = ""
        turns.append(Turn(role, _content_text(content, where), tool_calls))
    return turns


# -- ChatML, turn by turn -----------------------------------------------------------------------------------

@dataclass
class _Piece:
    text: str
    special: bool  # a special token (rendered as its id) or plain text
    trained: bool


def _pieces(turns: list[Turn], add_generation_prompt: bool) -> list[_Piece]:
    out = []
    for t in turns:
        trained = t.role == "assistant"
        out += [_Piece(IM_START, True, False), _Piece(f"{t.role}\n", False, False), _Piece(t.content, False, trained)]
        for call in t.tool_calls:
            out += [_Piece(TOOL_CALL, True, True), _Piece(call, False, True), _Piece(TOOL_CALL_END, True, True)]
        out += [_Piece(IM_END, True, trained), _Piece("\n", False, False)]
    if add_generation_prompt:
        out += [_Piece(IM_START, True, False), _Piece("assistant\n", False, False)]
    return out


def _special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    ids = {}
    for token in (IM_START, IM_END, TOOL_CALL, TOOL_CALL_END):
        i = tokenizer.token_id(token)
        if i is None:
            raise UserError(f"the tokenizer has no {token} token, which the ChatML format needs "
                            "(train the tokenizer with pocketchat, or give it a chat_template)")
        ids[token] = i
    return ids


def _untrained_prefix_tokens(tokenizer: Tokenizer, ids: list[int], prefix: str) -> int:
    """How many leading tokens of `ids` lie entirely inside the text `prefix`."""
    k = 0
    while k < len(ids):
        text = tokenizer.decode(ids[:k + 1])
        if len(text) > len(prefix) or not prefix.startswith(text):
            break
        k += 1
    return k


def _encode_segment(tokenizer: Tokenizer, pieces: list[_Piece]) -> tuple[list[int], list[int]]:
    """Encode the text between two special tokens as one string, as tokenizing the whole rendered template
    would; then mask the tokens of its untrained head (e.g. "assistant\n" before assistant content)."""
    text = "".join(p.text for p in pieces)
    ids = tokenizer.encode(text)
    head = 0
    for p in pieces:
        if p.trained:
            break
        head += len(p.text)
    k = len(ids) if head == len(text) else _untrained_prefix_tokens(tokenizer, ids, text[:head])
    return ids, [0] * k + [1] * (len(ids) - k)


def _render_chatml(tokenizer: Tokenizer, turns: list[Turn], add_generation_prompt: bool) -> tuple[list[int], list[int]]:
    special = _special_ids(tokenizer)
    ids: list[int] = []
    mask: list[int] = []
    segment: list[_Piece] = []
    for piece in [*_pieces(turns, add_generation_prompt), None]:  # None: the end flushes the last segment
        if piece is not None and not piece.special:
            segment.append(piece)
            continue
        if segment:
            seg_ids, seg_mask = _encode_segment(tokenizer, segment)
            ids += seg_ids
            mask += seg_mask
            segment = []
        if piece is not None:
            ids.append(special[piece.text])
            mask.append(int(piece.trained))
    return ids, mask


def missing_tool_tokens(tokenizer: Tokenizer) -> list[str]:
    """The special tokens a model needs to call tools the way the engine runs them, that its tokenizer lacks.
    Ours have them all; most foreign chat models (SmolLM2) have none, and then chat without tools."""
    return [t for t in (TOOL_CALL, TOOL_CALL_END, IM_START, IM_END) if tokenizer.token_id(t) is None]


def tool_turn_renderer(tokenizer: Tokenizer) -> Callable[[str], list[int]] | None:
    """The tool turn the engine forces after a model's </tool_call>, as a function of the tool's output: the ids
    of `<|im_end|>\\n` and then what `render` writes for a tool turn and the generation prompt. None where the
    tokenizer lacks the tool-call tokens (`missing_tool_tokens`): the engine then runs no tools."""
    if missing_tool_tokens(tokenizer):
        return None
    close = [tokenizer.token_id(IM_END), *tokenizer.encode("\n")]
    return lambda output: close + _render_chatml(tokenizer, [Turn("tool", output, [])], add_generation_prompt=True)[0]


def uses_tools(messages: list[dict]) -> bool:
    """Whether a conversation calls tools (an assistant turn with tool_calls, or a tool turn)."""
    return any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def renderable(tokenizer: Tokenizer, conversations: list[list[dict]]) -> list[list[dict]]:
    """The conversations this tokenizer's chat format can train on: all of them, or, without the tool-call
    tokens (e.g. SmolLM2, whose template cannot write a call we could run), those that call no tools."""
    return [c for c in conversations if not uses_tools(c)] if missing_tool_tokens(tokenizer) else conversations


def render(tokenizer: Tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 = trained) of a conversation, in the tokenizer's chat format.

    ChatML (see the module docstring) unless the tokenizer carries another chat_template, which is then used
    through `render_with_template`."""
    if tokenizer.chat_template not in (None, CHAT_TEMPLATE):
        return render_with_template(tokenizer.chat_template, messages, tokenizer, add_generation_prompt)
    return _render_chatml(tokenizer, validate(messages), add_generation_prompt)


def render_prompt(tokenizer: Tokenizer, messages: list[dict]) -> list[int]:
    """The ids a model continues to write the next assistant turn."""
    return render(tokenizer, messages, add_generation_prompt=True)[0]


# -- any Jinja chat template --------------------------------------------------------------------------------

def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # transformers' tojson: Jinja's own escapes <, >, & and ' for HTML, which chat templates must not do
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    # The environment transformers renders chat templates in, so a checkpoint's template means the same here.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"chat_template line {e.lineno}: {e.message}") from e


def render_text(template: str, messages: list[dict], add_generation_prompt: bool = False, **variables) -> str:
    """A conversation rendered by a Jinja chat template, as a string (special tokens as text)."""
    # transformers drops None-valued keys (OpenAI's content=None) because templates handle a missing key
    messages = [{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m for m in messages]
    try:
        return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.TemplateError as e:
        raise UserError(f"chat_template: {e}") from e


def render_with_template(template: str, messages: list[dict], tokenizer: Tokenizer, add_generation_prompt: bool = False,
                         **variables) -> tuple[list[int], list[int]]:
    """Ids and loss mask of a conversation rendered by any Jinja chat template (a foreign checkpoint's).

    The text is tokenized whole with special tokens recognised, as transformers' apply_chat_template does,
    so special-token strings inside message content become special tokens here (unlike `render`).
    `variables` reach the template (bos_token, eos_token and pad_token default to the tokenizer's).

    The loss mask comes from rendering prefixes: assistant turn i is the text that rendering messages[:i+1]
    adds to rendering messages[:i] with the generation prompt, minus trailing whitespace (the template's
    separator after the end-of-turn token); tokens overlapping that text are trained. A template that
    rewrites earlier turns as the conversation grows has no such prefixes and is refused.
    """
    turns = validate(messages)
    variables = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
                 "pad_token": tokenizer.pad_token, **variables}
    text = render_text(template, messages, add_generation_prompt, **variables)
    spans = []
    for i, turn in enumerate(turns):
        if turn.role != "assistant":
            continue
        prompt = render_text(template, messages[:i], True, **variables) if i else ""
        upto = render_text(template, messages[:i + 1], False, **variables)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise UserError(f"chat_template: rendering message {i} changes the text of the turns before it, "
                            "so the assistant tokens to train on cannot be located")
        spans.append((len(prompt), len(prompt) + len(upto[len(prompt):].rstrip())))
    encoding = tokenizer.hf.encode(text, add_special_tokens=False)
    mask = [int(any(start < e and end > s for s, e in spans)) for start, end in encoding.offsets]
    return encoding.ids, mask


# -- reading the model's output -----------------------------------------------------------------------------

_CALLS = re.compile(re.escape(TOOL_CALL) + r"(.*?)" + re.escape(TOOL_CALL_END), re.DOTALL)


def parse_assistant(text: str) -> dict:
    """An OpenAI assistant message from generated text: content, then any <tool_call>{json}</tool_call>.

    Only the shape `render` produces is read as tool calls: content, then tag pairs each holding
    {"name": str, "arguments": object}, then nothing but whitespace. Anything else (broken JSON, an unclosed
    tag, text after a call) is returned as plain content, so a small model's malformed call is shown, not lost.
    """
    text = text.removesuffix(IM_END)
    first = text.find(TOOL_CALL)
    if first < 0:
        return {"role": "assistant", "content": text}
    calls, pos = [], first
    for match in _CALLS.finditer(text, first):
        if match.start() != pos:
            break
        try:
            call = json.loads(match.group(1))
        except json.JSONDecodeError:
            break
        if not (isinstance(call, dict) and set(call) == {"name", "arguments"} and isinstance(call["name"], str)
                and isinstance(call["arguments"], dict)):
            break
        calls.append({"id": f"call_{len(calls)}", "type": "function",
                      "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}})
        pos = match.end()
    if not calls or text[pos:].strip():
        return {"role": "assistant", "content": text}
    return {"role": "assistant", "content": text[:first] or None, "tool_calls": calls}


def completion_messages(text: str) -> list[dict]:
    """Split a completion with engine-run tool turns back into messages (assistant, tool, assistant, ...), so
    the next prompt renders exactly the tokens the model saw."""
    first, *turns = text.removesuffix(IM_END).split(f"{IM_END}\n{IM_START}")
    messages = [parse_assistant(first)]
    for turn in turns:
        role, _, content = turn.partition("\n")
        messages.append(parse_assistant(content) if role == "assistant" else {"role": role, "content": content})
    return messages
