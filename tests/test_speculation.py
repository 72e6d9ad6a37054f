"""Speculation's pure parts (engine/speculation.py): prompt lookup, the per-sequence throttle, and
how a step's rows are shared among drafts. No model: these are plain functions of their inputs."""

from __future__ import annotations

import pytest

from engine.batching import draft_room
from engine.speculation import (
    NgramPool,
    PromptLookup,
    SpecConfig,
    Throttle,
    row_value,
    share_rows,
    whole_blocks,
)


def test_lookup_drafts_what_followed_the_latest_earlier_occurrence_of_the_suffix() -> None:
    #            0  1  2  3  4  5  6  7  8  9
    history = [1, 2, 3, 4, 5, 9, 2, 3, 7, 2, 3]
    lookup = PromptLookup(history, 2, 3)
    # suffix (2, 3): latest earlier occurrence ends at index 8 -> continuation 7, 2, 3
    assert lookup.draft(2) == [7, 2]
    # past the history's end, its repetition (7, 2, 3) goes on; 4 tokens, twice the agreement's 2
    assert lookup.draft(10) == [7, 2, 3, 7]
    lookup.append(4)  # suffix (2, 3, 4) now matches the prompt's first occurrence, the longest size first
    assert lookup.draft(3) == [5, 9, 2]


def test_a_lookup_draft_is_at_most_twice_as_long_as_the_agreement_before_its_match() -> None:
    quoted = list(range(100, 140))
    # the output has copied the quote's first 10 tokens: all 10 agree before the match, so 20 follow
    assert PromptLookup([*quoted, 1, *quoted[:10]], 2, 4).draft(64) == quoted[10:30]
    # only the 2-token n-gram agrees (a line that begins like another): a short draft, 4 tokens
    assert PromptLookup([5, 1, 2, *quoted, 6, 1, 2], 2, 4).draft(64) == quoted[:4]
    assert PromptLookup([5, 1, 2, *quoted, 6, 1, 2], 2, 4).draft(3) == quoted[:3]  # and the limit holds


def test_lookup_never_matches_the_suffix_with_itself_and_finds_nothing_new() -> None:
    lookup = PromptLookup([5, 6, 7], 2, 2)
    assert lookup.draft(4) == []  # (6, 7) occurs only as the suffix
    lookup.append(8)
    assert lookup.draft(4) == []
    lookup.append(6)
    lookup.append(7)
    assert lookup.draft(4) == [8, 6, 7, 8]  # (6, 7) now occurred before, followed by 8


def test_a_history_ending_in_a_loop_is_drafted_round_the_loop_to_the_full_length() -> None:
    loop = [11, 12, 13, 14, 15]
    lookup = PromptLookup([1, 2, *loop * 4], 4, 8)
    # the match is one period back, so only 5 tokens follow it in the history: the draft goes on
    # round the loop, as long as the agreement allows (the 15 tokens before the match agree)
    assert lookup.draft(64) == (loop * 7)[:30]
    assert lookup.draft(7) == (loop * 2)[:7]


def test_lookup_prefers_the_longest_suffix_and_falls_back_to_shorter_ones() -> None:
    # (3, 4) last followed by 9 at the end; (2, 3, 4) only at the start, followed by 5
    history = [2, 3, 4, 5, 3, 4, 9, 2, 3, 4]
    assert PromptLookup(history, 2, 3).draft(1) == [5]
    assert PromptLookup(history, 2, 2).draft(1) == [9]
    assert PromptLookup([1, 2, 8, 2], 1, 3).draft(2) == [8, 2]  # only the 1-token suffix (2) matches


def test_lookup_appending_equals_indexing_the_whole_history_at_once() -> None:
    history = [7, 1, 2, 7, 1, 3, 1, 2, 7, 1, 2, 2, 7]
    for split in range(1, len(history)):
        grown = PromptLookup(history[:split], 1, 3)
        for token in history[split:]:
            grown.append(token)
        whole = PromptLookup(history, 1, 3)
        assert grown.draft(5) == whole.draft(5), split


def test_the_pool_drafts_an_earlier_output_from_its_prompt_s_end_on() -> None:
    pool = NgramPool(3, 100)
    prompt, output = [1, 2, 3, 4, 5], [6, 7, 8, 9]
    pool.add([*prompt, *output], len(prompt))
    assert pool.draft([9, 3, 4, 5], 10) == [6, 7, 8, 9]  # the same prompt's end: the whole answer
    assert pool.draft([3, 4, 5, 6], 2) == [7, 8]
    assert pool.draft([1, 2, 3], 5) == []  # inside the prompt: prompt lookup's part, not remembered
    assert pool.draft([5, 6], 5) == []  # shorter than an n-gram


