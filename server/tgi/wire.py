"""Text-generation-inference wire models, as TGI's router and huggingface_hub's InferenceClient use them."""

from __future__ import annotations

import msgspec
from msgspec import Struct


class Grammar(Struct):
    """TGI's ``grammar``: ``{"type": "json", "value": <schema object or its JSON text>}``,
    ``{"type": "regex", "value": "<pattern>"}`` or
    ``{"type": "json_schema", "value": {"name"?, "schema"}}``."""

    type: str
    value: object = None


class GenerateParameters(Struct, kw_only=True):
    best_of: int | None = None
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = None
    grammar: Grammar | None = None
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    seed: int | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool = False
    adapter_id: str | None = None


class GenerateRequest(Struct, kw_only=True):
    inputs: str
    parameters: GenerateParameters = msgspec.field(default_factory=GenerateParameters)
    stream: bool = False  # read by the compatibility route POST /


class TokenizeRequest(Struct, kw_only=True):
    inputs: str
    parameters: GenerateParameters | None = None


class Token(Struct):
    id: int
    text: str
    logprob: float | None
    special: bool


class Details(Struct):
    finish_reason: str
    generated_tokens: int
    seed: int | None
    prefill: list[Token]
    tokens: list[Token]
    top_tokens: list[list[Token]] | None = None
    best_of_sequences: None = None


class GenerateResponse(Struct, omit_defaults=True):
    generated_text: str
    details: Details | None = None


class StreamDetails(Struct):
    finish_reason: str
    generated_tokens: int
    seed: int | None
    input_length: int


class StreamResponse(Struct):
    index: int
    token: Token
    generated_text: str | None
    details: StreamDetails | None
    top_tokens: list[Token] | None = None


class SimpleToken(Struct):
    id: int
    text: str
    start: int
    stop: int


class Info(Struct):
    model_id: str
    model_sha: str | None
    model_dtype: str
    model_device_type: str
    model_pipeline_tag: str
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int
    max_input_tokens: int
    max_total_tokens: int
    validation_workers: int
    max_client_batch_size: int
    router: str
    version: str
    sha: str | None
    docker_label: str | None
