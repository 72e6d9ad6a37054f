"""Load the engine and run uvicorn on it."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from types import FrameType

import msgspec
import uvicorn

from engine import Engine, EngineConfig
from engine.speculation import SpecConfig
from server.app import create_app
from server.read_timeout import protocol_with_read_timeout
from server.state import ServerSettings

log = logging.getLogger("tokenspout")


class ServeOptions(msgspec.Struct, frozen=True):
    model: Path
    host: str
    port: int
    max_concurrent_requests: int
    parallel: int
    ctx_size: int | None
    kv_budget_mib: int
    cache_ram: int
    deterministic: bool
    threads: int
    n_gpu_layers: int
    batch_size: int
    ubatch_size: int | None
    step_target_ms: float
    spec: bool | None  # None: on unless deterministic
    draft_model: Path | None
    draft_p_min: float
    spec_draft_max: int
    spec_ngram_min: int
    spec_ngram_max: int
    spec_row_cost: float
    spec_pool_tokens: int
    api_key: str | None
    max_input_tokens: int | None
    max_total_tokens: int | None
    max_stop_sequences: int
    payload_limit: int
    cors_allow_origins: tuple[str, ...]
    shutdown_timeout: float
    request_read_timeout: float
    first_token_timeout: float
    responses_store_size: int
    reasoning_format: str
    reasoning_budget: int
    log_level: str


def run(o: ServeOptions) -> int:
    ctx = "auto" if o.ctx_size is None else o.ctx_size
    log.info("loading %s (ctx %s, %d slots, %d threads)", o.model, ctx, o.parallel, o.threads)
    if o.draft_model is not None:
        log.info("loading the draft model %s", o.draft_model)
    try:
        engine = Engine(
            EngineConfig(
                model_path=str(o.model),
                n_ctx=o.ctx_size,
                kv_budget_mib=o.kv_budget_mib,
                n_parallel=o.parallel,
                n_threads=o.threads,
                n_gpu_layers=o.n_gpu_layers,
                n_batch=o.batch_size,
                deterministic=o.deterministic,
                n_ubatch=o.ubatch_size,
                step_target_ms=o.step_target_ms,
                max_concurrent_requests=o.max_concurrent_requests,
                cache_ram_mib=o.cache_ram,
                spec=SpecConfig(
                    enabled=not o.deterministic if o.spec is None else o.spec,
                    ngram_min=o.spec_ngram_min,
                    ngram_max=o.spec_ngram_max,
                    draft_max=o.spec_draft_max,
                    draft_start=min(SpecConfig().draft_start, o.spec_draft_max),
                    row_cost=o.spec_row_cost,
                    draft_p_min=o.draft_p_min,
                    pool_tokens=o.spec_pool_tokens,
                ),
                draft_model_path=None if o.draft_model is None else str(o.draft_model),
            )
        )
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    settings = ServerSettings(
        api_key=o.api_key,
        payload_limit=o.payload_limit,
        max_input_tokens=o.max_input_tokens,
        max_total_tokens=o.max_total_tokens,
        max_stop_sequences=o.max_stop_sequences,
        cors_allow_origins=o.cors_allow_origins,
        first_token_timeout=o.first_token_timeout,
        responses_store_size=o.responses_store_size,
        reasoning_format=o.reasoning_format,
        reasoning_budget=None if o.reasoning_budget < 0 else o.reasoning_budget,
    )
    app = create_app(engine, settings)
    log.info("%s", engine.describe_context())
    log.info("%s", engine.describe_determinism())
    log.info("%s", engine.describe_speculation())
    log.info("prompt cache: free slots keep their KV; %d MiB of host RAM for saved states", o.cache_ram)
    log.info("tool format: %s", app.state.services.tools.describe())
    log.info("reasoning: %s", app.state.services.thinking_found)
    log.info("serving %s on http://%s:%d", engine.model_id, o.host, o.port)
    config = uvicorn.Config(
        app,
        host=o.host,
        port=o.port,
        log_level=o.log_level,
        # uvicorn's httptools protocol with a deadline on receiving each request (server/read_timeout.py)
        http=protocol_with_read_timeout(o.request_read_timeout),
        loop="uvloop",
        timeout_graceful_shutdown=10,  # after our own drain: a backstop, not the policy
    )
    DrainingServer(config, engine, o.shutdown_timeout).run()
    return 0


class DrainingServer(uvicorn.Server):
    """On SIGTERM or Ctrl-C, drain before exiting: new requests get 503 (in their route's shape) and
    /health turns 503, requests in flight run to completion for up to ``drain_seconds``, then the rest
    end with an error event. A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, engine: Engine, drain_seconds: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.drain_seconds = drain_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not calling super(): uvicorn would re-raise the signal after shutting down, and a drained
        # server should exit 0.
        if self._draining or self._loop is None:
            self.should_exit = self.force_exit = True
            return
        self._draining = True
        self.engine.stop_admitting()
        self._loop.call_soon_threadsafe(lambda: self._loop and self._loop.create_task(self._drain()))

    async def _drain(self) -> None:
        in_flight = self.engine.stats().admitted
        log.info(
            "draining %d request(s) for up to %.0f s (signal again to stop at once)",
            in_flight,
            self.drain_seconds,
        )
        if not await self._until_idle(self.drain_seconds):
            log.warning("ending %d request(s) still running", self.engine.stats().admitted)
            self.engine.abort_all("the server is shutting down")
            await self._until_idle(5.0)
        self.should_exit = True

    async def _until_idle(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.engine.stats().admitted:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True
