"""Pure batch planning: how many prompt tokens each waiting prefill may add to the next step.

Every running sequence contributes its one next token to each step. Prompts are prefilled in chunks
on top of that, so a long prompt never freezes the streams already running. The chunk is sized from
the measured cost of a prompt token, so that a step with prefill stays near a target duration
whatever the hardware: a few dozen tokens on a small CPU, hundreds on a GPU. When nobody is decoding,
prefill gets the whole batch: there is no stream to stall.
"""

from __future__ import annotations

from collections.abc import Sequence

# Always make progress, even when a token is measured to cost more than the target. Small, because
# late in a long prompt a token can cost 25 ms on a small CPU, and the floor is what a step costs then.
MIN_CHUNK = 4


def chunk_budget(
    n_decoding: int,
    max_batch: int,
    max_chunk: int,
    seconds_per_token: float | None,
    target_seconds: float,
    *,
    fresh_prompt: bool = False,
) -> int:
    """Prompt tokens the next step may carry beside ``n_decoding`` decode tokens.

    ``fresh_prompt``: the prompt first in line has not started. Its first chunk is a small probe,
    because a prompt token's cost depends on the prompt (longer context, dearer attention) and the
    estimate may come from cheaper ones; the probe's step measures the real cost first.
    """
    room = max_batch - n_decoding
    if n_decoding == 0:
        return room
    if seconds_per_token is None or fresh_prompt:
        return min(room, MIN_CHUNK)
    affordable = int(target_seconds / seconds_per_token) - n_decoding
    return max(0, min(room, max_chunk, max(MIN_CHUNK, affordable)))


def draft_room(
    n_decoding: int, max_batch: int, seconds_per_token: float | None, target_seconds: float, *, alone: bool
) -> int:
    """Draft rows the next step may carry beside ``n_decoding`` decode tokens (speculation).

    A draft row costs about what a prompt token does, so once that cost is known the drafts keep the
    step within the same target as prefill does; before, only the batch bounds them (each sequence's
    own draft length is small, and its throttle shortens drafts that fail). ``alone``: one sequence is
    in the step, so a long step delays nobody else's token, and its draft is bounded only by the batch
    (and its own throttle): a long draft that is right is where speculation gains most.
    """
    room = max_batch - n_decoding
    if seconds_per_token is None or alone:
        return room
    return max(0, min(room, int(target_seconds / seconds_per_token) - n_decoding))


def prefill_left(n_prompt: int, n_cached: int) -> int:
    """Prompt tokens a sequence may still put in the current step.

    The last prompt token always goes in a step of its own, after the rest: then the row the first
    token is sampled from is computed the same way whether the other cells were prefilled just now or
    kept from the prompt cache (which keeps at most ``n_prompt - 1`` cells), and greedy text does not
    depend on a warm or cold cache even with a context shape that is not batch-invariant.
    """
    if n_cached < n_prompt - 1:
        return n_prompt - 1 - n_cached
    return n_prompt - n_cached


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


def track_cost(previous: float | None, sample: float, weight: float = 0.2) -> float:
    """Fast attack, slow release: a dearer sample is believed at once (a stall is what we avoid), a
    cheaper one only gradually (an exponentially weighted moving average)."""
    if previous is None or sample > previous:
        return sample
    return previous + weight * (sample - previous)
