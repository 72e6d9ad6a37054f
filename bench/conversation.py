"""Long prompts: a cold prefill over HTTP, and an agent's conversation that resends everything each turn.

An agent sends a long system prompt (its tools described) and the whole conversation again on every
turn; a server that reuses the computed prefix answers later turns in a fraction of the first one's time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import msgspec

from bench.client import parsed_stream


def long_text(n_words: int, seed: str = "") -> str:
    """Filler prose of about 2.8 tokens a word with the default model; ``seed`` makes it unique."""
    return seed + " ".join(f"word{i % 50}" for i in range(n_words))


def tool_catalogue(n_tools: int = 40) -> str:
    """A system prompt describing ``n_tools`` tools, as agents send (~2,100 tokens for 40 tools)."""
    lines = ["You are an agent. You can call these tools; answer briefly.", ""]
    for i in range(n_tools):
        lines.append(
            f"- tool_{i}(path: string, depth: integer, verbose: boolean): reads the resource at path, "
            f"walks it {i % 5 + 1} levels deep and returns a summary of what it found, with sizes."
        )
    return "\n".join(lines)


def cold_prefill_rate(base_url: str, prompt: str) -> tuple[float, int]:
    """Prompt tokens/s of one request whose prompt nothing cached can serve (a unique first word), from
    the request sent to the whole answer of one token; and the prompt's length in tokens."""
    body = {"prompt": f"{uuid.uuid4().hex} {prompt}", "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    reply = httpx.post(f"{base_url}/v1/completions", json=body, timeout=600).json()
    elapsed = time.perf_counter() - started
    n_prompt = int(reply["usage"]["prompt_tokens"])
    return n_prompt / elapsed, n_prompt


class Turn(msgspec.Struct):
    ttft: float
    prompt_tokens: int
    cached_tokens: int


def agent_conversation(base_url: str, n_turns: int = 6, extra: dict[str, Any] | None = None) -> list[Turn]:
    """Time to first token of each turn of a streamed chat behind a ~2,100-token system prompt
    (``extra``: more request fields). Only the answers go back into the conversation."""
    nonce = uuid.uuid4().hex[:8]  # a fresh conversation: nothing from an earlier run is cached
    messages: list[dict[str, Any]] = [{"role": "system", "content": f"[{nonce}] {tool_catalogue()}"}]
    turns = []
    for i in range(n_turns):
        messages.append({"role": "user", "content": f"Step {i + 1}: which tool reads a directory?"})
        body = {"messages": messages, "max_tokens": 24, "temperature": 0, **(extra or {})}
        result, reply = asyncio.run(_chat_turn(base_url, body))
        turns.append(Turn(result[0], result[1], result[2]))
        messages.append({"role": "assistant", "content": reply})
    return turns


async def _chat_turn(base_url: str, body: dict[str, Any]) -> tuple[tuple[float, int, int], str]:
    text: list[str] = []
    result = await parsed_stream(base_url, "/v1/chat/completions", body, on_text=text.append)
    return (result.ttft, result.prompt_tokens, result.cached), "".join(text)
