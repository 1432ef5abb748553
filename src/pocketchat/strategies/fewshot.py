"""Few-shot prompts: solved examples shown as earlier turns of the conversation.

A model continues the pattern in its context. Demonstrations as real user/assistant turns (not one block
of text) keep the chat format intact, so a chat model sees exactly what a solved exchange looks like.
"""

from __future__ import annotations

from collections.abc import Sequence


def few_shot(shots: Sequence[list[dict]], messages: list[dict]) -> list[dict]:
    """`messages` preceded by the demonstration conversations; a system message stays first."""
    system = messages[:1] if messages and messages[0].get("role") == "system" else []
    return [*system, *(m for shot in shots for m in shot), *messages[len(system):]]
