"""The HTTP side of `olmo serve`: a Starlette application answering the OpenAI API's routes.

Starlette (with uvicorn, the ASGI server) rather than a larger framework: the API's error shapes, its
server-sent events and the limits below are all ours to define, and Starlette gives routing, streaming
responses and disconnect detection without its own validation layer to override (bodies are checked by
`protocol.py`'s pydantic models).

- `GET /health` (never needs the key), `GET /v1/models`, `POST /v1/completions`,
  `POST /v1/chat/completions` (`stream: true`: `text/event-stream`, `data: {json}` chunks, `data: [DONE]`).
- With an API key every other request needs `Authorization: Bearer KEY` (compared in constant time).
- A body above `max_body_bytes` is refused with 413 before it is read whole; every error is the API's
  JSON error with a 4xx status (5xx only for the server's own failures, without a traceback).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from olmo_cli.serve.protocol import ApiError, ChatRequest, CompletionRequest, parse_body
from olmo_cli.serve.service import Service

__all__ = ["build_app"]

log = logging.getLogger("olmo.serve")


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def build_app(service: Service, *, api_key: str | None, max_body_bytes: int) -> ASGIApp:
    async def health(request: Request) -> Response:
        engine = service.engine
        return JSONResponse(
            {
                "status": "ok",
                "model": service.name,
                "in_flight": engine.in_flight,
                "waiting": engine.waiting,
                "decode_steps": engine.steps,
                "largest_batch": engine.largest_batch,
            }
        )

    async def models(request: Request) -> Response:
        return JSONResponse(service.models())

    async def model(request: Request) -> Response:
        service.check_model(request.path_params["name"])
        return JSONResponse(service.model_card())

    async def completions(request: Request) -> Response:
        body = parse_body(CompletionRequest, await request.body())
        return _respond(await service.completion(body, request.is_disconnected))

    async def chat(request: Request) -> Response:
        body = parse_body(ChatRequest, await request.body())
        return _respond(await service.chat(body, request.is_disconnected))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers=_handlers())
    return _Guard(app, api_key=api_key, max_body_bytes=max_body_bytes)


def _respond(result: Any) -> Response:
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(
        _sse(result), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Server-sent events; an error after the stream began is sent as one last `error` event."""
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
    except ApiError as e:
        yield f"data: {json.dumps(e.body())}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _handlers() -> dict[Any, Any]:
    from starlette.exceptions import HTTPException

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = {404: "no such route", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return _error_response(
            ApiError(exc.status_code, f"{message}: {request.method} {request.url.path}", kind=kind)
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("request failed: %s: %s", type(exc).__name__, exc)
        return _error_response(ApiError(500, f"internal error: {type(exc).__name__}", kind="server_error"))

    return {ApiError: api_error, HTTPException: http_error, Exception: unexpected}


class _Guard:
    """ASGI middleware in front of everything: the API key, and the body size limit (counted as the
    body arrives, so a client that lies in Content-Length or sends chunks gains nothing)."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_key is not None and scope["path"] != "/health" and not self._authorized(scope):
            error = ApiError(
                401, "missing or wrong API key: send Authorization: Bearer KEY", code="invalid_api_key"
            )
            await _error_response(error)(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _error_response(self._too_large())(scope, receive, send)
            return
        received = 0
        limit = self.max_body_bytes

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(
                        413, f"the request body is larger than {limit:,} bytes", code="body_too_large"
                    )
            return message

        await self.app(scope, counted, send)

    def _authorized(self, scope: Scope) -> bool:
        assert self.api_key is not None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
        return False

    def _too_large(self) -> ApiError:
        return ApiError(
            413, f"the request body is larger than {self.max_body_bytes:,} bytes", code="body_too_large"
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