def test_the_pool_follows_the_latest_output_and_forgets_the_oldest_past_its_capacity() -> None:
    pool = NgramPool(2, 5)
    pool.add([1, 2, 3, 4, 5, 6], 2)  # (1, 2) (2, 3) (3, 4) (4, 5), each with what followed it
    pool.add([1, 2, 7, 8], 2)  # (1, 2) is now followed by 7; (2, 7) is new: 5 entries
    assert pool.draft([1, 2], 3) == [7, 8]
    assert len(pool) == 5
    pool.add([9, 9, 9, 1], 0)  # (9, 9) followed by 9, then by 1: the latest wins
    assert len(pool) == 5  # one past the capacity: the oldest entry, (1, 2), went
    assert pool.draft([1, 2], 3) == []
    assert pool.draft([2, 3], 2) == [4, 5]
    assert pool.draft([9, 9], 3) == [1]


def test_a_pool_draft_that_cycles_stops_at_its_limit() -> None:
    pool = NgramPool(1, 10)
    pool.add([5, 6, 5, 6], 0)
    assert pool.draft([5], 5) == [6, 5, 6, 5, 6]


def test_the_pool_s_drafts_start_longer() -> None:
    config = SpecConfig(draft_start=4, draft_max=64, pool_draft_start=16)
    throttle = Throttle(config, pool=True)
    assert throttle.allowance() == 16
    throttle.record(16, 16)
    throttle.record(32, 32)
    throttle.record(64, 64)
    assert throttle.allowance() == 64


def free_rows(draft_start: int, draft_max: int = 64, patience: int = 2, pause_max: int = 256) -> SpecConfig:
    """Rows for free and no blocks: the throttle's lengths and pauses alone, no yield gate."""
    return SpecConfig(
        draft_start=draft_start,
        draft_max=draft_max,
        patience=patience,
        pause_max=pause_max,
        row_cost=0.0,
        row_block=1,
    )


def test_the_throttle_doubles_on_full_acceptance_and_halves_on_poor_acceptance() -> None:
    config = free_rows(draft_start=4, draft_max=16)
    throttle = Throttle(config)
    assert throttle.allowance() == 4
    throttle.record(4, 4)
    assert throttle.allowance() == 8
    throttle.record(8, 8)
    throttle.record(16, 16)
    assert throttle.allowance() == 16  # capped at draft_max
    throttle.record(16, 10)  # more than half accepted: keeps its length
    assert throttle.allowance() == 16
    throttle.record(16, 3)
    assert throttle.allowance() == 8


def test_drafts_that_keep_failing_pause_drafting_longer_each_time() -> None:
    config = free_rows(draft_start=2, patience=2, pause_max=16)
    throttle = Throttle(config)
    pauses = []
    for _ in range(5):
        while not throttle.paused:
            throttle.record(throttle.allowance(), 0)
        steps = 0
        while throttle.allowance() == 0:
            steps += 1
        pauses.append(steps)
    assert pauses == [4, 8, 16, 16, 16]
    assert throttle.length == 1  # and what it drafts between pauses is as short as can be


def test_an_accepted_draft_resets_the_pauses() -> None:
    throttle = Throttle(free_rows(draft_start=2, patience=1))
    throttle.record(2, 0)
    while throttle.allowance() == 0:
        pass
    throttle.record(1, 0)  # second failure: a pause of 8
    while throttle.allowance() == 0:
        pass
    throttle.record(1, 1)
    throttle.record(2, 0)  # a failure after a success pauses for the first, shortest time again
    steps = 0
    while throttle.allowance() == 0:
        steps += 1
    assert steps == 4


def test_share_rows_gives_short_drafts_all_they_want_and_splits_the_rest() -> None:
    assert share_rows([3, 16, 0, 16], 100) == [3, 16, 0, 16]
    assert share_rows([3, 16, 0, 16], 20) == [3, 8, 0, 9]  # the later of equals gets the remainder
    assert sum(share_rows([5, 5, 5], 7)) == 7
    assert share_rows([4, 4], 0) == [0, 0]
    assert share_rows([4, 4], -3) == [0, 0]
    assert share_rows([], 10) == []


def test_draft_room_keeps_a_step_near_its_target_once_a_row_cost_is_known() -> None:
    assert draft_room(4, 512, None, 0.1, alone=False) == 508  # before any measurement: the batch bounds it
    assert draft_room(4, 512, 0.005, 0.1, alone=False) == 16  # 20 rows fit 100 ms at 5 ms a row
    assert draft_room(30, 512, 0.005, 0.1, alone=False) == 0
    assert draft_room(4, 8, 0.001, 0.1, alone=False) == 4


