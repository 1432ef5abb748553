"""What a tool is: a function a model calls by writing `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

A tool takes the call's JSON arguments and returns one string that the engine feeds back as a `tool`
turn. A tiny model reads that string, so outputs are short, and a tool never raises and never hangs:
every failure is a one-line string starting with "Error: " the model can learn to react to.

The tools themselves: `calculator.py` (exact arithmetic) and `sandbox.py` (Python in a confined child
process); `toolcalls.py` holds the registry and reads the model's calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MAX_ERROR_CHARS = 200  # an error is one short line; long exception messages are cut


def tool_error(message: str) -> str:
    """"Error: message" on one line, cut to MAX_ERROR_CHARS: what a tool returns when it fails."""
    message = " ".join(message.split())
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    return f"Error: {message}"


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,),
    "object": (dict,), "array": (list,),
}


def _argument_problem(arguments: object, schema: dict) -> str | None:
    """What is wrong with `arguments` for this JSON schema (the flat subset tools use), or None."""
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type(arguments).__name__}"
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in arguments:
            return f"missing argument {name!r}"
    for name, value in arguments.items():
        if name not in properties:  # always refused: `fn` takes exactly the declared properties as keywords
            return f"unexpected argument {name!r} (expected: {', '.join(properties)})"
        wanted = properties[name].get("type")
        if wanted not in _JSON_TYPES:
            continue  # untyped, or a type this subset does not check
        # JSON true/false arrive as Python bools, which are ints too; only "boolean" accepts them.
        if not isinstance(value, _JSON_TYPES[wanted]) or (isinstance(value, bool) and wanted != "boolean"):
            return f"argument {name!r} must be a {wanted}, got {type(value).__name__}"
    return None


def one_string_argument(name: str, description: str | None = None) -> dict:
    """The JSON schema of an arguments object holding one required string (what every built-in tool takes)."""
    prop = {"type": "string"} | ({"description": description} if description else {})
    return {"type": "object", "properties": {name: prop}, "required": [name], "additionalProperties": False}


@dataclass(frozen=True)
class Tool:
    """A function a model may call: the OpenAI function-tool description plus the code behind it."""

    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object, as in OpenAI's `tools[].function.parameters`
    fn: Callable[..., str]  # called with the validated arguments as keywords

    def run(self, arguments: dict) -> str:
        """The tool's output, or "Error: ..." for bad arguments or any failure. Never raises."""
        problem = _argument_problem(arguments, self.parameters)
        if problem is not None:
            return tool_error(problem)
        try:
            return self.fn(**arguments)
        except Exception as e:  # a tool bug must not kill the generation that called it
            return tool_error(f"{type(e).__name__}: {e}")

    def spec(self) -> dict:
        """This tool in the OpenAI `tools` list shape."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}
