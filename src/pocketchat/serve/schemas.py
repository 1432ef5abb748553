"""Request bodies of the OpenAI API subset the server speaks, as pydantic models.

Validation failures become 400 errors naming the field (`error_param` turns pydantic's location into
OpenAI's `param`, e.g. "messages[0].role"). Unknown fields are ignored, as OpenAI-compatible servers do,
so clients that send `user`, `store` or `metadata` work; fields we know but can't honour (penalties,
logit_bias, suffix) are refused rather than silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Temperature = Annotated[float, Field(ge=0, le=2)]
Probability = Annotated[float, Field(gt=0, le=1)]
PositiveInt = Annotated[int, Field(ge=1)]
SEED_LIMIT = 2**64  # seeds are 64-bit unsigned, torch.Generator.manual_seed's range
Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class TextPart(Body):
    type: Literal["text"]
    text: str


class FunctionCall(Body):
    name: str
    arguments: str | dict


class ToolCall(Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Body):
    # "developer" is OpenAI's newer name for the system role
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionSpec(Body):
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    parameters: dict | None = None


class Tool(Body):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(Body):
    name: Annotated[str, Field(min_length=1)]


class NamedToolChoice(Body):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(Body):
    name: str | None = None
    schema_: dict = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(Body):
    include_usage: bool = False


class Sampling(Body):
    """Fields shared by chat and text completions; None means "the default"."""

    model: str
    temperature: Temperature | None = None
    top_p: Probability | None = None
    n: PositiveInt | None = None
    stop: str | list[str] | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # extras, as vLLM takes them: `extra_body={"top_k": 40}` with the openai client
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks)


class ChatRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None


class ToolChatRequest(ChatRequest):
    """The chat page's request (serve/tool_chat.py): a chat request whose tool calls the server runs."""

    builtin_tools: list[str] | None = None  # names among the server's tools; None: all of them, []: none


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: PositiveInt | None = None


# ---- the labeling page's endpoints (serve/label_page.py) ---------------------------------------------------------

class LabelSamplesRequest(Body):
    """Sample k replies to one prompt: a task-suite prompt by its index, or a prompt the person typed."""

    task_index: Annotated[int, Field(ge=0)] | None = None
    prompt: str | None = None
    k: Annotated[int, Field(ge=2, le=16)] = 4
    temperature: Temperature = 1.0
    top_p: Probability = 1.0
    max_tokens: PositiveInt = 160
    seed: Seed | None = None


class LabelRankRequest(Body):
    """The person's ranking of a sampled set: indices of its replies, best first, each exactly once."""

    id: str
    ranking: list[int]


def _field_names() -> set[str]:
    models = [TextPart, FunctionCall, ToolCall, Message, FunctionSpec, Tool, NamedFunction, NamedToolChoice,
              JSONSchemaFormat, ResponseFormat, StreamOptions, ChatRequest, ToolChatRequest, CompletionRequest,
              LabelSamplesRequest, LabelRankRequest]
    return {name for m in models for f_name, f in m.model_fields.items() for name in (f_name, f.alias) if name}


FIELD_NAMES = _field_names()


def error_param(loc: tuple) -> str:
    """pydantic's error location as a field path: ("body", "messages", 0, "role") -> "messages[0].role".

    The path stops at the first element that is neither a field nor an index: pydantic names the member of
    a union it tried there ("str", "list[str]"), which is no part of the request."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in FIELD_NAMES:
            path += f".{part}" if path else part
        else:
            break
    return path
