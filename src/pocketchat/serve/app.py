"""The app factory: one model served over one shared `Batcher`, by routers that each own a concern.

    openai_api.py  GET /health; GET /v1/models, POST /v1/chat/completions, POST /v1/completions (API key)
    pages.py       GET / (the chat page) and /static
    tool_chat.py   GET /chat/api/tools, POST /chat/api/completions (API key): the page's chat, whose tool calls
                   the server runs
    label_page.py  GET /label and /label/api/* (API key), only when create_app is given a comparison file

A route gets what it shares through dependencies (state.py): the `ServerState` on `app.state.server`, the
API-key check, and for labeling the `Labeling` on `app.state.labeling`. Each module below app.py imports
only the ones below it (state, errors, jobs, prepare, schemas; tool_chat also reuses openai_api's
`partial_suffix`), never app.py, so a new router is one module and one `include_router` here.

Every error is OpenAI's shape with a 4xx status for anything the client can fix (errors.py); the server
keeps serving whatever a request holds.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable, Sequence

from fastapi import FastAPI

from pocketchat.engine import Engine
from pocketchat.engine.batcher import Batcher
from pocketchat.serve import label_page, openai_api, pages, tool_chat
from pocketchat.serve.errors import install_error_handlers
from pocketchat.serve.state import ServerState


class NoSniff:
    """ASGI middleware that sends `X-Content-Type-Options: nosniff` with every response, so a browser never
    reads a JSON body or a static file as another type. (Plain ASGI: an http middleware would buffer
    streamed replies and hide client disconnects.)"""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_with_header)


def create_app(engine: Engine, model_id: str, api_key: str | None = None, max_batch: int = 16,
               max_queue: int = 64, label: str | Path | None = None, label_tasks: Sequence[str] | None = None,
               augment: Callable[[str], str] | None = None,
               tools: Sequence[str] = tool_chat.DEFAULT_TOOLS) -> FastAPI:
    """The server for one model. `app.state.batcher` runs from startup to shutdown (the app's lifespan).

    augment: applied to the last user message of every chat request before rendering (`serve --rag INDEX`).
    label: a comparison JSONL file; with it the app also serves the labeling page at /label, drawing task
    prompts from `label_tasks` (default: those `pocketchat compare` uses).
    tools: the engine's tools the chat page may have the server run (`serve --tools`); none when the model's
    tokenizer can't write a tool call (tool_chat.builtin_tools)."""
    batcher = Batcher(engine, max_batch=max_batch, max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.close()

    app = FastAPI(title="pocketchat", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = ServerState(engine, batcher, model_id, api_key=api_key, augment=augment,
                                   tools=tool_chat.builtin_tools(engine.tokenizer, tools))
    app.state.batcher = batcher  # also on its own: its stats are what tests and monitoring read
    install_error_handlers(app)
    app.add_middleware(NoSniff)
    app.include_router(openai_api.router)
    app.include_router(pages.router)
    app.include_router(tool_chat.router)
    app.mount("/static", pages.static_files(), name="static")
    if label is not None:
        app.state.labeling = label_page.Labeling(engine, label, label_tasks)
        app.include_router(label_page.router)
    return app
