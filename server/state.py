"""What the routes share, held in the Litestar app's state."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.datastructures import State

from engine import Engine
from server.conversation.thinking import ModelThinking, find_thinking
from server.conversation.tool_formats import model_tools
from server.metrics import Metrics


class Limits:
    """The budgets every route enforces (TGI's names)."""

    __slots__ = ("longest_piece", "max_input_tokens", "max_stop_sequences", "max_total_tokens", "n_vocab")

    def __init__(
        self,
        max_input_tokens: int,
        max_total_tokens: int,
        max_stop_sequences: int,
        *,
        n_vocab: int = 0,
        longest_piece: int | None = None,
    ) -> None:
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.max_stop_sequences = max_stop_sequences
        self.n_vocab = n_vocab  # token ids run 0..n_vocab-1 (checked in logit_bias)
        # bytes of the longest text one token stands for; None: the tokenizer gives no such bound
        self.longest_piece = longest_piece


class ServerSettings(msgspec.Struct, frozen=True):
    api_key: str | None = None
    payload_limit: int = 2_000_000
    max_input_tokens: int | None = None  # None: derived from one slot's share of the KV cache
    max_total_tokens: int | None = None
    max_stop_sequences: int = 4
    cors_allow_origins: tuple[str, ...] = ()
    first_token_timeout: float = 0.0  # 0: a request may wait for its first token as long as it takes
    responses_store_size: int = 1000  # responses kept for previous_response_id (least recently used go)
    reasoning_format: str = "auto"  # "none": a thought stays in the text
    reasoning_budget: int | None = None  # tokens of thought unless a request says; None: no limit


class Services:
    __slots__ = ("engine", "limits", "metrics", "settings", "thinking", "thinking_found", "tools")

    def __init__(self, engine: Engine, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = Metrics(engine)
        # How the model writes tool calls: its template's format, and which markers are tokens.
        self.tools = model_tools(engine.chat_template.source, engine.grammars.special_token)
        # Where a thinking model writes its thought (None: nowhere, or --reasoning-format none).
        self.thinking: ModelThinking | None = None
        self.thinking_found = "off (--reasoning-format none)"
        if settings.reasoning_format == "auto":
            template, special = engine.chat_template.source, engine.grammars.special_token
            self.thinking, self.thinking_found = find_thinking(template, special, settings.reasoning_budget)
        total = min(settings.max_total_tokens or engine.n_ctx_slot, engine.n_ctx_slot)
        max_input = min(settings.max_input_tokens or total - 1, total - 1)
        model = engine.model
        self.limits = Limits(
            max_input,
            total,
            settings.max_stop_sequences,
            n_vocab=model.n_vocab,
            longest_piece=model.longest_piece,
        )


AnyRequest = Request[Any, Any, State]


def services(request: AnyRequest) -> Services:
    found: Services = request.app.state.services
    return found
