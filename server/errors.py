"""One mapping from every failure to an HTTP status, and one body shape per protocol.

OpenAI routes answer ``{"error": {"message", "type", "param", "code"}}``; TGI routes answer
``{"error": "...", "error_type": "..."}``. Both shapes are built from the same :class:`Problem`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable

import msgspec
from litestar import Response
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException

from engine import GenerationError, OverloadedError, UnavailableError, ValidationError
from server.state import AnyRequest, services

log = logging.getLogger("tokenspout.server")

RETRY_AFTER_SECONDS = 1  # when nothing has been measured yet, and for 503 (a drain or a start-up)
RETRY_AFTER_MAX = 60  # the openai SDK ignores a longer Retry-After and backs off on its own instead


_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


class NotFound(Exception):
    """A thing a route names by id does not exist (a kept response, a model card)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFound(NotFound):
    """``GET /v1/models/{id}`` for an id this server does not serve."""

    def __init__(self, asked: str, served: str) -> None:
        super().__init__(f"The model `{asked}` does not exist; this server serves `{served}`", "model")


class FirstTokenTimeout(Exception):
    """No token within ``--first-token-timeout`` seconds of arrival: the replica is too busy."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no token within {seconds:g} s: the server is overloaded, try again later")


class Problem(msgspec.Struct, frozen=True):
    status: int
    message: str
    # overloaded validation authentication payload generation unavailable not_found cancelled timeout
    kind: str
    param: str | None = None


def problem_from(exc: Exception, validation_status: int) -> Problem:
    """Classify any exception a route can raise. ``validation_status``: 422 for TGI, 400 for OpenAI."""
    if isinstance(exc, OverloadedError):
        return Problem(429, "Model is overloaded", "overloaded")
    if isinstance(exc, ValidationError):
        return Problem(validation_status, str(exc), "validation", exc.field)
    if isinstance(exc, UnicodeError):
        return Problem(400, "The body is not valid UTF-8", "validation")
    if isinstance(exc, UnavailableError):
        return Problem(503, str(exc), "unavailable")
    if isinstance(exc, GenerationError):
        return Problem(500, str(exc), "generation")
    if isinstance(exc, NotFound):
        return Problem(404, str(exc), "not_found", exc.param)
    if isinstance(exc, FirstTokenTimeout):  # 503: not the admission limit, but as overloaded for clients
        return Problem(503, str(exc), "overloaded")
    if isinstance(exc, ClientGone):  # nobody reads this answer; 499 as nginx logs it
        return Problem(499, "the client closed the request", "cancelled")
    if isinstance(exc, ValidationException):  # Litestar could not decode the body into the wire model
        details = exc.extra[0] if isinstance(exc.extra, list) and exc.extra else {}
        key = details.get("key") if isinstance(details, dict) else None
        message = str(details.get("message", exc.detail) if isinstance(details, dict) else exc.detail)
        # msgspec names the object a required field is missing from (`tools[0].function`), not the
        # field: the whole path is that object's path and the field's name.
        missing = _MISSING_FIELD.search(message)
        where = None if key in (None, "data") else str(key)
        param = where
        if missing:
            param = f"{where}.{missing.group(1)}" if where else missing.group(1)
        if param is not None:  # msgspec writes a mapping's values as `field[...]`: name the field
            param = param.removesuffix("[...]")
        return Problem(400, f"{message} at `{param}`" if param else str(message), "validation", param)
    if isinstance(exc, NotAuthorizedException):
        return Problem(401, "Invalid or missing API key", "authentication")
    if isinstance(exc, HTTPException):
        kind = {413: "payload", 404: "not_found", 405: "not_found"}.get(exc.status_code, "validation")
        return Problem(exc.status_code, exc.detail, kind)
    log.exception("unexpected error", exc_info=exc)
    return Problem(500, "Internal server error", "generation")


_OPENAI_TYPES = {
    "overloaded": "overloaded",
    "validation": "invalid_request_error",
    "authentication": "authentication_error",
    "payload": "invalid_request_error",
    "generation": "server_error",
    "unavailable": "server_error",
    "not_found": "invalid_request_error",
    "cancelled": "invalid_request_error",
    "timeout": "invalid_request_error",
}


def openai_body(problem: Problem) -> dict[str, object]:
    kind = _OPENAI_TYPES[problem.kind]
    code = "overloaded" if problem.kind == "overloaded" else None
    if problem.kind == "authentication":
        code = "invalid_api_key"
    elif problem.kind == "not_found" and problem.param == "model":
        code = "model_not_found"  # OpenAI's code, which its SDK surfaces as NotFoundError
    return {"error": {"message": problem.message, "type": kind, "param": problem.param, "code": code}}


_ANTHROPIC_TYPES = {
    "overloaded": "overloaded_error",
    "validation": "invalid_request_error",
    "authentication": "authentication_error",
    "payload": "request_too_large",
    "generation": "api_error",
    "unavailable": "api_error",
    "not_found": "not_found_error",
    "cancelled": "invalid_request_error",
    "timeout": "invalid_request_error",
}


def anthropic_body(problem: Problem) -> dict[str, object]:
    """Anthropic's shape. Overload keeps its 429 (not Anthropic's 529): nginx retries a 429 on the
    next replica and the anthropic SDK backs off from it, honouring Retry-After."""
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPES[problem.kind], "message": problem.message}}


def tgi_body(problem: Problem) -> dict[str, object]:
    return {"error": problem.message, "error_type": problem.kind}


def retry_after(waiting: int, running: int, seconds_in_slot: float | None) -> int:
    """Whole seconds until a refused request is likely to be admitted and start: the requests already
    waiting, plus the place it needs, must leave the queue first, and running requests free a place
    every ``seconds_in_slot / running`` seconds on average. A client that honours it comes back when
    the backlog it saw has drained, instead of hammering a full replica every second."""
    if seconds_in_slot is None or seconds_in_slot <= 0:
        return RETRY_AFTER_SECONDS
    seconds = seconds_in_slot * (waiting + 1) / max(running, 1)
    return min(max(math.ceil(seconds), RETRY_AFTER_SECONDS), RETRY_AFTER_MAX)


def _headers(problem: Problem, request: AnyRequest) -> dict[str, str]:
    if problem.kind == "overloaded":
        s = services(request)
        stats = s.engine.stats()
        return {"Retry-After": str(retry_after(stats.waiting, stats.running, s.metrics.service_seconds))}
    return {"Retry-After": str(RETRY_AFTER_SECONDS)} if problem.status == 503 else {}


def body_for(path: str) -> Callable[[Problem], dict[str, object]]:
    """Anthropic's shape under /v1/messages, OpenAI's elsewhere under /v1, TGI's everywhere else
    (TGI's own routes, /metrics, /health, unknown paths)."""
    if path.startswith("/v1/messages"):
        return anthropic_body
    return openai_body if path.startswith("/v1/") else tgi_body


def exception_handler(request: AnyRequest, exc: Exception) -> Response[object]:
    """Every error of every route, in the shape of the protocol its path belongs to."""
    path = request.url.path
    problem = problem_from(exc, validation_status=400 if path.startswith("/v1/") else 422)
    if request.state.get("counted"):  # a generation request: count how it failed
        request.app.state.services.metrics.failure(problem.kind)
    if problem.status == 499:  # uvicorn writes no access line for an answer nobody reads: say it here
        log.info('"%s %s" 499: the client left before the answer started', request.method, request.url.path)
    body = body_for(path)(problem)
    return Response(body, status_code=problem.status, headers=_headers(problem, request))
