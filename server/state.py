"""What the routes share, held in the Litestar app's state."""

from __future__ import annotations

import msgspec
from litestar import Request

from engine import Engine
from server.openai_adapter import Limits


class ServerSettings(msgspec.Struct, frozen=True):
    api_key: str | None = None
    payload_limit: int = 2_000_000
    max_input_tokens: int | None = None  # None: derived from the context size
    max_total_tokens: int | None = None
    max_stop_sequences: int = 4
    cors_allow_origins: tuple[str, ...] = ()


class Services:
    __slots__ = ("engine", "limits", "settings")

    def __init__(self, engine: Engine, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        total = min(settings.max_total_tokens or engine.n_ctx, engine.n_ctx)
        max_input = min(settings.max_input_tokens or total - 1, total - 1)
        self.limits = Limits(max_input, total, settings.max_stop_sequences)


def services(request: Request[object, object, object]) -> Services:
    found: Services = request.app.state.services
    return found
