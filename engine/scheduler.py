"""The scheduler thread: it alone owns the llama context, the KV cache and the queue of requests.

Each step packs the next token of every running sequence, plus prefill chunks of newly admitted
prompts, into one ``llama_decode``; samples each sequence that produced logits; and hands the step's
events to the event loop in a single ``call_soon_threadsafe``. Submit and cancel arrive through a
thread-safe queue, so nothing in here takes a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

import msgspec
import numpy as np
import numpy.typing as npt

from engine.batching import chunk_budget, draft_room, plan_prefill, prefill_left, track_cost
from engine.constraint import Guide
from engine.drafter import Drafter, DraftJob
from engine.errors import GenerationError
from engine.handle import RequestHandle, deliver
from engine.llama import Context
from engine.prompt_cache import RamCache, SlotView, place
from engine.sampling import Sampler, log_softmax, top_tokens
from engine.speculation import (
    FORCED,
    LOOKUP,
    MODEL,
    NO_DRAFT,
    OFF,
    POOL,
    SOURCE_NAMES,
    NgramPool,
    PromptLookup,
    SpecConfig,
    Throttle,
    share_rows,
    whole_blocks,
)
from engine.text import TextStream
from engine.thinking import ANSWER, MARKER, Thought
from engine.types import (
    ErrorEvent,
    Event,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    Timing,
    TokenEvent,
    TopLogprob,
    Usage,
)

log = logging.getLogger("tokenspout.scheduler")

_NO_DRAFT: list[int] = []  # shared, never written: a step without a draft allocates nothing


class Sequence:
    """Scheduler-side state of one request. Created on the event loop, then touched only here."""

    __slots__ = (
        "admitted",
        "cancelled",
        "decoded",
        "draft",
        "first_token",
        "guide",
        "handle",
        "lookup",
        "model_throttle",
        "n_cached",
        "n_generated",
        "n_reused",
        "next_token",
        "pool_throttle",
        "prompt",
        "request",
        "row",
        "sampler",
        "slot",
        "source",
        "step_tokens",
        "submitted",
        "text",
        "thought",
        "throttle",
        "wanted",
    )

    def __init__(self, request: GenerationRequest, handle: RequestHandle, guide: Guide | None = None) -> None:
        self.request = request
        self.handle = handle
        self.guide = guide  # where the output is in its grammar, when it is constrained
        self.prompt = request.prompt_tokens
        self.slot = -1
        self.n_cached = 0  # tokens of this sequence in the KV cache = position of the next one
        self.n_reused = 0  # prompt tokens whose cells came from the prompt cache
        self.decoded: list[int] = []  # generated tokens whose cells are in the KV cache
        self.n_generated = 0
        self.next_token = -1  # sampled last step, decoded this step
        self.row = -1  # batch row whose logits to sample this step, -1 for none
        self.step_tokens = 0  # tokens this sequence put in the current batch
        self.sampler: Sampler | None = None
        # Speculation: the tokens guessed to follow next_token, decoded beside it this step, and
        # where they came from (engine/speculation.py: NO_DRAFT, FORCED, LOOKUP, MODEL)
        self.draft: list[int] = _NO_DRAFT
        self.source = NO_DRAFT
        self.wanted = 0  # draft tokens asked of the draft model this step
        self.lookup: PromptLookup | None = None  # made on the first decode step, when speculating
        self.throttle: Throttle | None = None  # prompt lookup's
        self.pool_throttle: Throttle | None = None  # the shared pool's
        self.model_throttle: Throttle | None = None  # the draft model's
        self.text = TextStream(request.stop)
        self.thought = Thought(request.thinking) if request.thinking is not None else None
        self.cancelled = False
        self.submitted = time.perf_counter()
        self.admitted = self.first_token = 0.0

    @property
    def prefilled(self) -> bool:
        return self.n_cached >= len(self.prompt)


def _throttle_of(seq: Sequence) -> Throttle | None:
    """The throttle of the source of ``seq``'s draft this step (none for grammar-forced tokens)."""
    if seq.source == LOOKUP:
        return seq.throttle
    if seq.source == POOL:
        return seq.pool_throttle
    return seq.model_throttle if seq.source == MODEL else None


class Submit(msgspec.Struct):
    sequence: Sequence


