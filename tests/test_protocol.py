"""The rest of the protocol: nothing that changes the output is ignored. logit_bias is honoured, what
cannot be honoured is refused naming the field, GET routes answer HEAD, the SDK can retrieve the model."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from engine import ValidationError, refuse_surely_too_long
from server.conversation.prompt import logit_bias

CHAT = "/v1/chat/completions"


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def token_id(client: httpx.Client, text: str) -> int:
    """The id of the one token ``text`` is (checked, so the test fails loudly on a model where it is not)."""
    spans = client.post("/tokenize", json={"inputs": text}).json()
    ids = [s["id"] for s in spans if s["text"]]
    assert len(ids) == 1, f"{text!r} is {len(ids)} tokens in this model"
    return int(ids[0])


def first_tokens(client: httpx.Client, route: str, bias: dict[str, float] | None, n: int = 4) -> list[str]:
    """The first greedy tokens' texts, through the OpenAI route ``route`` (``chat`` or ``completions``)."""
    body: dict[str, Any] = {"max_tokens": n, "temperature": 0, "ignore_eos": True}
    if bias is not None:
        body["logit_bias"] = bias
    if route == "chat":
        body |= {"messages": [{"role": "user", "content": "Name a fruit."}], "logprobs": True}
        reply = client.post(CHAT, json=body)
        assert reply.status_code == 200, reply.text
        texts = [t["token"] for t in reply.json()["choices"][0]["logprobs"]["content"]]
    else:
        body |= {"prompt": "My favourite fruit is", "logprobs": 0}
        reply = client.post("/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        texts = reply.json()["choices"][0]["logprobs"]["tokens"]
    return [str(t) for t in texts]


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_a_bias_of_100_makes_greedy_output_that_token(client: httpx.Client, route: str) -> None:
    banana = token_id(client, " banana")
    assert first_tokens(client, route, None)[0] != " banana"  # unbiased, the model says something else
    assert first_tokens(client, route, {str(banana): 100})[0] == " banana"


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_a_bias_of_minus_100_bans_the_token_greedy_picks(client: httpx.Client, route: str) -> None:
    plain = first_tokens(client, route, None)
    banned = token_id(client, plain[0])
    biased = first_tokens(client, route, {str(banned): -100})
    assert biased[0] != plain[0] and biased != plain


def test_a_small_bias_leaves_the_output_alone_when_it_does_not_tip_the_choice(client: httpx.Client) -> None:
    # a bias on a token nobody would pick changes nothing: the stage adds, it does not replace
    plain = first_tokens(client, "completions", None)
    assert first_tokens(client, "completions", {str(token_id(client, " zebra")): 0.5}) == plain


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        (CHAT, {"logit_bias": {"oops": 1}}, "logit_bias"),
        (CHAT, {"logit_bias": {"-1": 1}}, "logit_bias"),
        (CHAT, {"logit_bias": {"10000000": 1}}, "logit_bias"),
        (CHAT, {"logit_bias": {"5": 100.5}}, "logit_bias"),
        (CHAT, {"logit_bias": {"5": "much"}}, "logit_bias"),
        (CHAT, {"logit_bias": [1, 2]}, "logit_bias"),
        (CHAT, {"n": 2}, "n"),
        ("/v1/completions", {"logit_bias": {"oops": 1}}, "logit_bias"),
        ("/v1/completions", {"suffix": " and that is all."}, "suffix"),
        ("/v1/completions", {"best_of": 3}, "best_of"),
        ("/v1/completions", {"echo": True}, "echo"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_field(
    client: httpx.Client, path: str, extra: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"max_tokens": 3, **extra}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if path == CHAT else {"prompt": "hi"}
    reply = client.post(path, json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert param in error["message"]


def test_n_above_one_says_only_one_is_supported(client: httpx.Client) -> None:
    reply = client.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}], "n": 3})
    assert "only `n: 1` is supported" in reply.json()["error"]["message"]


def test_best_of_one_and_an_empty_suffix_are_accepted(client: httpx.Client) -> None:
    body = {"prompt": "Once upon", "max_tokens": 3, "best_of": 1, "suffix": ""}
    assert client.post("/v1/completions", json=body).status_code == 200


@pytest.mark.parametrize("streamed", [False, True])
def test_decoder_input_details_is_refused_with_422(client: httpx.Client, streamed: bool) -> None:
    path = "/generate_stream" if streamed else "/generate"
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 2, "decoder_input_details": True}}
    reply = client.post(path, json=body)
    assert reply.status_code == 422 and reply.json()["error_type"] == "validation"
    assert "decoder_input_details" in reply.json()["error"]


def test_the_chat_message_carries_refusal_null(client: httpx.Client) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    message = client.post(CHAT, json=body).json()["choices"][0]["message"]
    assert "refusal" in message and message["refusal"] is None


@pytest.mark.parametrize("path", ["/health", "/info", "/v1/models", "/metrics", "/"])
def test_get_routes_answer_head_without_a_body(client: httpx.Client, path: str) -> None:
    got = client.get(path)
    head = client.head(path)
    assert got.status_code == head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]


def test_the_sdk_retrieves_the_served_model_and_gets_404_for_another(base_url: str) -> None:
    client = sdk(base_url)
    served = client.models.list().data[0].id
    card = client.models.retrieve(served)
    assert card.id == served and card.object == "model" and card.owned_by
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"
    assert missing.value.body["param"] == "model"  # type: ignore[index]


def test_logit_bias_pairs_are_checked_and_sorted() -> None:
    assert logit_bias({"7": -100, "3": 2.5}, n_vocab=10) == ((3, 2.5), (7, -100.0))
    assert logit_bias(None, n_vocab=10) == ()
    bad_ones: list[dict[str, float]] = [{"+3": 1}, {"1_0": 1}, {" 3": 1}, {"10": 1}, {"3": float("nan")}]
    for bad in [*bad_ones, {"3": -101.0}]:
        with pytest.raises(ValidationError) as refused:
            logit_bias(bad, n_vocab=10)
        assert refused.value.field == "logit_bias"


def test_a_text_too_long_for_any_tokenization_is_refused_before_tokenizing() -> None:
    refuse_surely_too_long("a" * 80, max_input=10, longest_piece=8, field="prompt")  # may fit: no refusal
    refuse_surely_too_long("a" * 10_000, max_input=10, longest_piece=None, field="prompt")  # no bound known
    for text in ("a" * 81, "é" * 41):  # 81 and 82 bytes
        with pytest.raises(ValidationError) as refused:
            refuse_surely_too_long(text, max_input=10, longest_piece=8, field="prompt")
        assert refused.value.field == "prompt" and "10 tokens" in str(refused.value)
