"""The prompt cache's policy is pure: which slot, what is kept, saved, restored and evicted."""

from __future__ import annotations

from engine.batching import prefill_left
from engine.limits import auto_slot_context
from engine.prompt_cache import (
    EntryView,
    RamCache,
    SlotView,
    common_prefix,
    lru_victims,
    place,
    reusable,
    worth_saving,
)

SYSTEM = tuple(range(1000, 1300))  # a 300-token system prompt two conversations share


def test_common_prefix_across_block_boundaries() -> None:
    a = tuple(range(1000))
    assert common_prefix(a, a) == 1000
    assert common_prefix(a, (*a[:700], -1, *a[701:])) == 700
    assert common_prefix(a, a[:3]) == 3
    assert common_prefix((), a) == 0
    assert common_prefix((5, 6), (6, 5)) == 0


def test_the_last_prompt_token_is_never_reused() -> None:
    prompt = (1, 2, 3, 4)
    assert reusable((1, 2, 3, 4, 9, 9), prompt) == 3  # its logits are needed: decoded again
    assert reusable((1, 2), prompt) == 2
    assert reusable((1, 7, 3), prompt) == 1  # diverges in the middle: only the common prefix


def test_the_slot_with_the_longest_prefix_wins() -> None:
    conversation_a = (*SYSTEM, 1, 2, 3, 4)
    conversation_b = (*SYSTEM, 7, 8, 9)
    slots = [SlotView(0, conversation_b, 5), SlotView(1, conversation_a, 1), SlotView(2, (), 0)]
    decision = place((*conversation_a, 5, 6), slots, [])
    assert decision == place((*conversation_a, 5, 6), slots[::-1], [])
    assert decision.slot == 1 and decision.keep == len(conversation_a) and decision.restore is None


def test_ties_go_to_an_empty_slot_then_the_least_recently_used() -> None:
    prompt = (50, 51, 52)
    assert place(prompt, [SlotView(0, (9,), 1), SlotView(1, (), 5), SlotView(2, (8,), 0)], []).slot == 1
    assert place(prompt, [SlotView(0, (9,), 3), SlotView(2, (8,), 2)], []).slot == 2
    shared = (*SYSTEM, 1)
    slots = [SlotView(0, (*SYSTEM, 2), 9), SlotView(3, (*SYSTEM, 3), 4)]
    decision = place(shared, slots, [])
    assert decision.slot == 3 and decision.keep == len(SYSTEM)


def test_a_slot_about_to_lose_many_cells_is_saved_first() -> None:
    old = tuple(range(500))
    decision = place((9, 9, 9), [SlotView(0, old, 1)], [], min_save=64)
    assert decision.slot == 0 and decision.keep == 0 and decision.save
    # a short one is cheaper to prefill again than to keep
    assert not place((9, 9, 9), [SlotView(0, old[:20], 1)], [], min_save=64).save
    # and cells the new request keeps are not lost: only the tail beyond them counts
    assert not place((*old[:480], 9), [SlotView(0, old, 1)], [], min_save=64).save


def test_nothing_is_saved_twice() -> None:
    old = tuple(range(500))
    entries = [EntryView(0, (*old, 1, 2), 3)]
    assert not worth_saving(old, 0, entries, 64)  # an entry already holds all of it (and more)
    assert worth_saving(old, 0, [EntryView(0, old[:300], 3)], 64)


def test_a_longer_prefix_in_ram_is_restored_into_a_victim_slot() -> None:
    conversation = (*SYSTEM, *range(200))
    slots = [SlotView(0, (*SYSTEM, 5, 5), 2), SlotView(1, tuple(range(2000, 2100)), 1)]
    entries = [EntryView(7, conversation, 1), EntryView(8, SYSTEM, 2)]
    decision = place((*conversation, 42), slots, entries, min_save=64)
    assert decision.restore == 7 and decision.keep == len(conversation)
    assert decision.slot == 1  # least recently used: the other one still holds the system prompt
    assert decision.save  # its 100 tokens go to RAM before they are overwritten


def test_a_restore_must_gain_enough_to_be_worth_its_copy() -> None:
    slots = [SlotView(0, (*SYSTEM, 1), 1)]
    entries = [EntryView(7, (*SYSTEM, 1, 2, 3), 1)]
    decision = place((*SYSTEM, 1, 2, 3, 4), slots, entries, min_save=64)
    assert decision.restore is None and decision.slot == 0 and decision.keep == len(SYSTEM) + 1
    assert place((*SYSTEM, 1, 2, 3, 4), slots, entries, min_save=1).restore == 7


def test_ram_cache_evicts_least_recently_used_within_its_budget() -> None:
    cache = RamCache(budget_bytes=250)
    assert cache.fits(100) and not cache.fits(251) and not RamCache(0).fits(1)
    cache.add((1, 1), b"a" * 100, now=1)
    cache.add((2, 2), b"b" * 100, now=2)
    cache.take(0, now=3)  # (1, 1) was used last: (2, 2) is now the oldest
    evicted = cache.add((3, 3), b"c" * 100, now=4)
    assert evicted == [1] and cache.bytes == 200
    assert sorted(e.tokens for e in cache.entries.values()) == [(1, 1), (3, 3)]


def test_a_saved_state_replaces_the_entries_it_extends() -> None:
    cache = RamCache(budget_bytes=10_000)
    cache.add((1, 2, 3), b"x" * 10, now=1)
    cache.add((1, 2, 9), b"y" * 10, now=2)
    evicted = cache.add((1, 2, 3, 4, 5), b"z" * 20, now=3)
    assert evicted == [0] and cache.bytes == 30
    assert sorted(e.tokens for e in cache.entries.values()) == [(1, 2, 3, 4, 5), (1, 2, 9)]


def test_lru_victims_free_just_enough() -> None:
    entries = [(0, 5, 100), (1, 1, 100), (2, 3, 100)]
    assert lru_victims(entries, used=300, incoming=50, budget=300) == [1]
    assert lru_victims(entries, used=300, incoming=150, budget=300) == [1, 2]
    assert lru_victims(entries, used=300, incoming=0, budget=300) == []


def test_the_last_prompt_token_gets_a_step_of_its_own() -> None:
    assert prefill_left(100, 0) == 99
    assert prefill_left(100, 40) == 59
    assert prefill_left(100, 99) == 1
    assert prefill_left(1, 0) == 1


def test_auto_context_is_the_trained_context_within_the_budget() -> None:
    mib = 1 << 20
    # 12,240 bytes a token (SmolLM2-135M with Q8_0 cells), 4 slots
    assert auto_slot_context(8192, 12_240, 4, 1024 * mib) == 8192
    assert auto_slot_context(8192, 12_240, 4, 256 * mib) == 5376  # 5,483 affordable, in 256-cell blocks
    assert auto_slot_context(131_072, 131_072, 4, 1024 * mib) == 2048
    assert auto_slot_context(8192, 12_240, 4, 1 * mib) == 256  # never less than one block
    assert auto_slot_context(0, 12_240, 1, 64 * mib) == 5376  # no trained context in the GGUF
