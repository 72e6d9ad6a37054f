"""``--api-key`` (as ``Authorization: Bearer KEY`` or ``x-api-key: KEY``): a Litestar guard on every
route but those marked ``opt={"public": True}`` (/health and the demo page)."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler


def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    expected: bytes | None = connection.app.state.api_key
    if expected is None or handler.opt.get("public"):
        return
    # Anthropic's clients send the key as `x-api-key`; everyone else as a bearer token.
    token = connection.headers.get("x-api-key")
    if token is None:
        scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            token = ""
    # compare_digest takes the same time whatever the token, so the key cannot be guessed byte by byte
    if not hmac.compare_digest(token.strip().encode(), expected):
        raise NotAuthorizedException("Invalid or missing API key")
