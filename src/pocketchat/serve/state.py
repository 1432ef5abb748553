"""What every route shares, kept on `app.state.server`, and the dependencies that hand it to the routes.

A route asks for the server with a `Server` parameter and for the API key with `Depends(authorize)` (the
routers put it on every route that needs a key), so no route closes over the app factory's locals and a
new router needs nothing but this module.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field
from typing import Annotated, Callable

from fastapi import Depends, Request

from pocketchat.engine import Engine
from pocketchat.engine.batcher import Batcher
from pocketchat.serve.errors import APIError
from pocketchat.serve.schemas import SEED_LIMIT
from pocketchat.tokenizer import UNICODE_TO_BYTE, Tokenizer


class TokenPieces:
    """Each token's bytes and display text, for logprobs (a byte-level token may be part of a character)."""

    def __init__(self, tokenizer: Tokenizer):
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
class ServerState:
    """One model served: its engine, the batcher every request goes through, and the server's settings.

    augment: applied to the last user message of every chat request before rendering (`serve --rag INDEX`
    puts retrieved passages there). tools: the names of the tools the chat page's route runs."""

    engine: Engine
    batcher: Batcher
    model_id: str
    api_key: str | None = None
    augment: Callable[[str], str] | None = None
    tools: tuple[str, ...] = ()  # the engine's tools the chat page's route may run (tool_chat.py)
    created: int = field(default_factory=lambda: int(time.time()))
    tokenizer: Tokenizer = field(init=False)
    context: int = field(init=False)  # the model's maximum sequence length, in tokens
    pieces: TokenPieces = field(init=False)

    def __post_init__(self):
        self.tokenizer = self.engine.tokenizer
        self.context = self.engine.config.max_position_embeddings
        self.pieces = TokenPieces(self.tokenizer)

    def check_size(self, completions: int, what: str, param: str) -> None:
        """A request is refused (400, not 503) when it asks for more completions than the queue can ever
        hold: retrying it could never help."""
        if completions > self.batcher.max_queue:
            raise APIError(400, f"{what} asks for {completions} completions; this server takes at most "
                           f"{self.batcher.max_queue} per request", param=param)


def server(request: Request) -> ServerState:
    return request.app.state.server


Server = Annotated[ServerState, Depends(server)]


async def authorize(request: Request, state: Server) -> None:
    """The API-key check (Authorization: Bearer KEY), when the server has a key."""
    if state.api_key is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {state.api_key}".encode()):
        raise APIError(401, "missing or wrong API key (send the header Authorization: Bearer KEY)",
                       code="invalid_api_key")


def sample_seeds(seed: int | None, n: int) -> list[int | None]:
    """The seed of each of a request's n completions: seed + i, wrapped to stay a 64-bit unsigned seed."""
    return [None if seed is None else (seed + i) % SEED_LIMIT for i in range(n)]
