"""Pure batch planning: how many prompt tokens each waiting prefill may add to the next step.

Every running sequence contributes its one next token to each step. Prompts are prefilled in chunks
on top of that, so a long prompt never freezes the streams already running. The chunk is sized from
the measured cost of a prompt token, so that a step with prefill stays near a target duration
whatever the hardware: a few dozen tokens on a small CPU, hundreds on a GPU. When nobody is decoding,
prefill gets the whole batch: there is no stream to stall.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_CHUNK = 8  # always make progress, even when a token is measured to cost more than the target


def chunk_budget(
    n_decoding: int, max_batch: int, max_chunk: int, seconds_per_token: float | None, target_seconds: float
) -> int:
    """Prompt tokens the next step may carry beside ``n_decoding`` decode tokens."""
    room = max_batch - n_decoding
    if n_decoding == 0:
        return room
    if seconds_per_token is None:  # nothing measured yet: be careful
        return min(room, MIN_CHUNK)
    affordable = int(target_seconds / seconds_per_token) - n_decoding
    return max(0, min(room, max_chunk, max(MIN_CHUNK, affordable)))


def plan_prefill(remaining: Sequence[int], budget: int) -> list[int]:
    """Tokens to take from each prefilling sequence, first come first served.

    ``remaining`` holds each sequence's prompt tokens not yet decoded, in arrival order.
    """
    plan: list[int] = []
    for left in remaining:
        take = min(left, budget)
        plan.append(take)
        budget -= take
    return plan


def smooth(previous: float | None, sample: float, weight: float = 0.3) -> float:
    """Exponentially weighted moving average; the first sample is taken as is."""
    return sample if previous is None else previous + weight * (sample - previous)
