"""The engine's public face: load a model, submit requests, cancel them, watch its state.

It knows nothing of HTTP. Admission happens here, on the event loop, before anything reaches the
scheduler thread: a plain counter, because only the event loop ever touches it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from concurrent.futures import Future
from pathlib import Path

import msgspec

from engine.chat import ChatTemplate
from engine.constraint import Grammars, Guide
from engine.drafter import Drafter, check_vocabulary
from engine.errors import OverloadedError, UnavailableError, ValidationError
from engine.handle import RequestHandle
from engine.limits import auto_slot_context
from engine.llama import CELL_TYPES, DETERMINISTIC, FAST, Context, Model, Shape
from engine.scheduler import AbortAll, Cancel, Probe, Scheduler, Sequence, Submit
from engine.speculation import NO_DRAFT, OFF, SOURCE_NAMES, SpecConfig
from engine.types import GenerationRequest

log = logging.getLogger("tokenspout.engine")


class EngineConfig(msgspec.Struct, frozen=True):
    model_path: str
    # KV cells in all; None: each slot gets the model's trained context, within kv_budget_mib
    n_ctx: int | None = None
    kv_budget_mib: int = 1024
    n_parallel: int = 4
    n_threads: int = 2
    n_gpu_layers: int = 0
    n_batch: int = 512
    # Batch-invariant logits (alone or batched, warm or cold cache) at some prefill speed: Q8_0
    # cells, micro-batches under 64 rows, no repacked weights. Otherwise the fastest shape.
    deterministic: bool = False
    n_ubatch: int | None = None  # None: the chosen shape's (512 fast, 32 deterministic)
    prefill_chunk: int = 512  # at most this many prompt tokens per step while other streams decode
    step_target_ms: float = 100.0  # and only as many as fit in a step of about this long
    max_concurrent_requests: int = 128
    cache_ram_mib: int = 256  # host RAM for saved sequence states (the prompt cache); 0: none
    spec: SpecConfig = OFF  # speculative decoding by prompt lookup and grammar-forced tokens (opt-in)
    # A smaller model of the same vocabulary that drafts for every request (with spec's lengths,
    # throttle and draft_p_min, whether spec.enabled or not); None: no draft model
    draft_model_path: str | None = None

    @property
    def shape(self) -> Shape:
        base = DETERMINISTIC if self.deterministic else FAST
        return base if self.n_ubatch is None else Shape(base.cell_type, self.n_ubatch, base.flash_attn)


class EngineStats(msgspec.Struct, frozen=True):
    admitted: int  # requests in flight: running + waiting for a slot (what the limit counts)
    running: int
    waiting: int
    free_slots: int
    steps: int
    prompt_tokens_cached: int  # prompt tokens whose cells were reused from the prompt cache
    prompt_tokens_computed: int  # prompt tokens prefilled
    prompt_cache_bytes: int  # host RAM held by saved sequence states
    prompt_cache_entries: int
    # KV cells held by running requests (prompt and generated tokens so far), and the cache's size:
    # what a load-aware router reads as KV-cache usage. Cells a finished request leaves behind for
    # reuse are not counted: a new request can take them.
    kv_cells_running: int
    kv_cells_total: int
    # Speculation, per draft source (SOURCE_NAMES but "none"): draft tokens decoded to be verified,
    # and those the model agreed with
    draft_tokens: dict[str, int] = {}
    draft_tokens_accepted: dict[str, int] = {}


# Weight types (llama.cpp file types) for which --deterministic was checked bit-identical on CPU
# (AVX-512): alone vs batched, warm vs cold prompt cache, a conversation's next turn continuing the
# cells of its answer vs a cold prefill (README: "Deterministic mode"). K-quants, IQ4_NL and F16
# weights failed some of these (a row's matmul rounds differently with the micro-batch's row count).
DETERMINISTIC_WEIGHTS = frozenset({"Q4_0", "Q4_1", "Q8_0"})


def _by_source(counts: list[int]) -> dict[str, int]:
    """Per-source counts (indexed by draft source) by source name, without NO_DRAFT's."""
    return {
        name: n
        for source, (name, n) in enumerate(zip(SOURCE_NAMES, counts, strict=True))
        if source != NO_DRAFT
    }