class Cancel(msgspec.Struct):
    handle: RequestHandle


class Probe(msgspec.Struct):
    """Run ``query`` on the scheduler thread (the only one allowed to touch the context)."""

    query: Callable[[], object]
    result: Future[object]


class AbortAll(msgspec.Struct):
    """End every request, running or waiting, with ``error``."""

    error: BaseException


class Stop(msgspec.Struct):
    pass


Command = Submit | Cancel | Probe | AbortAll | Stop


class Scheduler:
    def __init__(
        self,
        context: Context,
        n_slots: int,
        prefill_chunk: int,
        step_target_seconds: float,
        cache_ram_bytes: int = 0,
        spec: SpecConfig = OFF,
        drafter: Drafter | None = None,
    ) -> None:
        self.context = context
        self.spec = spec  # grammar-forced, pool and prompt-lookup drafts when enabled
        self.drafter = drafter  # drafts from a draft model, when one is loaded
        # what earlier requests wrote, for drafts across requests (with prompt lookup, when enabled)
        sharing = spec.enabled and spec.pool_tokens > 0
        self.pool = NgramPool(spec.pool_ngram, spec.pool_tokens) if sharing else None
        self.model = context.model
        self.prefill_chunk = prefill_chunk
        self.step_target_seconds = step_target_seconds
        self.seconds_per_prompt_token: float | None = None  # measured on steps that prefill
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.slots: list[Sequence | None] = [None] * n_slots  # the running ones by slot = KV stream
        self.free_slots = list(range(n_slots))
        # The prompt cache: the exact tokens each free slot's stream holds, when it was last used
        # (a tick of ``_clock``), and sequence states saved to host RAM.
        self.slot_tokens: list[tuple[int, ...]] = [()] * n_slots
        self.slot_used = [0] * n_slots
        self.ram = RamCache(cache_ram_bytes)
        self._clock = 0
        self.prompt_tokens_cached = 0
        self.prompt_tokens_computed = 0
        self.steps = 0
        # Per draft source (indexed by it): draft tokens decoded for verification, and those of them
        # the model agreed with (each one a token gained)
        self.draft_tokens = [0] * len(SOURCE_NAMES)
        self.draft_accepted = [0] * len(SOURCE_NAMES)
        self._prompt_rows = 0  # prompt and draft rows in the current step's batch
        self._outbox: list[tuple[RequestHandle, Event]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.failure: BaseException | None = None

    # -- called from the event loop ---------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="tokenspout-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.commands.put(Stop())
        if self._thread is not None:
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.failure is None

    # -- the scheduler thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                idle = not (self.running or self.waiting)
                if idle:
                    self._flush()  # no step will hand them over: before waiting for work
                self._take_commands(block=idle)
                self._admit()
                if self.running:
                    self._step()
            self._flush()
        except BaseException as exc:  # the engine is dead: say so to everyone instead of hanging them
            log.exception("scheduler thread crashed")
            self.failure = exc
            for seq in [*self.running, *self.waiting]:
                self._emit(seq, ErrorEvent(GenerationError(f"the engine stopped: {exc}")))
            self._flush()
        finally:
            for seq in self.running:
                self._release(seq)

    def _take_commands(self, block: bool) -> None:
        commands = self.commands
        if block:
            self._obey(commands.get())
        while not commands.empty():
            self._obey(commands.get_nowait())

    def _obey(self, command: Command) -> None:
        if isinstance(command, Submit):
            self.waiting.append(command.sequence)
        elif isinstance(command, Cancel):
            self._cancel(command.handle)
        elif isinstance(command, AbortAll):
            for seq in [*self.running]:
                self._fail(seq, command.error)
            while self.waiting:
                self._emit(self.waiting.popleft(), ErrorEvent(command.error))
        elif isinstance(command, Probe):
            try:
                command.result.set_result(command.query())
            except Exception as exc:
                command.result.set_exception(exc)
        else:
            self._stopping = True

    def _cancel(self, handle: RequestHandle) -> None:
        for seq in self.running:
            if seq.handle is handle:
                seq.cancelled = True
                self.running.remove(seq)
                self._release(seq)
                return
        for seq in self.waiting:
            if seq.handle is handle:
                seq.cancelled = True
                self.waiting.remove(seq)
                return

    def _admit(self) -> None:
        while self.waiting and self.free_slots:
            seq = self.waiting.popleft()
            self._place(seq)
            self.slots[seq.slot] = seq
            seq.admitted = time.perf_counter()
            seq.sampler = Sampler(seq.request.sampling, self.model.n_vocab)
            if self.spec.enabled:
                seq.throttle = Throttle(self.spec)
                seq.pool_throttle = Throttle(self.spec, pool=True) if self.pool is not None else None
            if self.drafter is not None:
                seq.model_throttle = Throttle(self.spec)
                self.drafter.admit(seq.slot, seq.prompt)
            self.running.append(seq)

    def _release(self, seq: Sequence) -> None:
        self._park(seq)
        if self.pool is not None and seq.lookup is not None:  # what it wrote, for later requests' drafts
            self.pool.add(seq.lookup.tokens, len(seq.prompt))
        if self.drafter is not None:  # its draft slot keeps the sequence's tokens, for the next prompt
            self.drafter.settle(seq.slot, len(seq.prompt) + len(seq.decoded))
        self.slots[seq.slot] = None
        self.free_slots.append(seq.slot)
        seq.slot = -1
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None
        seq.guide = None
        seq.lookup = None

    def _step(self) -> None:
        batch = self._fill_batch()
        # The last step's events go to the loop now, not straight after sampling: the loop thread
        # then wakes while llama_decode has let go of the GIL, instead of contending for it (and for
        # the core) between two decodes, where every microsecond is on the critical path.
        self._flush()
        started = time.perf_counter()
        code = self.context.decode()
        if self._prompt_rows:  # prompt or draft rows in it: a step the cost model is for
            self._measure(batch, time.perf_counter() - started)
        if code != 0:
            # Admission keeps every request within its slot's cells, so this is llama.cpp failing
            # (out of memory, a backend error): fail this batch's requests, keep serving the rest.
            for seq in batch:
                seq.n_cached = 0  # which of its cells the failed call wrote is unknown: keep none
                self._fail(seq, f"llama_decode failed with code {code}")
            return
        self.steps += 1
        for seq in batch:
            if seq.prefilled:  # it decoded the token it sampled last step (and maybe a draft after it)
                seq.decoded.append(seq.next_token)
                seq.n_cached += 1
                if seq.draft:
                    self._verify(seq)
                else:
                    self._sample(seq)
            else:
                seq.n_cached += seq.step_tokens
                if seq.row >= 0:
                    self._sample(seq)

    def _measure(self, batch: list[Sequence], seconds: float) -> None:
        """Learn what a prompt token costs from the steps the budget is for: decode plus prefill
        (draft rows count as the prompt-like rows they are)."""
        if self.context.batch.size > self._prompt_rows:  # someone was decoding beside the prompts
            cost = seconds / self.context.batch.size
            self.seconds_per_prompt_token = track_cost(self.seconds_per_prompt_token, cost)

    def _fill_batch(self) -> list[Sequence]:
        """Write this step's tokens into the batch buffer; returns the sequences in it, by slot.

        Prefill budget goes to the oldest prompts first, but rows are written in slot order: llama.cpp
        cuts a batch into micro-batches of consecutive slots (one KV stream each) in the order they
        come, so slot order keeps a step to as few micro-batches as possible (one, when all decode).
        """
        n_decoding = n_plain = sum(seq.prefilled for seq in self.running)
        if n_decoding and (self.spec.enabled or self.drafter is not None):
            n_decoding += self._plan_drafts()
        elif self.drafter is not None:  # nobody decodes: the draft model may still prefill prompts
            self._run_drafter([], 0)
        prefilling = [seq for seq in self.running if not seq.prefilled]
        if prefilling:
            self._plan_prefill(prefilling, n_decoding)
        buffer = self.context.batch
        buffer.clear()
        members: list[Sequence] = []
        for seq in filter(None, self.slots):
            if seq.prefilled:
                seq.row = buffer.add(seq.next_token, seq.n_cached, seq.slot, True)
                if seq.draft:  # verification rows: like prompt rows, but each with its logits
                    buffer.add_draft(seq.draft, seq.n_cached + 1, seq.slot)
                seq.step_tokens = 1 + len(seq.draft)
            elif seq.step_tokens:
                stop = seq.n_cached + seq.step_tokens
                complete = stop == len(seq.prompt)
                last_row = buffer.add_span(seq.prompt, seq.n_cached, stop, seq.slot, complete)
                seq.row = last_row if complete else -1
            else:
                continue
            members.append(seq)
        # Prompt and draft rows: a step with either teaches the cost model (a verification step too, or
        # one slow prefill step beside a stream would starve the drafts until the next prefill).
        self._prompt_rows = buffer.size - n_plain
        buffer.seal()
        return members

    def _plan_prefill(self, prefilling: list[Sequence], n_decoding: int) -> None:
        """Set ``step_tokens`` of each prompt being prefilled, oldest first, within this step's budget
        (what ``n_decoding`` rows of decoding and drafts leave of it)."""
        first = prefilling[0]
        budget = chunk_budget(
            n_decoding,
            self.context.batch.capacity,
            self.prefill_chunk,
            self.seconds_per_prompt_token,
            self.step_target_seconds,
            fresh_prompt=first.n_cached == first.n_reused,
        )
        plan = plan_prefill([prefill_left(len(s.prompt), s.n_cached) for s in prefilling], budget)
        for seq, take in zip(prefilling, plan, strict=True):
            seq.step_tokens = take

    # -- speculation (policy in engine/speculation.py; this only carries it out) -------------------
    def _plan_drafts(self) -> int:
        """Set ``draft`` of each decoding sequence for this step; returns the draft rows in all.

        What the grammar forces comes first (it is certain), then the pool of earlier answers, then
        prompt lookup, then the draft model, each as long as the sequence's throttle for it allows.
        The step's rows are shared out (alone, cut to whole blocks of ``row_block``) before the draft
        model runs, so that it never guesses tokens that would not be verified.
        """
        decoding = [seq for seq in self.running if seq.prefilled]
        wanted = [len(self._cheap_draft(seq, len(decoding))) or seq.wanted for seq in decoding]
        room = draft_room(
            len(decoding),
            self.context.batch.capacity,
            self.seconds_per_prompt_token,
            self.step_target_seconds,
            alone=len(self.running) == 1,
        )
        jobs: list[tuple[Sequence, DraftJob]] = []
        granted = share_rows(wanted, room)
        if len(decoding) == 1:  # alone a row past a block costs about the step it may save; beside
            # others only a token of theirs (A/B at 4 streams: cutting there gained nothing)
            granted[0] = whole_blocks(granted[0], self.spec.row_block)
        for seq, take in zip(decoding, granted, strict=True):
            if seq.source == MODEL:
                if take:
                    assert self.drafter is not None
                    pending = self.drafter.pending(seq.slot, seq.prompt, seq.decoded, seq.next_token)
                    jobs.append((seq, DraftJob(seq.slot, pending, take)))
            elif take < len(seq.draft):
                seq.draft = seq.draft[:take]
        if self.drafter is not None:
            self._run_drafter(jobs, len(decoding))
        return sum(len(seq.draft) for seq in decoding)

    def _cheap_draft(self, seq: Sequence, n_decoding: int) -> list[int]:
        """Set and return ``seq.draft`` from what costs no model: the grammar's forced tokens, else the
        shared pool or prompt lookup; else, when the draft model's throttle allows, ask it for
        ``seq.wanted`` tokens.
        No draft reaches past ``max_tokens``: its tokens could never be emitted (and ``submit`` checked
        that the prompt and ``max_tokens`` fit the slot, so neither can its cells)."""
        seq.draft, seq.source, seq.wanted = _NO_DRAFT, NO_DRAFT, 0
        limit = seq.request.max_tokens - seq.n_generated - 1
        if limit <= 0:
            return _NO_DRAFT
        if self.spec.enabled:
            guide = seq.guide if seq.thought is None or seq.thought.answering else None
            if guide is not None:
                seq.draft = guide.forced(min(limit, self.spec.draft_max))
                if seq.draft:
                    seq.source = FORCED
                    return seq.draft
            if seq.lookup is None:  # the first decode step: index the prompt (and token 1)
                history = (*seq.prompt, *seq.decoded, seq.next_token)
                seq.lookup = PromptLookup(history, self.spec.ngram_min, self.spec.ngram_max)
            draft = self._guess(seq, n_decoding, limit)
            if guide is not None and draft:
                # what the grammar refuses could never be accepted: a quote copied into a JSON string
                # would otherwise draft on past its end, into the prompt's template tokens
                draft = draft[: guide.takes(draft)]
            if draft:
                seq.draft = draft
                return draft
            seq.source = NO_DRAFT
        limit = min(limit, self.spec.draft_max)
        if seq.model_throttle is not None:
            seq.wanted = min(seq.model_throttle.allowance(n_decoding), limit)
            if seq.wanted > 0:
                seq.source = MODEL
        return _NO_DRAFT

    def _guess(self, seq: Sequence, n_decoding: int, limit: int) -> list[int]:
        """A draft from the shared pool (its long match, where there is one, is the surer guess), else
        from prompt lookup, each as long as its throttle allows; sets ``seq.source``."""
        assert seq.lookup is not None
        history = seq.lookup.tokens
        if self.pool is not None and seq.pool_throttle is not None:
            allowed = min(seq.pool_throttle.allowance(n_decoding), limit)
            if allowed and (draft := self.pool.draft(history, allowed)):
                seq.source = POOL
                return draft
        if (throttle := seq.throttle) is not None:
            sure = throttle.gated(n_decoding)  # before allowance, which counts a pause down
            allowed = min(throttle.length if sure else throttle.allowance(n_decoding), limit)
            if allowed and (draft := seq.lookup.draft(allowed, sure=sure)):
                seq.source = LOOKUP
                return draft
        return _NO_DRAFT

    def _run_drafter(self, jobs: list[tuple[Sequence, DraftJob]], n_decoding: int) -> None:
        """Let the draft model draft for ``jobs`` and prefill the prompts its slots lack."""
        assert self.drafter is not None
        drafter, drafting = self.drafter, {seq.slot for seq, _ in jobs}
        prompts = [
            (seq.slot, seq.prompt)
            for seq in self.running
            if seq.slot not in drafting and drafter.lacking(seq.slot, len(seq.prompt))
        ]
        if not (jobs or prompts):
            return
        # The last step's events go out now, while the draft model's llama_decode lets go of the GIL
        # (as _step does before the target's decode), rather than after all of its calls.
        self._flush()
        drafter.step([job for _, job in jobs], prompts, n_decoding)
        for seq, job in jobs:
            if job.tokens:
                seq.draft = job.tokens
            elif seq.model_throttle is not None:  # a call spent for nothing (unsure, or not caught up):
                seq.model_throttle.record(1, 0)  # a miss, so that drafting pauses where it keeps failing

    def _verify(self, seq: Sequence) -> None:
        """Sample the rows of ``next_token`` and its draft in order, emitting each token as the plain
        loop would (same sampler calls, same grammar steps, same stop checks), while the sample equals
        the draft token decoded after it; the first that differs is the correction, emitted in its
        place. If all agree, the last row gives one more token. Cells of rejected draft tokens are
        removed, so that ``n_cached`` and ``decoded`` say exactly what the slot holds."""
        draft, seq.draft = seq.draft, _NO_DRAFT
        accepted = 0
        for expected in draft:
            if self._sample(seq) != expected:  # a correction, or the sequence ended (-1)
                break
            seq.decoded.append(expected)  # its cell, decoded this step, is where the plain loop has it
            seq.n_cached += 1
            seq.row += 1
            accepted += 1
        else:
            self._sample(seq)
        self.draft_tokens[seq.source] += len(draft)
        self.draft_accepted[seq.source] += accepted
        if (throttle := _throttle_of(seq)) is not None:
            throttle.record(len(draft), accepted)
        if seq.slot < 0:  # it ended (parking trimmed its cells, in both contexts)
            return
        if seq.source == MODEL:
            assert self.drafter is not None
            self.drafter.settle(seq.slot, seq.n_cached)
        if accepted < len(draft):
            try:
                self.context.keep(seq.slot, seq.n_cached)
            except RuntimeError as exc:
                self._fail(seq, GenerationError(f"rejected draft cells could not be removed: {exc}"))

    def _sample(self, seq: Sequence) -> int:
        """Sample row ``seq.row`` and emit the token; returns it, or -1 if the sequence ended."""
        request = seq.request
        try:
            token, logprob, top = self._pick(seq)
        except GenerationError as exc:
            self._fail(seq, exc)
            return -1
        seq.n_generated += 1
        if seq.n_generated == 1:
            seq.first_token = time.perf_counter()
        thought = seq.thought
        part = ANSWER if thought is None or thought.answering else thought.advance(token)
        reasoning = part != ANSWER
        if token in self.model.eog and not request.ignore_eos:
            last = TokenEvent(token, seq.text.flush(), logprob, True, top, reasoning)
            self._finish(seq, last, FinishReason.EOS)
            return -1
        if part == MARKER:  # shows as nothing; the thought's held-back text goes out with it
            text = seq.text.flush()
        else:
            piece = self.model.special_piece(token) if request.special_text else self.model.piece(token)
            text = seq.text.push(piece)
            if seq.text.stopped:
                last = TokenEvent(token, text, logprob, False, top, reasoning)
                self._finish(seq, last, FinishReason.STOP_SEQUENCE, seq.text.matched)
                return -1
        if seq.guide is not None and seq.guide.complete:  # the grammar allows nothing more: done
            last = TokenEvent(token, text + seq.text.flush(), logprob, False, top)
            self._finish(seq, last, FinishReason.EOS)
            return -1
        if seq.n_generated >= request.max_tokens:  # submit() made sure max_tokens fits the slot
            last = TokenEvent(token, text + seq.text.flush(), logprob, False, top, reasoning)
            self._finish(seq, last, FinishReason.LENGTH)
            return -1
        self._emit(seq, TokenEvent(token, text, logprob, False, top, reasoning))
        seq.next_token = token
        if seq.lookup is not None:
            seq.lookup.append(token)
        return token

    def _pick(self, seq: Sequence) -> tuple[int, float | None, tuple[TopLogprob, ...] | None]:
        """Sample the next token, within the grammar if there is one; with the model's own (unmasked)
        log-probabilities when the request asks for them."""
        request, thought = seq.request, seq.thought
        logits = self.context.logits(seq.row)
        everything = log_softmax(logits) if request.logprobs or request.top_logprobs else None
        if thought is None or thought.answering:
            token = self._draw(seq, logits, seq.guide)
        else:
            token = self._draw_in_thought(seq, logits, thought)
        if everything is None:
            return token, None, None
        top = None
        if request.top_logprobs:
            top = tuple(
                TopLogprob(t, self.model.token_text(t), lp)
                for t, lp in top_tokens(everything, request.top_logprobs)
            )
        return token, float(everything[token]), top

    def _draw(self, seq: Sequence, logits: npt.NDArray[np.float32], guide: Guide | None) -> int:
        """Sample a token, within the grammar if there is one."""
        assert seq.sampler is not None
        sampler, ctx, row = seq.sampler, self.context.ptr, seq.row
        if guide is not None and seq.request.sampling.penalized:
            guide.restrict(logits)  # penalty stages remember what they are shown: mask first
        token = sampler.sample(ctx, row, logits)
        if guide is not None:
            if not guide.allows(token):
                token = guide.resample(logits, lambda: sampler.sample(ctx, row, logits))
            guide.accept(token)
        return token

    def _draw_in_thought(self, seq: Sequence, logits: npt.NDArray[np.float32], thought: Thought) -> int:
        """Before or inside the thought: the budget may close it, and the grammar (if any) judges
        only a first token that does not open a thought."""
        assert seq.sampler is not None
        sampler, ctx, row, guide = seq.sampler, self.context.ptr, seq.row, seq.guide
        token = thought.forced()
        if token >= 0:
            sampler.accept(token)
            return token
        token = sampler.sample(ctx, row, logits)
        if token in self.model.eog and not seq.request.ignore_eos:
            closing = thought.instead_of_end_of_turn(guide is not None)
            return closing if closing >= 0 else token
        if guide is not None and thought.guided(token):
            if not guide.allows(token):
                token = guide.resample(logits, lambda: sampler.sample(ctx, row, logits))
            guide.accept(token)
        return token

    def _finish(self, seq: Sequence, last: TokenEvent, reason: FinishReason, stop: str | None = None) -> None:
        now = time.perf_counter()
        timing = Timing(seq.admitted - seq.submitted, seq.first_token - seq.submitted, now - seq.submitted)
        thought = seq.thought.tokens if seq.thought is not None else 0
        usage = Usage(len(seq.prompt), seq.n_generated, seq.n_reused, thought)
        self._emit(seq, FinishEvent(last, reason, usage, timing, stop))
        self.running.remove(seq)
        self._release(seq)

    def _fail(self, seq: Sequence, error: str | BaseException) -> None:
        log.warning("request %d failed: %s", seq.handle.request_id, error)
        self._emit(seq, ErrorEvent(GenerationError(error) if isinstance(error, str) else error))
        self.running.remove(seq)
        self._release(seq)

    # -- the prompt cache (policy in engine/prompt_cache.py; this only carries it out) ----------------
    def _place(self, seq: Sequence) -> None:
        """Give ``seq`` the free slot the policy chooses, with the cells of its prompt it may keep."""
        self._clock += 1
        views = [SlotView(s, self.slot_tokens[s], self.slot_used[s]) for s in self.free_slots]
        decision = place(seq.prompt, views, self.ram.views())
        slot = decision.slot
        self.free_slots.remove(slot)
        keep = decision.keep
        # Taken before saving: the save may evict the very entry to restore, to make room for itself.
        entry = None if decision.restore is None else self.ram.take(decision.restore, self._clock)
        try:
            if decision.save:
                self._save(slot)
            if entry is not None:
                self.slot_tokens[slot] = ()  # the stream is being overwritten: trust none of it
                self.context.restore(slot, entry.data)
                self.slot_tokens[slot] = entry.tokens
            keep = self._verified(slot, seq.prompt, keep)
            self.context.keep(slot, keep)
        except RuntimeError as exc:
            log.warning("prompt cache: %s; prefilling the whole prompt", exc)
            self.context.forget(slot)
            keep = 0
        self.slot_tokens[slot] = ()  # while it runs, the sequence itself says what the stream holds
        seq.slot = slot
        seq.n_cached = seq.n_reused = keep
        self.prompt_tokens_cached += keep
        self.prompt_tokens_computed += len(seq.prompt) - keep

    def _verified(self, slot: int, prompt: tuple[int, ...], keep: int) -> int:
        """``keep``, once checked against the stream: it must hold exactly the tokens recorded for it,
        and they must begin with the prompt's first ``keep`` tokens. Otherwise 0: a request never
        continues cells that are not its own prefix."""
        held = self.slot_tokens[slot]
        if keep == 0:
            return 0
        if self.context.cells(slot) != len(held) or held[:keep] != prompt[:keep]:
            log.error("prompt cache: slot %d does not hold the recorded tokens; not reusing it", slot)
            return 0
        return keep

    def _save(self, slot: int) -> None:
        """Copy a free slot's cells to the RAM cache (if they fit its budget)."""
        tokens = self.slot_tokens[slot]
        if self.context.cells(slot) != len(tokens) or not self.ram.fits(self.context.state_size(slot)):
            return
        self.ram.add(tokens, self.context.save(slot), self._clock)

    def _park(self, seq: Sequence) -> None:
        """A sequence leaves its slot: keep the cells it certainly wrote, and remember their tokens."""
        held = (seq.prompt + tuple(seq.decoded))[: seq.n_cached]
        try:
            self.context.keep(seq.slot, len(held))
        except RuntimeError as exc:
            log.warning("prompt cache: %s; dropping the slot's cells", exc)
            self.context.forget(seq.slot)
            held = ()
        self.slot_tokens[seq.slot] = held
        self._clock += 1
        self.slot_used[seq.slot] = self._clock

    def kv_cells(self) -> tuple[int, int]:
        """(cells held by running requests, cells kept for the prompt cache), as llama.cpp counts
        them. Scheduler thread only."""
        running = cached = 0
        for slot, seq in enumerate(self.slots):
            n = self.context.cells(slot)
            if seq is None:
                cached += n
            else:
                running += n
        return running, cached

    def _emit(self, seq: Sequence, event: Event) -> None:
        if not seq.cancelled:
            self._outbox.append((seq.handle, event))

    def _flush(self) -> None:
        if self._outbox:
            assert self._loop is not None
            outbox, self._outbox = self._outbox, []
            with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to read them
                self._loop.call_soon_threadsafe(deliver, outbox)
