"""Load the engine and run uvicorn on it."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import uvicorn

from engine import Engine, EngineConfig
from server.app import create_app
from server.state import ServerSettings

log = logging.getLogger("tokenspout")


class ServeOptions(msgspec.Struct, frozen=True):
    model: Path
    host: str
    port: int
    max_concurrent_requests: int
    parallel: int
    ctx_size: int
    threads: int
    n_gpu_layers: int
    batch_size: int
    step_target_ms: float
    api_key: str | None
    max_input_tokens: int | None
    max_total_tokens: int | None
    max_stop_sequences: int
    payload_limit: int
    cors_allow_origins: tuple[str, ...]
    log_level: str


def run(o: ServeOptions) -> int:
    log.info("loading %s (ctx %d, %d slots, %d threads)", o.model, o.ctx_size, o.parallel, o.threads)
    try:
        engine = Engine(
            EngineConfig(
                model_path=str(o.model),
                n_ctx=o.ctx_size,
                n_parallel=o.parallel,
                n_threads=o.threads,
                n_gpu_layers=o.n_gpu_layers,
                n_batch=min(o.batch_size, o.ctx_size),
                step_target_ms=o.step_target_ms,
                max_concurrent_requests=o.max_concurrent_requests,
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
    )
    app = create_app(engine, settings)
    log.info("serving %s on http://%s:%d", engine.model_id, o.host, o.port)
    uvicorn.run(
        app,
        host=o.host,
        port=o.port,
        log_level=o.log_level,
        http="httptools",
        loop="uvloop",
        timeout_graceful_shutdown=30,
    )
    return 0
