"""Two gaps llama.cpp's own server tests found: token-id prompts on /v1/completions, and errors for a
missing or wrong nested field that named only its last key. Over HTTP, in each protocol's shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from engine import ValidationError
from server.openai.adapter import one_prompt, prompt_ids


def test_one_prompt_accepts_token_ids_and_refuses_batches() -> None:
    assert one_prompt([40, 2564, 260]) == [40, 2564, 260]
    assert one_prompt([[40, 2564]]) == [40, 2564]
    assert one_prompt(["hi"]) == "hi"
    with pytest.raises(ValidationError):
        one_prompt([[1], [2]])
    with pytest.raises(ValidationError, match=r"prompt\[1\]"):
        prompt_ids([1, 10**9], 100)


@pytest.mark.parametrize("prompt", [[40, 2564, 260], [[40, 2564, 260]]])
def test_completions_take_token_id_prompts(client: httpx.Client, prompt: Any) -> None:
    response = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4, "temperature": 0})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 3


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {}}},
            "response_format.json_schema.name",
        ),
        (
            "/v1/chat/completions",
            {"messages": HI, "tools": [{"type": "function", "function": {}}]},
            "tools[0].function.name",
        ),
        ("/v1/responses", {"input": "hi", "text": {"format": {}}}, "text.format.type"),
    ],
)  # fmt: skip
def test_openai_errors_name_the_whole_path(client: httpx.Client, path: str, body: Any, param: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_anthropic_and_tgi_errors_name_the_whole_path(client: httpx.Client) -> None:
    anthropic = client.post(
        "/v1/messages", json={"max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]}
    )
    assert anthropic.status_code == 400
    assert "messages[0].content[0].type" in anthropic.json()["error"]["message"]
    tgi = client.post("/generate", json={"inputs": "hi", "parameters": {"grammar": {"value": {}}}})
    assert tgi.status_code == 400  # a body that does not decode is a 400 on TGI routes too
    assert "parameters.grammar.type" in tgi.json()["error"]
