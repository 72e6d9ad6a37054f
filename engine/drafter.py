"""Drafts from a smaller model of the same vocabulary (``--draft-model``), on the scheduler thread.

The draft model has a llama context of its own with one sequence per slot (slot ``s`` of the target is
sequence ``s`` here) and as many cells per slot as the target's: a draft must see the whole prompt to
guess well. Only the scheduler thread touches it. For each slot the drafter records the exact tokens
whose cells it holds, which is all that keeping it in step with the target needs:

- on admission a slot keeps the longest prefix its cells share with the new prompt (as the target's
  prompt cache does); the rest of the prompt is prefilled a chunk per step, within a step's budget,
  so that a long prompt does not stall the running streams;
- a step that drafts first decodes what the slot lacks of the sequence (the prompt's rest, the tokens
  accepted last step, the token sampled last), then guesses greedily, one token per ``llama_decode``
  with every drafting sequence a row of the same call, until each has its length or the draft model
  is unsure (``p_min``);
- after verification a slot is trimmed to what the target accepted (:meth:`Drafter.settle`).

A draft is only a guess: the target samples every position with its own sampler chain and keeps a
draft token only when its sample equals it, so nothing here can change the output, and a failure
here only costs the step its drafts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from engine.batching import chunk_budget, track_cost
from engine.llama import Context, Model, Vocabulary
from engine.prompt_cache import common_prefix

log = logging.getLogger("tokenspout.drafter")


class VocabularyMismatch(RuntimeError):
    """The draft model cannot draft for the target: another vocabulary. One line for the user."""


def vocabulary_difference(target: Vocabulary, draft: Vocabulary) -> str | None:
    """How the draft's vocabulary differs from the target's (tokens and digest aside), or None."""
    if draft.n_tokens != target.n_tokens:
        return f"{draft.n_tokens} tokens against the target's {target.n_tokens}"
    if draft.kind != target.kind:
        return f"tokenizer type {draft.kind} against the target's {target.kind}"
    for name in ("bos", "eos", "eog", "add_bos", "add_eos"):
        ours, theirs = getattr(draft, name), getattr(target, name)
        if ours != theirs:
            shown = sorted(ours) if isinstance(ours, frozenset) else ours
            wanted = sorted(theirs) if isinstance(theirs, frozenset) else theirs
            return f"{name} {shown} against the target's {wanted}"
    return None


def check_vocabulary(target: Model, draft: Model) -> None:
    """Raise :class:`VocabularyMismatch` naming both files unless ``draft`` has ``target``'s vocabulary:
    the same size, tokenizer, special tokens, and every token's text and type (a digest of all of
    them). A draft token is handed to the target by id, so any difference makes drafts of other text."""
    difference = vocabulary_difference(target.vocabulary(), draft.vocabulary())
    if difference is None and draft.vocab_digest() != target.vocab_digest():
        difference = "the same number of tokens, but not the same token texts"
    if difference is not None:
        raise VocabularyMismatch(
            f"the draft model {draft.path} does not have the vocabulary of the model {target.path} "
            f"({difference}); a draft model must share the served model's vocabulary"
        )


class DraftJob:
    """One sequence's draft this step: what its slot lacks, how long a draft it may make, and (after
    :meth:`Drafter.step`) the draft."""

    __slots__ = ("limit", "pending", "row", "slot", "tokens")

    def __init__(self, slot: int, pending: list[int], limit: int) -> None:
        self.slot = slot
        self.pending = pending  # tokens to decode into the slot first; the last one's logits guess
        self.limit = limit
        self.tokens: list[int] = []
        self.row = -1


class Drafter:
    """The draft model's context and what each of its slots holds. Scheduler thread only."""

    def __init__(
        self, context: Context, p_min: float, prefill_chunk: int, step_target_seconds: float
    ) -> None:
        self.context = context
        self.model = context.model
        self.p_min = p_min
        self.prefill_chunk = prefill_chunk
        self.step_target_seconds = step_target_seconds
        self.held: list[list[int]] = [[] for _ in range(context.n_seq)]  # exact tokens of each slot's cells
        self.seconds_per_row: float | None = None  # measured on calls that prefill
        self.calls = 0  # llama_decode calls on the draft context
        self.guessed = 0  # draft tokens made

    def close(self) -> None:
        self.context.close()
        self.model.close()

    # -- keeping slots in step with the target -----------------------------------------------------
    def admit(self, slot: int, prompt: Sequence[int]) -> int:
        """A new sequence takes ``slot``: keep the longest prefix of its cells that the prompt shares
        (checked against what llama.cpp holds); returns the cells kept."""
        held = self.held[slot]
        keep = common_prefix(held, prompt)
        if self.context.cells(slot) != len(held):
            log.error("draft model: slot %d does not hold the recorded tokens; starting it afresh", slot)
            keep = 0
        self._trim(slot, keep)
        return keep

    def settle(self, slot: int, n_true: int) -> None:
        """The slot's sequence is now ``n_true`` tokens long: drop the cells of draft tokens past that
        (they were decoded to guess the next ones; the target rejected them or never saw them). The
        tokens before are the sequence's own, since a draft token is kept only when accepted."""
        if len(self.held[slot]) > n_true:
            self._trim(slot, n_true)

    def lacking(self, slot: int, n_prompt: int) -> int:
        """Prompt tokens the slot does not hold yet."""
        return max(0, n_prompt - len(self.held[slot]))

    def pending(self, slot: int, prompt: Sequence[int], decoded: Sequence[int], next_token: int) -> list[int]:
        """What the slot lacks of ``prompt + decoded + [next_token]`` (it holds a prefix of them)."""
        n, n_prompt = len(self.held[slot]), len(prompt)
        if n >= n_prompt:
            return [*decoded[n - n_prompt :], next_token]
        return [*prompt[n:], *decoded, next_token]

    def _trim(self, slot: int, n: int) -> None:
        try:
            self.context.keep(slot, n)
        except RuntimeError as exc:
            log.warning("draft model: %s; dropping the slot's cells", exc)
            self.context.forget(slot)
            n = 0
        del self.held[slot][n:]

    # -- drafting ------------------------------------------------------------------------------------
    def step(
        self, jobs: list[DraftJob], prompts: Sequence[tuple[int, Sequence[int]]], n_decoding: int
    ) -> None:
        """Draft for ``jobs`` (each gets at most ``limit`` tokens in ``tokens``) and prefill a chunk of
        each of ``prompts`` (slot, prompt: slots that lack part of their prompt and do not draft), within
        one step's budget beside ``n_decoding`` running streams. A job whose slot lacks more than the
        budget gets a chunk instead of a draft."""
        batch = self.context.batch
        batch.clear()
        budget = chunk_budget(
            n_decoding, batch.capacity, self.prefill_chunk, self.seconds_per_row, self.step_target_seconds
        )
        added: list[tuple[int, Sequence[int]]] = []  # (slot, tokens) this call decodes
        drafting: list[DraftJob] = []
        for job in jobs:
            extra = len(job.pending) - 1  # beyond the one row any decoding sequence costs
            if extra <= budget:
                budget -= extra
                job.row = batch.add_run(job.pending, len(self.held[job.slot]), job.slot, True)
                added.append((job.slot, job.pending))
                drafting.append(job)
            elif budget > 0:  # far behind (a long pause, a long prompt): catch up a chunk at a time
                chunk = job.pending[:budget]
                batch.add_run(chunk, len(self.held[job.slot]), job.slot, False)
                added.append((job.slot, chunk))
                budget = 0
        n_catching_up = batch.size - len(drafting)
        for slot, prompt in prompts:
            start = len(self.held[slot])
            take = min(len(prompt) - start, budget)
            if take <= 0:
                continue
            batch.add_run(prompt[start : start + take], start, slot, False)
            added.append((slot, prompt[start : start + take]))
            budget -= take
            n_catching_up += take
        if not batch.size:
            return
        seconds = self._decode(added)
        if seconds is None:
            return
        if n_catching_up:  # rows that prefill: what the budget is for
            self.seconds_per_row = track_cost(self.seconds_per_row, seconds / batch.size)
        while drafting:
            drafting = self._guess(drafting)
            if not drafting:
                return
            batch.clear()
            added = []
            for job in drafting:
                token = job.tokens[-1]
                job.row = batch.add(token, len(self.held[job.slot]), job.slot, True)
                added.append((job.slot, (token,)))
            if self._decode(added) is None:
                return

    def _guess(self, jobs: list[DraftJob]) -> list[DraftJob]:
        """Each job's next token: the draft model's most likely one, kept only when its probability is
        at least ``p_min``; returns the jobs that go on."""
        going = []
        eog, p_min = self.model.eog, self.p_min
        for job in jobs:
            logits = self.context.logits(job.row)
            token = int(logits.argmax())
            # its probability is 1 / sum(exp(l - l_max)): the draft model's own, untempered
            if p_min > 0.0 and float(np.exp(logits - logits[token]).sum()) * p_min > 1.0:
                continue
            job.tokens.append(token)
            self.guessed += 1
            if len(job.tokens) < job.limit and token not in eog:
                going.append(job)
        return going

    def _decode(self, added: list[tuple[int, Sequence[int]]]) -> float | None:
        """Decode the batch; on success record the tokens ``added`` to their slots and return the
        seconds it took. On failure the slots involved start afresh (which of their cells the call
        wrote is unknown) and this returns None: the step goes on with the drafts made so far."""
        self.context.batch.seal()
        started = time.perf_counter()
        code = self.context.decode()
        seconds = time.perf_counter() - started
        self.calls += 1
        if code != 0:
            log.warning("draft model: llama_decode failed with code %d; no more drafts this step", code)
            for slot, _ in added:
                self.context.forget(slot)
                self.held[slot].clear()
            return None
        for slot, tokens in added:
            self.held[slot].extend(tokens)
        return seconds
