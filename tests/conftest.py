"""Fixtures: the real default model (or TOKENSPOUT_TEST_MODEL) served by a real uvicorn server on a
free loopback port. Every test talks to it over HTTP, as a user's client would."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from bench.server import running_server
from engine.engine import DETERMINISTIC_WEIGHTS
from engine.llama import Model
from models import QWEN_CODER, ensure_model
from tests import model_variants
from tests.model_variants import THINKING_TOKENS, thinking_model


@pytest.fixture(scope="session")
def model_path() -> str:
    """The GGUF file under test: TOKENSPOUT_TEST_MODEL if set, else the default model."""
    return os.environ.get("TOKENSPOUT_TEST_MODEL") or str(ensure_model())


ServerFactory = Callable[..., AbstractContextManager[str]]


@pytest.fixture(scope="session")
def start_server(model_path: str) -> ServerFactory:
    """Start a server with extra flags (for tests that need their own limits): ``with start_server(...)``."""

    def start(*flags: str, env: dict[str, str] | None = None) -> AbstractContextManager[str]:
        return running_server(model_path, ["--threads", "2", *flags], env=env)

    return start


@pytest.fixture(scope="session")
def base_url(start_server: ServerFactory) -> Iterator[str]:
    """One shared server with the default settings (4 slots, each the model's trained context within
    the default KV budget; the fast context shape; the prompt cache on)."""
    with start_server() as url:
        yield url


@pytest.fixture(scope="session")
def bit_identity(model_path: str) -> None:
    """Skip a test of bit-identical logits when --deterministic does not promise it for this model's
    weight type (the server says so at start-up; README: Deterministic mode)."""
    model = Model(Path(model_path))
    weight_type = model.weight_type
    model.close()
    if weight_type not in DETERMINISTIC_WEIGHTS:
        pytest.skip(
            f"--deterministic promises bit-identity for {sorted(DETERMINISTIC_WEIGHTS)}, not {weight_type}"
        )


@pytest.fixture(scope="session")
def deterministic_url(start_server: ServerFactory) -> Iterator[str]:
    """One shared server with ``--deterministic``: what bit-identity tests need."""
    with start_server("--deterministic") as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def qwen_url(start_server: ServerFactory) -> Iterator[str]:
    """The real tool-calling model (Qwen2.5-Coder-0.5B, Hermes-style calls), two slots: shared by the
    agent-protocol tests (Responses, Messages), which check the same flows on a real tool model."""
    with start_server("--model", str(ensure_model(QWEN_CODER)), "--parallel", "2") as url:
        yield url


# Thinking models: the default model's weights under real thinking templates, with tokens renamed so
# that the markers are tokens of their own, as in Qwen3's vocabulary (tests/model_variants.py). The
# model does not know them: tests steer it with logit_bias, and both servers close a thought after 12
# tokens unless the request sets its own budget.
THINK, END_THINK, TOOL_CALL, END_TOOL_CALL = sorted(THINKING_TOKENS)
TEMPLATES = model_variants.TEMPLATES


@pytest.fixture(scope="session")
def qwen3_url(model_path: str, start_server: ServerFactory) -> Iterator[str]:
    """Qwen3's template: the model opens its thought itself; ``enable_thinking: false`` closes it in
    the prompt; tool calls are Hermes ``<tool_call>`` tokens."""
    with start_server("--model", str(thinking_model(model_path, "qwen3")), "--reasoning-budget", "12") as url:
        yield url


@pytest.fixture(scope="session")
def r1_url(model_path: str, start_server: ServerFactory) -> Iterator[str]:
    """A DeepSeek-R1 distill's template: the prompt opens the thought, so the output starts inside it."""
    model = thinking_model(model_path, "deepseek-r1-distill-qwen")
    with start_server("--model", str(model), "--reasoning-budget", "12") as url:
        yield url


@pytest.fixture(scope="session")
def qwq_url(model_path: str, start_server: ServerFactory) -> Iterator[str]:
    """QwQ's template: the prompt opens the thought, and tool calls are Hermes ``<tool_call>`` tokens."""
    with start_server("--model", str(thinking_model(model_path, "qwq")), "--reasoning-budget", "12") as url:
        yield url
