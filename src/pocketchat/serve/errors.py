"""Errors in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, for every route.

A handler raises `APIError` with the status and the field at fault; request validation (pydantic), unknown
paths and methods, and `UserError`s from lower layers are turned into the same shape by the handlers that
`install_error_handlers` adds. A 4xx is anything the client can fix; the server keeps serving whatever a
request holds.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pocketchat.errors import UserError
from pocketchat.serve.schemas import error_param


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


async def on_api_error(request: Request, e: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status == 503 else None
    return error_response(e.status, e.message, e.type, e.param, e.code, headers)


async def on_user_error(request: Request, e: UserError) -> JSONResponse:
    return error_response(400, str(e))


async def on_validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    errors = e.errors()
    first = errors[0]
    if first["type"] == "json_invalid":
        return error_response(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
    param = error_param(tuple(first["loc"]))
    if not param:
        return error_response(400, "the request body must be a JSON object with the request's fields")
    # A union (e.g. stop: str | list[str]) fails once per alternative: say them all.
    messages = [err["msg"] for err in errors if error_param(tuple(err["loc"])) == param]
    return error_response(400, f"{param}: {' or '.join(dict.fromkeys(messages))}", param=param)


async def on_http_error(request: Request, e: HTTPException) -> JSONResponse:
    return error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                          code="not_found" if e.status_code == 404 else None)


async def on_bug(request: Request, e: Exception) -> JSONResponse:
    return error_response(500, f"internal error: {type(e).__name__}: {e}", type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(UserError, on_user_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_bug)
