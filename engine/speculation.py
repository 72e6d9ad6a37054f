"""Speculative decoding's pure parts: where a draft comes from, and how long it may be.

A draft is a guess at the tokens that follow a sequence's next token. The scheduler decodes the guess
in the same ``llama_decode`` as everything else and keeps the part the model agrees with (see
``Scheduler._verify``); nothing here touches llama.cpp, so all of it is tested without a model.

- :class:`PromptLookup` guesses by prompt lookup (n-grams): the sequence's last few tokens are looked
  up in its own prompt and output, and the tokens that followed their latest earlier occurrence are
  the draft. It costs a few dict operations per token, and copies what a request quotes (a file being
  rewritten, tool arguments repeating the question) at the model's own speed of verification.
- :class:`NgramPool` guesses from what earlier requests wrote, when asked (``pool_tokens``): one table
  for all sequences, kept across requests (llama-server's ngram-mod), so a request sent again (a retry,
  a regeneration, an agent redoing a step) or text a model writes again in a later request is drafted
  from its first token, past what its own prompt holds.
- :class:`Throttle` decides per sequence how many tokens to draft: the length follows the recent
  acceptance and what a row costs (more when other sequences share the step), and drafting pauses,
  longer each time, while drafts do not pay, so free prose pays almost nothing for it.
- :func:`share_rows` fits the step's drafts into the rows a step may carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import msgspec


class SpecConfig(msgspec.Struct, frozen=True):
    """Speculation's settings, per sequence. Defaults chosen by ``just bench --only spec``.

    ``enabled`` turns on the drafts that cost no model (prompt lookup, grammar-forced tokens: ``--spec``);
    a draft model (``--draft-model``) is on whenever one is loaded, and drafts with the same lengths and
    throttle settings."""

    enabled: bool = True
    # The suffix lengths looked up, longest first: the longer the match, the likelier its place is the
    # one being copied. Traced on the default model, a draft after a match agreeing on 2-3 tokens was
    # accepted at 23-43% (a row costs 0.5-0.9 of a step here); in editing, one agreeing on 16 or more
    # was accepted at 96% (94% on Qwen). 4-8 gave the best A/B of 2-4, 3-4, 4-4, 3-8, 4-8 and 4-12.
    ngram_min: int = 4
    ngram_max: int = 8
    draft_max: int = 64  # most draft tokens per sequence and step: a right one gains more the longer
    draft_start: int = 4  # draft length of a new sequence (then doubled or halved by acceptance)
    patience: int = 2  # drafts in a row with nothing accepted before drafting pauses
    # One more row's cost relative to a decode step of one sequence: what a draft token must be worth.
    # 0.6 measured on this CPU (2 cores, the default model); near 0 where rows are almost free (GPUs).
    row_cost: float = 0.6
    # The CPU computes a step's rows in blocks of 4 (llama.cpp's quantized matmul kernels). Measured on
    # this CPU after a 300-token prompt: a step of 4k rows costs about what one of 4k - 1 does, and each
    # row past a block costs 0.6-0.7 of a whole one-row step (SmolLM2 Q4_1) or about one (Qwen2.5 0.5B
    # Q4_K_M: 16 rows 86 ms, 17 rows 103 ms, 1 row 15 ms). So the draft of a sequence decoding alone
    # is cut to fill whole blocks. 1 where a GPU computes (the engine sets it): rows are nearly free.
    row_block: int = 4
    pause_max: int = 256  # longest pause, in steps (pauses double from 4 while drafts keep failing)
    # A draft model's guess goes into a draft only while the draft model gives it at least this
    # probability (llama.cpp's default): an unsure guess is mostly rejected and costs a row and a call.
    draft_p_min: float = 0.75
    # The shared pool: the n-gram that keys it (long, as it spans requests: a short one would match
    # any two texts sharing a phrase), how many output tokens it remembers, and the length its drafts
    # start at, longer than prompt lookup's: a 12-token match there is mostly right. No pool unless
    # asked (pool_tokens 0): with one, a request's drafts depend on what earlier requests wrote, so
    # where verification rows round otherwise than decode rows (Q4_K weights in the fast shape) the
    # same greedy request could change its text at a near tie; without it, its drafts are its own.
    pool_ngram: int = 12
    pool_tokens: int = 0
    pool_draft_start: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError("the n-gram sizes must satisfy 1 <= ngram_min <= ngram_max")
        if self.draft_max < 1 or not 1 <= self.draft_start <= self.draft_max:
            raise ValueError("the draft lengths must satisfy 1 <= draft_start <= draft_max")
        if not 0.0 <= self.row_cost <= 1.0:
            raise ValueError("row_cost must be between 0 and 1")
        if not 0.0 <= self.draft_p_min <= 1.0:
            raise ValueError("draft_p_min must be between 0 and 1")
        if self.pool_ngram < 1 or self.pool_tokens < 0:
            raise ValueError("the pool needs pool_ngram >= 1 and pool_tokens >= 0")
        if self.pool_draft_start < 1:
            raise ValueError("pool_draft_start must be at least 1")
        if self.row_block < 1:
            raise ValueError("row_block must be at least 1")


OFF = SpecConfig(enabled=False)

# Where a sequence's draft of this step came from. Each guessing source has its own throttle (a source
# that fails for a sequence must not silence the other); what a grammar forces needs none.
NO_DRAFT, FORCED, POOL, LOOKUP, MODEL = range(5)
# Each source's name, as /metrics labels its drafted and accepted tokens (NO_DRAFT's are always 0).
SOURCE_NAMES = ("none", "grammar", "pool", "lookup", "draft_model")

_FIRST_PAUSE = 4
_UNSURE_DRAFT = 4  # the longest draft after a match that agrees on 2 tokens or fewer
# A match agreeing on this many tokens is a copy under way: traced, such drafts were 94-96% accepted
_SURE_AGREEMENT = 16


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

    def draft(self, limit: int, *, sure: bool = False) -> list[int]:
        """At most ``limit`` tokens guessed to follow the history, and at most twice as many as agree
        before the match (at least ``_UNSURE_DRAFT``); empty when nothing matches.

        The agreement is the matched n-gram and the tokens before it that equal those before the
        history's end: a match of a few tokens is often in the wrong place (a line that begins like
        another), while one that agrees far back is a copy under way. Measured on an 80-line edit
        (A/B, both models): 8-17% fewer draft tokens for as many accepted, where the length the
        throttle allows alone had drafted 64 tokens on a 4-token match after a rename.

        ``sure``: only a match agreeing on ``_SURE_AGREEMENT`` tokens or more drafts (a copy under way)."""
        enough = -(-limit // 2)  # agreement enough to draft all of ``limit`` (an odd one included)
        start, agreed = self._match(max(enough, _SURE_AGREEMENT) if sure else enough)
        if start < 0 or (sure and agreed < _SURE_AGREEMENT):
            return []
        length = min(limit, max(_UNSURE_DRAFT, 2 * agreed))
        draft = self.tokens[start : start + length]
        if len(draft) < length:
            # The continuation runs into the history's end: the history ends in a repetition of period
            # len(draft) (a loop, a table's rows), and what follows its end is that period again, as an
            # overlapping copy continues. Cut at the end, such a draft never exceeded one period: a
            # 135M model in a 14-token loop was verified 13 tokens a step, where 64 were right.
            draft = (draft * -(-length // len(draft)))[:length]
        return draft

    def _match(self, longest: int) -> tuple[int, int]:
        """Where the continuation of the history's end starts (-1 when nothing matches), and how many
        tokens agree before it, counted up to ``longest``."""
        tokens = self.tokens
        size = len(tokens)
        for n, table in zip(self._sizes, self._tables, strict=True):
            if size >= n:
                start = table.get(tuple(tokens[size - n :]))
                if start is not None:
                    agreed = n
                    while (
                        agreed < longest
                        and start > agreed
                        and tokens[start - agreed - 1] == tokens[size - agreed - 1]
                    ):
                        agreed += 1
                    return start, agreed
        return -1, 0


class NgramPool:
    """Drafts from what earlier sequences wrote: the hash of each ``n``-gram of their outputs (the end
    of their prompt included, where the first tokens' n-grams begin) maps to the token that followed
    it, the latest one written winning. A draft follows the chain from a sequence's last ``n`` tokens.

    Holds at most ``capacity`` entries; past that the oldest written go first. Keys are hashes, not
    the n-grams, to keep an entry small (a collision only makes a draft that verification rejects).
    """

    __slots__ = ("_capacity", "_n", "_table")

    def __init__(self, n: int, capacity: int) -> None:
        self._n = n
        self._capacity = capacity
        self._table: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._table)

    def add(self, tokens: Sequence[int], n_prompt: int) -> None:
        """Remember a finished sequence's output: ``tokens`` is its history, the first ``n_prompt``
        its prompt."""
        n = self._n
        written = tokens[max(n_prompt - n, 0) :]
        grams = zip(*(written[i:] for i in range(n)), strict=False)  # C speed, as in PromptLookup
        table = self._table
        table.update(zip(map(hash, grams), written[n:], strict=False))
        excess = len(table) - self._capacity
        if excess > 0:  # dicts keep insertion order: the oldest entries come first
            for key in list(islice(table, excess)):
                del table[key]

    def draft(self, history: Sequence[int], limit: int) -> list[int]:
        """At most ``limit`` tokens guessed to follow ``history``; empty when its end is not known."""
        n = self._n
        if len(history) < n or not self._table:
            return []
        window = list(history[-n:])
        get = self._table.get
        draft: list[int] = []
        while len(draft) < limit and (token := get(hash(tuple(window)))) is not None:
            draft.append(token)
            window.append(token)
            del window[0]
        return draft


class Throttle:
    """How many tokens one sequence drafts next step: its recent drafts decide.

    ``length`` doubles after a draft accepted whole (a copied span tends to go on) and halves after one
    less than half accepted (from ``draft_start``, at most ``draft_max``, at least ``row_block``;
    cutting it to twice the part accepted instead was measured no better). The step then cuts what
    passes a whole block of rows (:func:`whole_blocks`): alone, a sequence's length of 64 drafts 63.
    ``patience`` drafts in a row with nothing accepted pause drafting for a number of steps that
    doubles each time it happens again (up to ``pause_max``), reset once a draft is accepted in part:
    a sequence writing prose soon drafts almost never.

    A draft row costs ``row_cost`` of a one-row step alone, nearly a whole row of the step beside other
    sequences (:func:`row_value`), so a sequence drafts only while its recent yield (draft tokens
    accepted per draft token, decayed counts from a prior of 0.8) pays for that, or (:meth:`gated`)
    where its match agrees far back (an A/B alone on the default model: editing 1.50 -> 1.61 with the
    gate and whole blocks together, a wording where the model writes its own code 0.82 -> 1.08). The
    yield is measured, not modelled: n-gram drafts are often wrong at once (a match in the wrong place)
    and then right for long (a copy goes on), which no per-token acceptance rate describes.
    """

    __slots__ = ("_accepted", "_config", "_drafted", "_misses", "_next_pause", "_paused", "length")

    def __init__(self, config: SpecConfig, *, pool: bool = False) -> None:
        """``pool``: the shared pool's throttle, whose drafts start longer."""
        self._config = config
        self.length = min(config.pool_draft_start, config.draft_max) if pool else config.draft_start
        self._accepted, self._drafted = _PRIOR_ACCEPTED, _PRIOR_DRAFTED
        self._misses = 0
        self._paused = 0  # steps left without a draft
        self._next_pause = _FIRST_PAUSE

    @property
    def yield_(self) -> float:
        """Recent draft tokens accepted per draft token decoded."""
        return self._accepted / self._drafted

    def allowance(self, n_decoding: int = 1) -> int:
        """Draft tokens allowed this step with ``n_decoding`` sequences decoding (0 while paused).
        Call once per step the sequence decodes."""
        if self._paused:
            self._paused -= 1
            return 0
        return 0 if self._unpaid(n_decoding) else self.length

    def gated(self, n_decoding: int) -> bool:
        """Whether drafting is shut this step by the yield alone (not by a pause). A sure draft (a
        match agreeing far back, a copy under way) still pays there, and its outcome moves the yield."""
        return not self._paused and self._unpaid(n_decoding)

    def _unpaid(self, n_decoding: int) -> bool:
        """The recent yield does not pay for a row."""
        return self.yield_ < row_value(self._config.row_cost, n_decoding)

    def record(self, drafted: int, accepted: int) -> None:
        """The outcome of a draft of ``drafted`` tokens of which the first ``accepted`` were right."""
        config = self._config
        keep = _DECAY**drafted  # older drafts weigh less, per token drafted since
        self._accepted = self._accepted * keep + accepted
        self._drafted = self._drafted * keep + drafted
        if accepted == drafted:
            self.length = min(self.length * 2, config.draft_max)
        elif 2 * accepted < drafted:  # never below a block: a shorter draft would be cut away whole
            self.length = max(self.length // 2, min(config.row_block, config.draft_max))
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


_PRIOR_ACCEPTED, _PRIOR_DRAFTED = 8.0, 10.0  # a yield of 0.8 until drafts say otherwise
_DECAY = 0.98  # per draft token: about the last 50 draft tokens decide


def row_value(row_cost: float, n_decoding: int) -> float:
    """Tokens a draft row must gain on average to pay for itself, with ``n_decoding`` sequences decoding.

    ``row_cost``: one more row's cost relative to a decode step of one sequence. A step of ``n`` rows
    costs about ``1 + row_cost * (n - 1)`` and yields ``n`` tokens: a draft row must gain at least
    ``n`` tokens per that time, times its own cost. Alone that is ``row_cost``; batched it approaches
    1, as every row's cost approaches the marginal one.
    """
    return row_cost * n_decoding / (1.0 + row_cost * (n_decoding - 1))


def whole_blocks(length: int, block: int) -> int:
    """The draft length, at most ``length``, at which a sequence decoding alone fills whole blocks of
    ``block`` rows with its token and its draft (see ``SpecConfig.row_block``): the draft's tail is
    its least likely part, and a row past a block costs about a whole one-row step on a CPU, more than
    the one token it may gain. A draft too short to complete a block is cut whole."""
    return max(length - (1 + length) % block, 0)


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
