"""Batch planning is pure: prefill chunks never starve running streams, and the budget adapts."""

from __future__ import annotations

from engine.batching import MIN_CHUNK, chunk_budget, plan_prefill, track_cost
from engine.limits import resolve_max_tokens


def test_nobody_decoding_prefill_takes_the_whole_batch() -> None:
    assert chunk_budget(0, 512, 64, seconds_per_token=0.01, target_seconds=0.1) == 512


def test_chunk_sized_to_the_target_step_duration() -> None:
    # 5 ms per token, 100 ms per step, 2 decode tokens already in the step: 18 prompt tokens fit
    assert chunk_budget(2, 512, 512, seconds_per_token=0.005, target_seconds=0.1) == 18


def test_chunk_capped_by_max_chunk_and_batch_room() -> None:
    assert chunk_budget(2, 512, 64, seconds_per_token=1e-6, target_seconds=0.1) == 64
    assert chunk_budget(500, 512, 512, seconds_per_token=1e-6, target_seconds=0.1) == 12


def test_unmeasured_or_very_slow_hardware_still_makes_progress() -> None:
    assert chunk_budget(3, 512, 512, seconds_per_token=None, target_seconds=0.1) == MIN_CHUNK
    assert chunk_budget(3, 512, 512, seconds_per_token=1.0, target_seconds=0.1) == MIN_CHUNK


def test_plan_is_first_come_first_served() -> None:
    assert plan_prefill([100, 50, 7], 120) == [100, 20, 0]
    assert plan_prefill([3, 4], 100) == [3, 4]
    assert plan_prefill([], 10) == []


def test_a_fresh_prompt_starts_with_a_probe_chunk() -> None:
    assert (
        chunk_budget(2, 512, 512, seconds_per_token=1e-4, target_seconds=0.1, fresh_prompt=True) == MIN_CHUNK
    )
    assert chunk_budget(0, 512, 512, seconds_per_token=1e-4, target_seconds=0.1, fresh_prompt=True) == 512


def test_cost_tracking_believes_dearer_samples_at_once_and_cheaper_ones_slowly() -> None:
    assert track_cost(None, 2.0) == 2.0
    assert track_cost(2.0, 5.0) == 5.0
    assert track_cost(5.0, 1.0, weight=0.5) == 3.0


def test_max_tokens_defaults_to_what_the_context_leaves() -> None:
    n = resolve_max_tokens(10, None, max_input=99, max_total=100, prompt_field="p", max_field="m")
    assert n == 90


def test_budget_refusals_name_the_field_and_the_counts() -> None:
    import pytest

    from engine import ValidationError

    with pytest.raises(ValidationError) as too_long:
        resolve_max_tokens(
            150, 5, max_input=99, max_total=100, prompt_field="messages", max_field="max_tokens"
        )
    assert too_long.value.field == "messages" and "150" in str(too_long.value)
    with pytest.raises(ValidationError) as too_many:
        resolve_max_tokens(10, 95, max_input=99, max_total=100, prompt_field="prompt", max_field="max_tokens")
    assert too_many.value.field == "max_tokens" and "90" in str(too_many.value)
    with pytest.raises(ValidationError) as empty:
        resolve_max_tokens(0, 5, max_input=99, max_total=100, prompt_field="prompt", max_field="max_tokens")
    assert empty.value.field == "prompt"