def test_a_sequence_alone_in_its_step_drafts_past_the_step_target() -> None:
    # nobody else's token waits for the step, so only the batch (and the throttle) bound its draft
    assert draft_room(1, 512, 0.005, 0.1, alone=True) == 511
    assert draft_room(1, 512, 0.005, 0.1, alone=False) == 19


def test_the_config_refuses_sizes_that_make_no_sense() -> None:
    with pytest.raises(ValueError):
        SpecConfig(ngram_min=3, ngram_max=2)
    with pytest.raises(ValueError):
        SpecConfig(draft_start=8, draft_max=4)
    with pytest.raises(ValueError):
        SpecConfig(ngram_min=0)


def test_beside_other_sequences_a_draft_must_yield_more_than_alone() -> None:
    """A draft row costs ``row_cost`` of a one-row step alone, nearly a whole row of a step beside
    others: a sequence whose drafts are right 70% of the time drafts alone but not in a batch of 4."""
    assert row_value(0.6, 1) == pytest.approx(0.6)
    assert row_value(0.6, 4) == pytest.approx(2.4 / 2.8)
    assert row_value(0.0, 4) == 0.0  # rows for free (a GPU, say): any yield pays
    throttle = Throttle(SpecConfig(draft_start=8, draft_max=8))
    for _ in range(20):
        throttle.record(8, 5)  # 5 of 8 right, again and again
    assert 0.6 < throttle.yield_ < 0.7
    assert throttle.allowance(1) == 8
    assert throttle.gated(4) and not throttle.gated(1)
    assert throttle.allowance(4) == 0
    assert not throttle.paused  # not a failure: it drafts again as soon as it decodes alone
    assert throttle.allowance(1) == 8


def test_a_gated_sequence_still_drafts_a_copy_under_way_and_a_pause_is_no_gate() -> None:
    """Beside others with a yield that does not pay (a new sequence's prior, 0.8, is under a batch of
    4's ~0.86), only a match agreeing on 16 tokens or more drafts: a copy under way pays there."""
    throttle = Throttle(SpecConfig())
    assert throttle.gated(4)
    quoted = list(range(100, 160))
    copying = PromptLookup([*quoted, 1, *quoted[:20]], 4, 8)  # 20 tokens agree before the match
    assert copying.draft(8, sure=True) == quoted[20:28]
    starting = PromptLookup([*quoted, 1, *quoted[:6]], 4, 8)  # 6 agree: drafts only where not gated
    assert starting.draft(8, sure=True) == []
    assert starting.draft(8) == quoted[6:14]
    for _ in range(2):
        throttle.record(4, 0)
    assert throttle.paused and not throttle.gated(4)


def test_a_failing_draft_never_halves_below_a_block_of_rows() -> None:
    """A draft shorter than a block would be cut away whole when its sequence decodes alone."""
    throttle = Throttle(SpecConfig(draft_start=16, row_block=4, row_cost=0.0))
    for _ in range(4):
        throttle.record(throttle.allowance(), 1)  # under half accepted: halves, 16 -> 8 -> 4 -> 4
    assert throttle.length == 4
    assert Throttle(SpecConfig(draft_start=2, draft_max=2, row_block=4)).length == 2  # draft_max rules


def test_whole_blocks_cuts_a_lone_draft_so_that_its_step_fills_whole_blocks_of_rows() -> None:
    assert whole_blocks(64, 4) == 63  # its token and 63 draft rows: 16 blocks of 4
    assert whole_blocks(63, 4) == 63
    assert whole_blocks(17, 4) == 15
    assert whole_blocks(2, 4) == 0  # too short to complete a block: cut whole
    assert whole_blocks(1, 4) == 0
    assert whole_blocks(0, 4) == 0
    assert whole_blocks(64, 1) == 64  # no blocks (a GPU)


def test_alone_a_draft_must_yield_what_its_rows_cost() -> None:
    """Alone a draft row costs ``row_cost`` of a one-row step: drafts right under that often stop,
    but for sure copies, as beside other sequences."""
    throttle = Throttle(SpecConfig(draft_start=8, draft_max=8, row_cost=0.6))
    for _ in range(20):
        throttle.record(8, 4)  # half right: not a failure, so no pause
    assert throttle.yield_ < 0.6
    assert not throttle.paused and throttle.gated(1)
    assert throttle.allowance(1) == 0
