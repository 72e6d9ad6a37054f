"""The engine's one error hierarchy; each protocol in ``server/`` maps it to its own wire shape."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine reports to a caller."""


class OverloadedError(EngineError):
    """Admission refused: ``max_concurrent_requests`` are already in flight."""

    def __init__(self, limit: int) -> None:
        super().__init__("Model is overloaded")
        self.limit = limit


class ValidationError(EngineError):
    """The request cannot run as asked (prompt too long, budget exceeded). ``field`` names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class GenerationError(EngineError):
    """llama.cpp failed while this request was running."""


class UnavailableError(EngineError):
    """The engine is not running (still loading, failed, or shutting down)."""
