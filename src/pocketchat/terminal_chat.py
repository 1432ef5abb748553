"""`pocketchat chat`: a terminal chat that streams the assistant's reply as it is generated.

Commands: /reset (new conversation), /temp T (sampling temperature), /system TEXT (system prompt), /quit.
Multi-line input: end a line with a backslash to continue it, or wrap a block in triple quotes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from pocketchat.chat_format import completion_messages, render_prompt
from pocketchat.engine import Engine, SamplingParams
from pocketchat.errors import UserError

HELP = "commands: /reset  /temp T  /system TEXT  /quit   (end a line with \\ or use \"\"\" for multi-line input)"


def read_message(prompt: str = "you> ") -> str | None:
    """One user message, possibly spanning several lines; None at end of input."""
    try:
        line = input(prompt)
    except EOFError:
        return None
    if line.strip() == '"""':
        lines = []
        while True:
            try:
                more = input("... ")
            except EOFError:
                break
            if more.strip() == '"""':
                break
            lines.append(more)
        return "\n".join(lines)
    lines = [line]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        try:
            lines.append(input("... "))
        except EOFError:
            break
    return "\n".join(lines)


def chat_loop(engine: Engine, system: str = "", temperature: float = 0.7, max_tokens: int = 512, tools: bool = True,
              out=None, augment: Callable[[str], str] | None = None) -> None:
    """augment(message) -> what the model is sent instead (e.g. the message with retrieved passages); the
    history keeps what was sent, so every later prompt renders the tokens the model saw."""
    out = out or sys.stdout  # looked up per call, not at import: the stream may have been replaced since
    messages: list[dict] = []
    print(HELP, file=out)
    while True:
        text = read_message()
        if text is None or text.strip() == "/quit":
            print(file=out)
            return
        command, _, arg = text.strip().partition(" ")
        if command == "/reset":
            messages = []
            print("(new conversation)", file=out)
            continue
        if command == "/temp":
            try:
                temperature = float(arg)
                SamplingParams(temperature=temperature)
            except (ValueError, UserError):
                print(f"(temperature must be a number >= 0, got {arg!r})", file=out)
                continue
            print(f"(temperature {temperature})", file=out)
            continue
        if command == "/system":
            system = arg
            print("(system prompt set)" if arg else "(system prompt cleared)", file=out)
            continue
        if command.startswith("/") and command not in ("/",):
            print(f"(unknown command {command}; {HELP})", file=out)
            continue
        if not text.strip():
            continue

        messages.append({"role": "user", "content": augment(text) if augment else text})
        conversation = ([{"role": "system", "content": system}] if system else []) + messages
        prompt = render_prompt(engine.tokenizer, conversation)
        room = engine.config.max_position_embeddings - len(prompt)
        if room < 8:
            print("(the conversation no longer fits the model's context; /reset to start over)", file=out)
            messages.pop()
            continue
        params = SamplingParams(temperature=temperature, max_tokens=min(max_tokens, room), tools=tools)
        out.write("assistant> ")
        ids = []
        for event in engine.stream(prompt, params):
            ids += event.token_ids
            out.write(event.text.replace(TOOL_TURN, "\n  [tool] ").replace(BACK_TO_ASSISTANT, "\n"))
            out.flush()
        out.write("\n")
        messages += completion_messages(engine.tokenizer.decode(ids))


TOOL_TURN = "<|im_end|>\n<|im_start|>tool\n"
BACK_TO_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
