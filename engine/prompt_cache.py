"""The prompt cache's policy, pure: which slot a new prompt takes, what it keeps, what is saved to and
restored from host RAM, and what is evicted. The scheduler only carries the decisions out.

Two places hold KV cells of past requests:

- a free slot's KV stream, whose exact tokens the scheduler remembers (:class:`SlotView`);
- host RAM, as sequence states saved with ``llama_state_seq_get_data`` (:class:`RamCache`).

Reuse is by token prefix only. A request keeps at most ``len(prompt) - 1`` cells: the last prompt token
is always decoded again, because its logits are what the first generated token is sampled from. The
prefix is compared token by token before every reuse, so a request never continues cells that are not
its own prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

# Cells worth saving to RAM before they are overwritten: fewer are cheaper to prefill again than to
# keep (a save copies the whole stream, and an entry costs RAM that longer prefixes deserve more).
MIN_SAVE_TOKENS = 64


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: prompts share thousands of tokens and Python loops are slow.
    step = 256
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reusable(cached: Sequence[int], prompt: Sequence[int]) -> int:
    """Cells of ``cached`` a request with ``prompt`` may keep: their common prefix, less the prompt's
    last token (decoded again for its logits)."""
    return min(common_prefix(cached, prompt), len(prompt) - 1)


class SlotView(msgspec.Struct, frozen=True):
    """A free slot as the policy sees it: the tokens its stream holds and when it was last used."""

    slot: int
    tokens: tuple[int, ...]
    last_used: int


class EntryView(msgspec.Struct, frozen=True):
    """A RAM cache entry as the policy sees it."""

    key: int
    tokens: tuple[int, ...]
    last_used: int


class Placement(msgspec.Struct, frozen=True):
    """What to do for a new request.

    In this order: save ``slot``'s current cells to RAM when ``save``; restore RAM entry ``restore``
    into it when not None; then keep its first ``keep`` cells and drop the rest.
    """

    slot: int
    keep: int
    save: bool = False
    restore: int | None = None


def place(
    prompt: Sequence[int],
    slots: Sequence[SlotView],
    entries: Sequence[EntryView],
    *,
    min_save: int = MIN_SAVE_TOKENS,
) -> Placement:
    """Choose the free slot for ``prompt`` (``slots`` must not be empty).

    The slot with the longest reusable prefix wins (ties: an empty one, else the least recently used,
    so the more recent one keeps its cells for longer). A RAM entry whose prefix is longer by at least
    ``min_save`` tokens (a restore copies a whole state: a few tokens are cheaper to prefill) is
    restored instead, into a victim slot (an empty one, else the least recently used). A slot whose
    cells beyond the kept prefix are worth keeping (``min_save`` tokens or more, not already in RAM)
    is saved before they are overwritten.
    """
    best = max(slots, key=lambda s: (reusable(s.tokens, prompt), not s.tokens, -s.last_used))
    best_keep = reusable(best.tokens, prompt)
    entry: EntryView | None = None
    entry_keep = 0
    for candidate in entries:
        n = reusable(candidate.tokens, prompt)
        fresher = entry is not None and n == entry_keep and candidate.last_used > entry.last_used
        if n > entry_keep or fresher:
            entry, entry_keep = candidate, n
    if entry is None or entry_keep < best_keep + min_save:
        return Placement(best.slot, best_keep, worth_saving(best.tokens, best_keep, entries, min_save))
    victim = min(slots, key=lambda s: (len(s.tokens) > 0, s.last_used))
    save = worth_saving(victim.tokens, 0, entries, min_save)
    return Placement(victim.slot, entry_keep, save, entry.key)


def worth_saving(tokens: Sequence[int], keep: int, entries: Sequence[EntryView], min_save: int) -> bool:
    """Whether a slot's cells should go to RAM before all but ``keep`` of them are dropped."""
    if len(tokens) - keep < min_save:
        return False
    # An entry that already holds these tokens (or more after them) makes a copy pointless.
    return not any(common_prefix(e.tokens, tokens) == len(tokens) for e in entries)


class Entry(msgspec.Struct):
    """A saved sequence state: the tokens its cells hold and llama.cpp's bytes for them."""

    tokens: tuple[int, ...]
    data: bytes
    last_used: int


class RamCache:
    """Sequence states in host RAM within a byte budget; least recently used entries go first."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.entries: dict[int, Entry] = {}
        self.bytes = 0
        self._next_key = 0

    def views(self) -> list[EntryView]:
        return [EntryView(key, e.tokens, e.last_used) for key, e in self.entries.items()]

    def fits(self, size: int) -> bool:
        return 0 < size <= self.budget

    def add(self, tokens: tuple[int, ...], data: bytes, now: int) -> list[int]:
        """Store a state (the caller checked ``fits``); returns the keys evicted to make room.

        Entries whose tokens are a prefix of the new ones are dropped first: the new state holds
        every cell they do.
        """
        evicted = [k for k, e in self.entries.items() if common_prefix(e.tokens, tokens) == len(e.tokens)]
        for key in evicted:
            self._drop(key)
        sizes = [(k, e.last_used, len(e.data)) for k, e in self.entries.items()]
        for key in lru_victims(sizes, self.bytes, len(data), self.budget):
            self._drop(key)
            evicted.append(key)
        self.entries[self._next_key] = Entry(tokens, data, now)
        self._next_key += 1
        self.bytes += len(data)
        return evicted

    def take(self, key: int, now: int) -> Entry:
        """The entry to restore; it stays cached (the slot may diverge from it), marked as used."""
        entry = self.entries[key]
        entry.last_used = now
        return entry

    def _drop(self, key: int) -> None:
        self.bytes -= len(self.entries.pop(key).data)


def lru_victims(entries: Sequence[tuple[int, int, int]], used: int, incoming: int, budget: int) -> list[int]:
    """Keys to evict, least recently used first, so that ``incoming`` more bytes fit in ``budget``.

    ``entries`` holds (key, last_used, size) and ``used`` their total size.
    """
    victims: list[int] = []
    for key, _last_used, size in sorted(entries, key=lambda e: e[1]):
        if used + incoming <= budget:
            break
        victims.append(key)
        used -= size
    return victims
