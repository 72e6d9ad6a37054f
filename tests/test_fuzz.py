"""Fuzzing: schemathesis generates valid and invalid requests from the OpenAPI schema the server
publishes, and not one may produce a server error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

EXAMPLES_PER_OPERATION = 20


@pytest.fixture(scope="module")
def fuzz_url(start_server: Any) -> Iterator[str]:
    # A small token budget keeps every generated request short, so the run stays bounded in time.
    with start_server("--max-total-tokens", "24", "--ctx-size", "512") as url:
        yield url


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_causes_a_server_error(fuzz_url: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "POST /generate",
        "POST /generate_stream",
        "POST /",
        "POST /tokenize",
        "POST /v1/responses",
        "POST /v1/messages",
        "POST /v1/messages/count_tokens",
    }
    cases = 0
    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: Any) -> None:
            nonlocal cases
            cases += 1
            response = case.call(timeout=60)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])

        try:
            call()
        except Unsatisfiable:  # an operation without inputs (GET /health) has no invalid form
            assert mode is GenerationMode.NEGATIVE
    assert cases >= 2 * len(operations)
    artifacts = Path("artifacts")
    artifacts.mkdir(exist_ok=True)
    (artifacts / f"fuzz-{mode.value}.txt").write_text(f"{cases} cases, 0 server errors\n")
