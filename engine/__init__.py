"""tokenspout's engine: continuous batching over llama.cpp. Knows nothing of HTTP."""

from engine.chat import ChatMessage
from engine.engine import Engine, EngineConfig, EngineStats
from engine.errors import EngineError, GenerationError, OverloadedError, UnavailableError, ValidationError
from engine.handle import RequestHandle
from engine.limits import refuse_surely_too_long, resolve_max_tokens
from engine.types import (
    Completion,
    Constraint,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    Thinking,
    TokenEvent,
    TopLogprob,
    Usage,
)

__all__ = [
    "ChatMessage",
    "Completion",
    "Constraint",
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineStats",
    "FinishEvent",
    "FinishReason",
    "GenerationError",
    "GenerationRequest",
    "OverloadedError",
    "RequestHandle",
    "SamplingParams",
    "Thinking",
    "TokenEvent",
    "TopLogprob",
    "UnavailableError",
    "Usage",
    "ValidationError",
    "refuse_surely_too_long",
    "resolve_max_tokens",
]
