"""JSON that arrives as text, read with errors that say what is wrong: a line of a JSONL file, and an object that
OpenAI-style APIs send either as an object or as a string holding one (tool-call arguments, a JSON schema).

Low in the house (it imports only `errors`): the datasets, the chat format and the engine's tools share it.
"""

from __future__ import annotations

import json

from pocketchat.errors import UserError

BLANK = object()  # json_line's answer for a line with nothing on it


def json_line(raw: bytes) -> object:
    """The record on one line of a JSONL file, read as bytes, or BLANK where the line is only whitespace. A line
    that is not UTF-8 or not JSON raises UserError with the reason alone: the caller puts `file:line:` first."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"not valid UTF-8 at column {e.start + 1}") from e
    if not line.strip():
        return BLANK
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"invalid JSON: {e.msg} at column {e.colno}") from e


def json_object(value: object, what: str) -> dict:
    """`value` as a dict: a dict as it is, or a string holding a JSON object, parsed. Anything else raises
    UserError naming `what` (e.g. "message 2: tool_calls[0]: arguments")."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise UserError(f"{what} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if not isinstance(value, dict):
        raise UserError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value