def determinism_note(deterministic: bool, weight_type: str) -> str:
    """What the start-up log says about bit-identity for a model with ``weight_type`` weights."""
    checked = ", ".join(sorted(DETERMINISTIC_WEIGHTS))
    if not deterministic:
        return (
            "fast mode: greedy text is the same streamed or not, but logits may change in the last bits "
            "with the batch and the prompt cache (--deterministic makes them bit-identical)"
        )
    verdict = "checked" if weight_type in DETERMINISTIC_WEIGHTS else "NOT checked: it may not hold"
    return (
        f"deterministic mode: bit-identical logits alone or batched, warm or cold cache; checked for "
        f"{checked} weights on CPU; this model's {weight_type} weights are {verdict}"
    )


class KvCells(msgspec.Struct, frozen=True):
    used: int  # held by running requests
    cached: int  # kept in free slots for the prompt cache


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        shape = config.shape
        self.model = Model(
            Path(config.model_path), n_gpu_layers=config.n_gpu_layers, repack=not config.deterministic
        )
        # The draft model is checked before any KV memory is allocated: a mismatch fails at once.
        draft_model = self._load_draft_model() if config.draft_model_path else None
        self.kv_bytes_per_token = self.model.kv_bytes_per_token(shape.cell_type)
        n_ctx = config.n_ctx
        if n_ctx is None:
            budget = config.kv_budget_mib << 20
            per_token = self.kv_bytes_per_token  # the draft model's cells share the budget
            if draft_model is not None:
                per_token += draft_model.kv_bytes_per_token(FAST.cell_type)
            per_slot = auto_slot_context(self.model.n_ctx_train, per_token, config.n_parallel, budget)
            n_ctx = per_slot * config.n_parallel
        self.context = Context(
            self.model,
            n_ctx=n_ctx,
            n_seq=config.n_parallel,
            n_batch=min(config.n_batch, n_ctx),
            shape=shape,
            n_threads=config.n_threads,
        )
        self.chat_template = ChatTemplate(
            self.model.metadata("tokenizer.chat_template"),
            bos_token=self.model.token_text(self.model.bos),
            eos_token=self.model.token_text(self.model.eos),
        )
        self.grammars = Grammars(self.model)
        self.model_id = self.model.path.stem  # what clients see in /v1/models, as llama-server does
        self.model_type = self.model.description
        self.spec = config.spec
        if self.spec.enabled and self.model.recurrent:
            self.spec = OFF
        if config.n_gpu_layers:  # a GPU computes rows nearly free, not in blocks (SpecConfig.row_block)
            self.spec = msgspec.structs.replace(self.spec, row_block=1)
        self.drafter = None if draft_model is None else self._drafter(draft_model)
        self._scheduler = Scheduler(
            self.context,
            config.n_parallel,
            config.prefill_chunk,
            config.step_target_ms / 1000,
            cache_ram_bytes=config.cache_ram_mib << 20,
            spec=self.spec,
            drafter=self.drafter,
        )
        self._admitted = 0
        self._ids = itertools.count(1)
        self._accepting = False
        self._refusal = "the engine is not running"

    def _load_draft_model(self) -> Model | None:
        """The draft model, checked to share the target's vocabulary; None where the target cannot
        speculate (describe_speculation says why)."""
        assert self.config.draft_model_path is not None
        if self.model.recurrent:
            return None
        model = Model(Path(self.config.draft_model_path), n_gpu_layers=self.config.n_gpu_layers)
        try:
            check_vocabulary(self.model, model)
            if model.recurrent:
                raise RuntimeError(
                    f"the draft model {model.path} is recurrent or hybrid: its state cannot drop rejected "
                    "draft tokens"
                )
        except BaseException:
            model.close()
            self.model.close()
            raise
        return model

    def _drafter(self, model: Model) -> Drafter:
        """The draft model in a context with the target's slots and cells per slot. Its cells are F16
        whatever the target's (a draft's rounding does not matter, only its speed), and its weights may
        be repacked even with --deterministic."""
        try:
            context = Context(
                model,
                n_ctx=self.context.n_ctx,
                n_seq=self.config.n_parallel,
                n_batch=self.context.n_batch,
                shape=FAST,
                n_threads=self.config.n_threads,
            )
        except RuntimeError as exc:
            model.close()
            raise RuntimeError(f"the draft model's context: {exc}") from exc
        step_target = self.config.step_target_ms / 1000
        return Drafter(context, self.spec.draft_p_min, self.config.prefill_chunk, step_target)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the scheduler thread; call from the event loop that will consume the events."""
        self._scheduler.start(asyncio.get_running_loop())
        self._accepting = True

    def stop_admitting(self, reason: str = "the server is shutting down") -> None:
        """Refuse new requests (UnavailableError) while those in flight go on: the start of a drain."""
        self._accepting = False
        self._refusal = reason

    def abort_all(self, reason: str) -> None:
        """End every request in flight with UnavailableError(reason), at the next step."""
        self._scheduler.commands.put(AbortAll(UnavailableError(reason)))

    def close(self) -> None:
        self._accepting = False
        self._scheduler.stop()
        if self.drafter is not None:
            self.drafter.close()
        self.context.close()
        self.model.close()

    @property
    def healthy(self) -> bool:
        return self._accepting and self._scheduler.alive

    def describe_context(self) -> str:
        """One line for the start-up log: the context's size, shape and KV memory."""
        c, shape = self.context, self.context.shape
        computed = c.n_ctx * self.kv_bytes_per_token / (1 << 20)
        allocated = c.kv_report.removeprefix("size = ").strip() if c.kv_report else "(not reported)"
        return (
            f"context: {c.n_ctx_slot} tokens per slot (model trained for {self.model.n_ctx_train}), "
            f"{c.n_ctx} KV cells in all, {CELL_TYPES[shape.cell_type][0]} cells, micro-batches of "
            f"{c.n_ubatch}, {'deterministic' if self.config.deterministic else 'fast'} mode; "
            f"KV memory: {computed:.1f} MiB computed from the model's shape; llama.cpp's log says it "
            f"allocated {allocated}"
        )

    def describe_determinism(self) -> str:
        """One line for the start-up log: what --deterministic guarantees for this model."""
        return determinism_note(self.config.deterministic, self.model.weight_type)

    def describe_speculation(self) -> str:
        """One line for the start-up log: what speculative decoding does here."""
        spec, drafter = self.spec, self.drafter
        wanted = self.config.spec.enabled or self.config.draft_model_path
        if not spec.enabled and drafter is None:
            if wanted:
                return (
                    "speculative decoding: off: this model's state cannot drop rejected draft tokens "
                    "(recurrent or hybrid model)"
                )
            return "speculative decoding: turned off (--no-spec, no --draft-model)"
        sources = []
        if spec.enabled:
            sources.append("grammar-forced tokens")
            if spec.pool_tokens:
                sources.append(
                    f"earlier answers (a pool shared by all requests: {spec.pool_tokens} tokens, "
                    f"{spec.pool_ngram}-token keys)"
                )
            sources.append(f"prompt lookup ({spec.ngram_min}- to {spec.ngram_max}-token suffixes)")
        if drafter is not None:
            c = drafter.context
            kv = c.n_ctx * drafter.model.kv_bytes_per_token(c.shape.cell_type) / (1 << 20)
            sources.append(
                f"the draft model {drafter.model.path.name} ({drafter.model.description}; same vocabulary, "
                f"checked; its own context of {c.n_ctx_slot} tokens per slot, "
                f"{CELL_TYPES[c.shape.cell_type][0]} cells, {kv:.1f} MiB KV; greedy guesses of probability "
                f">= {spec.draft_p_min})"
            )
        blocks = f", draft rows cut to whole blocks of {spec.row_block}" if spec.row_block > 1 else ""
        return (
            f"speculative decoding: on; drafts from {', then '.join(sources)}; up to {spec.draft_max} "
            f"tokens a step per sequence, verified in the batch (lossless; adaptive per sequence{blocks})"
        )

    @property
    def n_ctx_slot(self) -> int:
        """KV cells of one slot: the most tokens (prompt and generated) one request can hold."""
        return self.context.n_ctx_slot

    # -- requests ----------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return self.model.tokenize(text, add_special=add_special)

    def tokenize_tail(self, text: str, n: int) -> list[int]:
        """The last ``n`` tokens of ``tokenize(text)``, without tokenizing all of a long text."""
        return self.model.tokenize_tail(text, n)

    def token_spans(self, text: str) -> list[tuple[int, str, int, int]]:
        return self.model.token_spans(text)

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Admit ``request`` or raise at once: OverloadedError past the limit, UnavailableError when
        the engine is not running, ValidationError when the request cannot fit the context or its
        constraint cannot be enforced."""
        if not self.healthy:
            raise UnavailableError(self._refusal)
        if self._admitted >= self.config.max_concurrent_requests:
            raise OverloadedError(self.config.max_concurrent_requests)
        if not request.prompt_tokens:
            raise ValidationError("the prompt is empty", "prompt")
        if len(request.prompt_tokens) + request.max_tokens > self.n_ctx_slot:
            raise ValidationError("the prompt and max_tokens do not fit a slot's context", "max_tokens")
        guide = None
        if request.constraint is not None:
            matcher = self.grammars.compile(request.constraint)
            guide = Guide(matcher, self.model.n_vocab, self._spell, request.constraint.field)
        handle = RequestHandle(next(self._ids), self._cancel, self._ended)
        self._admitted += 1
        self._scheduler.commands.put(Submit(Sequence(request, handle, guide)))
        return handle

    def _spell(self, text: str) -> list[int]:
        """``text`` in ordinary tokens: special tokens' texts are not read as those tokens."""
        return self.model.tokenize(text, add_special=False, parse_special=False)

    def _cancel(self, handle: RequestHandle) -> None:
        self._scheduler.commands.put(Cancel(handle))

    def _ended(self, handle: RequestHandle) -> None:
        self._admitted -= 1

    # -- observation -------------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        """A snapshot read from the event loop without stopping the scheduler: each figure is exact at
        some instant of the current step, which is all a gauge needs."""
        s = self._scheduler
        running = tuple(s.running)  # one atomic copy; the scheduler thread may change the list meanwhile
        return EngineStats(
            admitted=self._admitted,
            running=len(running),
            waiting=len(s.waiting),
            free_slots=len(s.free_slots),
            steps=s.steps,
            prompt_tokens_cached=s.prompt_tokens_cached,
            prompt_tokens_computed=s.prompt_tokens_computed,
            prompt_cache_bytes=s.ram.bytes,
            prompt_cache_entries=len(s.ram.entries),
            kv_cells_running=sum(seq.n_cached for seq in running),
            kv_cells_total=self.context.n_ctx,
            draft_tokens=_by_source(s.draft_tokens),
            draft_tokens_accepted=_by_source(s.draft_accepted),
        )

    async def kv_cells(self) -> KvCells:
        """KV cells in use right now, as llama.cpp counts them, read by the scheduler thread between
        two steps (none when the scheduler is not running: nothing runs then, and its cells are
        not to be trusted)."""
        if not self._scheduler.alive:
            return KvCells(0, 0)
        result: Future[object] = Future()
        self._scheduler.commands.put(Probe(self._scheduler.kv_cells, result))
        cells = await asyncio.wrap_future(result)
        assert isinstance(cells, tuple)
        return KvCells(*cells)

    async def kv_cells_used(self) -> int:
        """KV cells held by running requests (cells kept for the prompt cache are not counted)."""
        return (await self.kv_cells()).used
