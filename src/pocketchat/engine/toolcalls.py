"""The tools a model may call by default, and reading its `<tool_call>{json}</tool_call>` text. New tools
register by adding a `Tool` to `TOOLS` (or by passing another mapping)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from pocketchat.engine.calculator import CALCULATOR
from pocketchat.engine.sandbox import PYTHON
from pocketchat.engine.tools import Tool, tool_error
from pocketchat.errors import UserError
from pocketchat.json_text import json_object

TOOLS: dict[str, Tool] = {tool.name: tool for tool in (CALCULATOR, PYTHON)}


def get_tool(name: str, tools: Mapping[str, Tool] = TOOLS) -> Tool:
    if name not in tools:
        raise UserError(f"unknown tool {name!r} (available: {', '.join(tools)})")
    return tools[name]


def openai_tool_specs(tools: Mapping[str, Tool] | Iterable[Tool] = TOOLS) -> list[dict]:
    """The OpenAI `tools` request field describing these tools."""
    return [tool.spec() for tool in (tools.values() if isinstance(tools, Mapping) else tools)]


TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def parse_tool_call(text: str) -> tuple[str, dict]:
    """(name, arguments) from `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; UserError says what is
    wrong with a malformed call. The closing tag may be missing (generation stops on it). `arguments` may also be
    a JSON string, as in OpenAI's API."""
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        raise UserError(f"no {TOOL_CALL_OPEN} tag")
    body = text[start + len(TOOL_CALL_OPEN):]
    end = body.find(TOOL_CALL_CLOSE)
    call = json_object(body[:end] if end >= 0 else body, "tool call")
    name = call.get("name")
    if not isinstance(name, str):
        raise UserError('tool call needs a string "name"')
    return name, json_object(call.get("arguments", {}), '"arguments"')


def run_tool_call(text: str, tools: Mapping[str, Tool] = TOOLS, allowed: Collection[str] | None = None) -> str:
    """The output for the model of the tool call in `text`; every failure is an "Error: ..." string."""
    try:
        name, arguments = parse_tool_call(text)
    except UserError as e:
        return tool_error(str(e))
    return call_tool(name, arguments, tools, allowed)


def call_tool(name: str, arguments: dict | str, tools: Mapping[str, Tool] = TOOLS,
              allowed: Collection[str] | None = None) -> str:
    """The output of the tool `name` on `arguments` (an object, or the JSON text of one as OpenAI's API sends
    it); every failure is an "Error: ..." string.

    allowed: the names of the tools this call may run (None: all of `tools`). A call to any other is answered
    with a refusal the model (and the person reading the transcript) can read, and nothing runs."""
    if allowed is not None and name not in allowed:
        what = f"the {name!r} tool is turned off here" if name in tools else f"unknown tool {name!r}"
        return tool_error(f"{what} (available: {', '.join(n for n in tools if n in allowed) or 'none'})")
    try:
        tool = get_tool(name, tools)
        arguments = json_object(arguments, '"arguments"')
    except UserError as e:
        return tool_error(str(e))
    return tool.run(arguments)
