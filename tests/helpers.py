"""Small helpers the tests share: reading metrics, waiting for the server to settle, and reading the
typed SSE events of the Responses and Messages streams."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


def metrics(base_url: str) -> dict[str, float]:
    """Every sample of /metrics, keyed by name plus labels (e.g. ``tgi_request_failure{err=overloaded}``)."""
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def spec_tokens(samples: dict[str, float], kind: str, source: str | None = None) -> float:
    """Speculation's ``kind`` ("draft" or "accepted") tokens from :func:`metrics`' samples: of one
    draft source, or of all."""
    prefix = f"tokenspout_spec_{kind}_tokens_total{{source="
    return sum(
        v for k, v in samples.items() if k.startswith(prefix) and source in (None, k[len(prefix) : -1])
    )


def wait_until_idle(base_url: str, timeout: float = 10.0) -> dict[str, float]:
    """Poll /metrics until no request is admitted, running or queued and no running request holds a
    KV cell (free slots keep theirs for the prompt cache: ``tokenspout_kv_cells_cached``)."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(base_url)
        idle = (
            m["tokenspout_requests_admitted"] == 0
            and m["tgi_batch_current_size"] == 0
            and m["tgi_queue_size"] == 0
            and m["tokenspout_kv_cells_used"] == 0
        )
        if idle or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def typed_events(raw: bytes) -> list[dict[str, Any]]:
    """The data of each SSE frame of a typed stream, each checked to carry the type its ``event:``
    line names (what the anthropic SDK dispatches on)."""
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            head, data = block.split("\n", 1)
            payload = json.loads(data.removeprefix("data: "))
            assert head == f"event: {payload['type']}"
            out.append(payload)
    return out
