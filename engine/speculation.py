"""Speculative decoding's pure parts: where a draft comes from, and how long it may be.

A draft is a guess at the tokens that follow a sequence's next token. The scheduler decodes the guess
in the same ``llama_decode`` as everything else and keeps the part the model agrees with (see
``Scheduler._verify``); nothing here touches llama.cpp, so all of it is tested without a model.

- :class:`PromptLookup` guesses by prompt lookup (n-grams): the sequence's last few tokens are looked
  up in its own prompt and output, and the tokens that followed their latest earlier occurrence are
  the draft. It costs a few dict operations per token, and copies what a request quotes (a file being
  rewritten, tool arguments repeating the question) at the model's own speed of verification.
- :class:`Throttle` decides per sequence how many tokens to draft: the length follows the recent
  acceptance (doubling after a draft taken whole, halving after a poor one), and drafting pauses,
  longer each time, while drafts keep failing, so free prose pays almost nothing for it.
- :func:`share_rows` fits the step's drafts into the rows a step may carry.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class SpecConfig(msgspec.Struct, frozen=True):
    """Prompt-lookup speculation, per sequence. Defaults chosen by ``just bench --only spec``."""

    enabled: bool = True
    ngram_min: int = 2  # shortest suffix looked up: shorter ones match too much in prose
    ngram_max: int = 4  # longest suffix looked up first: the more it matches, the better the guess
    draft_max: int = 16  # most draft tokens per sequence and step
    draft_start: int = 4  # draft length of a new sequence (then doubled or halved by acceptance)
    patience: int = 2  # drafts in a row with nothing accepted before drafting pauses
    pause_max: int = 256  # longest pause, in steps (pauses double from 4 while drafts keep failing)

    def __post_init__(self) -> None:
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError("the n-gram sizes must satisfy 1 <= ngram_min <= ngram_max")
        if self.draft_max < 1 or not 1 <= self.draft_start <= self.draft_max:
            raise ValueError("the draft lengths must satisfy 1 <= draft_start <= draft_max")


OFF = SpecConfig(enabled=False)

_FIRST_PAUSE = 4


class PromptLookup:
    """Drafts by prompt lookup: the continuation of the latest earlier occurrence of the history's last
    ``n`` tokens, longest ``n`` first.

    One table per ``n`` maps each n-gram to where its latest occurrence ended (the index of the token
    after it). The table lags the history by one token, so every entry has a continuation of at least
    one token and the history's own suffix is never its own match.
    """

    __slots__ = ("_sizes", "_tables", "tokens")

    def __init__(self, tokens: Sequence[int], ngram_min: int, ngram_max: int) -> None:
        self.tokens = list(tokens)
        self._sizes = tuple(range(ngram_max, ngram_min - 1, -1))  # longest first
        head = self.tokens[:-1]  # the lag: n-grams whose continuation starts at an existing token
        self._tables: list[dict[tuple[int, ...], int]] = [
            # zip builds all n-grams at C speed (stopping at the shortest slice, the last n-gram);
            # a later occurrence overwrites an earlier one
            {gram: end for end, gram in enumerate(zip(*(head[i:] for i in range(n)), strict=False), start=n)}
            for n in self._sizes
        ]

    def append(self, token: int) -> None:
        """One more token of output (the history's new last token)."""
        tokens = self.tokens
        end = len(tokens)  # the n-grams ending at the old last token now have a continuation
        tokens.append(token)
        for n, table in zip(self._sizes, self._tables, strict=True):
            if end >= n:
                table[tuple(tokens[end - n : end])] = end

    def draft(self, limit: int) -> list[int]:
        """At most ``limit`` tokens guessed to follow the history; empty when nothing matches."""
        tokens = self.tokens
        size = len(tokens)
        for n, table in zip(self._sizes, self._tables, strict=True):
            if size >= n:
                start = table.get(tuple(tokens[size - n :]))
                if start is not None:
                    return tokens[start : start + limit]
        return []


class Throttle:
    """How many tokens one sequence drafts next step: the recent acceptance decides.

    ``length`` doubles after a draft accepted whole (a copied span tends to go on) and halves after one
    less than half accepted. ``patience`` drafts in a row with nothing accepted pause drafting for a
    number of steps that doubles each time it happens again (up to ``pause_max``), and resets once a
    draft is accepted in part: a sequence writing prose soon drafts almost never.
    """

    __slots__ = ("_config", "_misses", "_next_pause", "_paused", "length")

    def __init__(self, config: SpecConfig) -> None:
        self._config = config
        self.length = config.draft_start
        self._misses = 0
        self._paused = 0  # steps left without a draft
        self._next_pause = _FIRST_PAUSE

    def allowance(self) -> int:
        """Draft tokens allowed this step (0 while paused). Call once per step the sequence decodes."""
        if self._paused:
            self._paused -= 1
            return 0
        return self.length

    def record(self, drafted: int, accepted: int) -> None:
        """The outcome of a draft of ``drafted`` tokens of which the first ``accepted`` were right."""
        config = self._config
        if accepted == drafted:
            self.length = min(self.length * 2, config.draft_max)
        elif 2 * accepted < drafted:
            self.length = max(self.length // 2, 1)
        if accepted:
            self._misses = 0
            self._next_pause = _FIRST_PAUSE
            return
        self._misses += 1
        if self._misses >= config.patience:
            self._misses = 0
            self._paused = self._next_pause
            self._next_pause = min(self._next_pause * 2, config.pause_max)

    @property
    def paused(self) -> bool:
        return self._paused > 0


def share_rows(wanted: Sequence[int], room: int) -> list[int]:
    """Cut the draft lengths ``wanted`` (one per decoding sequence, in batch order) so that together
    they take at most ``room`` rows: each in turn gets at most an equal share of what is left, so a
    long draft never crowds out the others' shorter ones."""
    granted = [0] * len(wanted)
    order = sorted(range(len(wanted)), key=wanted.__getitem__)  # shortest first: they leave the rest
    left = max(room, 0)
    for i, index in enumerate(order):
        share = left // (len(order) - i)
        granted[index] = take = min(wanted[index], share)
        left -= take
    return granted
