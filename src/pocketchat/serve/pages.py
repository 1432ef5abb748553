"""The browser pages: the chat page at / and the files under /static (the labeling page is label_page.py's).

The pages load nothing from elsewhere and run no inline script (PAGE_CSP): even a rendering bug could not
execute model output. They call the API like any client, with the key the person types.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

router = APIRouter()


def page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/", include_in_schema=False)
async def chat_page():
    return page("index.html")


def static_files() -> StaticFiles:
    """What the app mounts at /static (a router can't carry a mount)."""
    return StaticFiles(directory=STATIC)
