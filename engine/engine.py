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

from engine.chat import ChatMessage, ChatTemplate
from engine.constraint import Grammars, Guide
from engine.errors import OverloadedError, UnavailableError, ValidationError
from engine.handle import RequestHandle
from engine.llama import Context, Model
from engine.scheduler import AbortAll, Cancel, Probe, Scheduler, Sequence, Submit
from engine.types import GenerationRequest

log = logging.getLogger("tokenspout.engine")


class EngineConfig(msgspec.Struct, frozen=True):
    model_path: str
    n_ctx: int = 4096
    n_parallel: int = 4
    n_threads: int = 2
    n_gpu_layers: int = 0
    n_batch: int = 512
    # llama.cpp's CPU kernels take other, differently rounded paths from 64 rows per micro-batch on,
    # so a row's logits would depend on what else shares its batch. Staying under that keeps greedy
    # decoding one text whether a request runs alone or beside others (the guide's contract).
    n_ubatch: int = 32
    prefill_chunk: int = 512  # at most this many prompt tokens per step while other streams decode
    step_target_ms: float = 100.0  # and only as many as fit in a step of about this long
    max_concurrent_requests: int = 128


class EngineStats(msgspec.Struct, frozen=True):
    admitted: int  # requests in flight: running + waiting for a slot (what the limit counts)
    running: int
    waiting: int
    free_slots: int
    steps: int
    # KV cells held by running requests (prompt and generated tokens so far), and the cache's size:
    # what a load-aware router reads as KV-cache usage. Cells a finished request leaves behind for
    # reuse are not counted: a new request can take them.
    kv_cells_running: int
    kv_cells_total: int


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model = Model(Path(config.model_path), n_gpu_layers=config.n_gpu_layers)
        self.context = Context(
            self.model,
            n_ctx=config.n_ctx,
            n_seq=config.n_parallel,
            n_batch=config.n_batch,
            n_ubatch=config.n_ubatch,
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
        self._scheduler = Scheduler(
            self.context, config.n_parallel, config.prefill_chunk, config.step_target_ms / 1000
        )
        self._admitted = 0
        self._ids = itertools.count(1)
        self._accepting = False
        self._refusal = "the engine is not running"

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
        self.context.close()
        self.model.close()

    @property
    def healthy(self) -> bool:
        return self._accepting and self._scheduler.alive

    @property
    def n_ctx_slot(self) -> int:
        """KV cells of one slot: the most tokens (prompt and generated) one request can hold."""
        return self.context.n_ctx_slot

    # -- requests ----------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return self.model.tokenize(text, add_special=add_special)

    def token_spans(self, text: str) -> list[tuple[int, str, int, int]]:
        return self.model.token_spans(text)

    def render_chat(self, messages: tuple[ChatMessage, ...]) -> str:
        if not messages:
            raise ValidationError("`messages` must not be empty", "messages")
        return self.chat_template.render(messages)

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
            guide = Guide(self.grammars.compile(request.constraint), self.model.n_vocab)
        handle = RequestHandle(next(self._ids), self._cancel, self._ended)
        self._admitted += 1
        self._scheduler.commands.put(Submit(Sequence(request, handle, guide)))
        return handle

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
            kv_cells_running=sum(seq.n_cached for seq in running),
            kv_cells_total=self.context.n_ctx,
        )

    async def kv_cells_used(self) -> int:
        """KV cells in use right now, read by the scheduler thread between two steps (0 when the
        scheduler is not running, as nothing can hold a cell then)."""
        if not self._scheduler.alive:
            return 0
        result: Future[object] = Future()
        self._scheduler.commands.put(Probe(lambda: self.context.used_cells(self.config.n_parallel), result))
        cells = await asyncio.wrap_future(result)
        assert isinstance(cells, int)
        return cells
