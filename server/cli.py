"""``tokenspout`` command line: ``serve`` and ``models pull``. Every flag also reads TOKENSPOUT_<NAME>."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from engine.speculation import SpecConfig
from models import DEFAULT_MODEL, KNOWN_MODELS, ModelError, ensure_model, model_dir, resolve_model_path

F = TypeVar("F", bound=Callable[..., Any])


def physical_cores() -> int:
    """Distinct physical cores this process may run on (llama.cpp gains nothing from SMT siblings)."""
    cores = set()
    for cpu in os.sched_getaffinity(0):
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(os.sched_getaffinity(0))
        cores.add((package, core))
    return max(1, len(cores))


class CtxSize(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2 on
    """``auto`` (None) or a number of KV cells."""

    name = "auto|N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            cells = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor a number of tokens", param, ctx)
        if cells < 64:
            self.fail(f"{cells} is smaller than 64 tokens", param, ctx)
        return cells


def _option(*names: str, envvar: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*names, envvar=f"TOKENSPOUT_{envvar}", show_envvar=True, show_default=True, **kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="tokenspout")
def main() -> None:
    """tokenspout: serve a GGUF model through llama.cpp, streaming every token over SSE."""


@main.command()
@_option(
    "--model",
    envvar="MODEL",
    default=None,
    help=f"GGUF file to serve, or the name of a model the store knows ({', '.join(sorted(KNOWN_MODELS))}), "
    f"fetched on first use. Default: {DEFAULT_MODEL.name}.",
)
@_option(
    "--host",
    envvar="HOST",
    default="127.0.0.1",
    help="Address to listen on. Loopback by default: serving on a network is a choice.",
)
@_option("--port", envvar="PORT", type=click.IntRange(0, 65535), default=8080, help="Port to listen on.")
@_option(
    "--max-concurrent-requests",
    "--max_concurrent_requests",
    "max_concurrent_requests",
    envvar="MAX_CONCURRENT_REQUESTS",
    type=click.IntRange(min=1),
    default=128,
    help="Requests admitted at once (running + waiting for a slot); one more gets 429 overloaded.",
)
@_option(
    "--parallel",
    envvar="PARALLEL",
    type=click.IntRange(min=1),
    default=4,
    help="Sequences decoded together in one batch (slots).",
)
@_option(
    "--ctx-size",
    envvar="CTX_SIZE",
    type=CtxSize(),
    default="auto",
    help="KV cache size in tokens, shared out evenly among the slots (rounded up to 256 per slot): "
    "one request holds at most CTX_SIZE / PARALLEL tokens. 'auto': each slot gets the model's trained "
    "context, or what --kv-budget-mib affords, whichever is less.",
)
@_option(
    "--kv-budget-mib",
    envvar="KV_BUDGET_MIB",
    type=click.IntRange(min=1),
    default=1024,
    help="With --ctx-size auto: the most KV cache memory to allocate for all slots together, in MiB.",
)
@_option(
    "--cache-ram",
    envvar="CACHE_RAM",
    type=click.IntRange(min=0),
    default=256,
    help="Host RAM in MiB for the prompt cache's saved sequence states (a slot's KV, saved before the "
    "slot is given to an unrelated prompt, restored when a prompt continues it). 0 turns it off; "
    "free slots still keep their last request's KV for the next prompt that shares its prefix.",
)
@_option(
    "--deterministic",
    envvar="DETERMINISTIC",
    is_flag=True,
    default=False,
    help="Bit-identical logits (greedy and seeded text, logprobs included) whether a request runs alone "
    "or batched and whether its prompt comes from the prompt cache or not: Q8_0 KV cells, micro-batches "
    "of 32, no repacked weights. Slower prefill; the README says for which weight types it holds.",
)
@_option(
    "--threads",
    envvar="THREADS",
    type=click.IntRange(min=1),
    default=None,
    help="llama.cpp threads. Default: the number of physical cores.",
)
@_option(
    "--n-gpu-layers",
    envvar="N_GPU_LAYERS",
    type=click.IntRange(min=-1),
    default=0,
    help="Layers offloaded to the GPU on CUDA/Metal builds (-1: all).",
)
@_option(
    "--batch-size",
    envvar="BATCH_SIZE",
    type=click.IntRange(min=1),
    default=512,
    help="Most tokens in one llama_decode call.",
)
@_option(
    "--ubatch-size",
    envvar="UBATCH_SIZE",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per physical micro-batch. Default: 512, or 32 with --deterministic (on CPU, llama.cpp "
    "rounds differently from 64 rows on, so --deterministic refuses 64 or more).",
)
@_option(
    "--step-target-ms",
    envvar="STEP_TARGET_MS",
    type=click.FloatRange(min=1),
    default=100.0,
    help="Prompt prefill is chunked so that a decode step lasts about this long: running streams "
    "keep flowing while a long prompt arrives.",
)
@_option(
    "--spec/--no-spec",
    envvar="SPEC",
    default=None,
    help="Speculative decoding: guess the tokens ahead from what a grammar forces and from the request's "
    "own text (prompt lookup), and verify the guesses in the same batch, adaptive per request. Default: "
    "on, except with --deterministic, whose context shape makes a draft row dear on a CPU. The same "
    "greedy request keeps its text; under --deterministic it is the plain loop's bit for bit, in the fast "
    "shape a verification row may round as a batched row does (README). Drafts from a draft model do not "
    "need this switch: --draft-model turns them on.",
)
@_option(
    "--draft-model",
    envvar="DRAFT_MODEL",
    default=None,
    help="A smaller model of the same vocabulary that drafts for every request (a GGUF file, or a name the "
    "store knows, as for --model): its guesses are verified in the batch, so the output is the served "
    "model's. Checked at start-up (same tokens, same special tokens; else exit 1). It turns drafts from "
    "this model on whatever --spec says; --spec adds grammar-forced and prompt-lookup drafts, tried first.",
)
@_option(
    "--draft-p-min",
    envvar="DRAFT_P_MIN",
    type=click.FloatRange(0.0, 1.0),
    default=SpecConfig().draft_p_min,
    help="The draft model's guess ends at the first token it gives less than this probability.",
)
@_option(
    "--spec-draft-max",
    envvar="SPEC_DRAFT_MAX",
    type=click.IntRange(min=1),
    default=SpecConfig().draft_max,
    help="Most draft tokens one request verifies per step (from any source, the draft model's too).",
)
@_option(
    "--spec-pool-tokens",
    envvar="SPEC_POOL_TOKENS",
    type=click.IntRange(min=0),
    default=SpecConfig().pool_tokens,
    help="With --spec: output tokens of finished requests remembered for drafts (a pool shared by all "
    "requests, keyed by their last 12 tokens; 262144 take about 26 MB): a request close to an earlier one "
    "is drafted from what that one wrote. Off (0) by default: a request's drafts, and so in the fast "
    "shape its rounding, would then depend on earlier requests, and a greedy request sent again could "
    "change its text at a near tie (README).",
)
@_option(
    "--spec-ngram-min",
    envvar="SPEC_NGRAM_MIN",
    type=click.IntRange(min=1),
    default=SpecConfig().ngram_min,
    help="Shortest suffix of a request's tokens looked up in its prompt and output for a draft.",
)
@_option(
    "--spec-ngram-max",
    envvar="SPEC_NGRAM_MAX",
    type=click.IntRange(min=1),
    default=SpecConfig().ngram_max,
    help="Longest suffix looked up (tried first).",
)
@_option(
    "--spec-row-cost",
    envvar="SPEC_ROW_COST",
    type=click.FloatRange(0.0, 1.0),
    default=SpecConfig().row_cost,
    help="What one more row costs relative to a one-sequence decode step (0.6 measured on a 2-core CPU; "
    "near 0 on a GPU): a request drafts only as many tokens as its recent acceptance makes worth that.",
)
@_option(
    "--api-key",
    envvar="API_KEY",
    default=None,
    help="When set, every route but /health and the demo page needs 'Authorization: Bearer KEY'.",
)
@_option(
    "--max-input-tokens",
    envvar="MAX_INPUT_TOKENS",
    type=click.IntRange(min=1),
    default=None,
    help="Longest prompt in tokens. Default: max-total-tokens - 1.",
)
@_option(
    "--max-total-tokens",
    envvar="MAX_TOTAL_TOKENS",
    type=click.IntRange(min=2),
    default=None,
    help="Prompt + generated tokens per request. Default: one slot's share of the KV cache.",
)
@_option(
    "--max-stop-sequences",
    envvar="MAX_STOP_SEQUENCES",
    type=click.IntRange(min=0),
    default=4,
    help="Most stop strings per request.",
)
@_option(
    "--payload-limit",
    envvar="PAYLOAD_LIMIT",
    type=click.IntRange(min=1),
    default=2_000_000,
    help="Largest request body in bytes; larger ones get 413.",
)
@_option(
    "--cors-allow-origin",
    "cors_allow_origins",
    envvar="CORS_ALLOW_ORIGIN",
    multiple=True,
    help="Origins allowed by CORS (repeat the flag for several). CORS is off unless set.",
)
@_option(
    "--shutdown-timeout",
    envvar="SHUTDOWN_TIMEOUT",
    type=click.FloatRange(min=0),
    default=30.0,
    help="On SIGTERM, seconds to let running requests finish (new ones get 503) before ending them.",
)
@_option(
    "--request-read-timeout",
    envvar="REQUEST_READ_TIMEOUT",
    type=click.FloatRange(min=0.1),
    default=30.0,
    help="Seconds a client has to send a whole request (headers and body) once it starts; then it gets "
    "408 and the connection is closed, instead of being held forever.",
)
@_option(
    "--first-token-timeout",
    envvar="FIRST_TOKEN_TIMEOUT",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Seconds a request may wait for its first token (for a slot, behind other prompts) before it "
    "gets 503 overloaded; nothing is sent before that token, so behind a proxy a longer wait looks like "
    "a dead replica. 0: no limit.",
)
@_option(
    "--responses-store-size",
    envvar="RESPONSES_STORE_SIZE",
    type=click.IntRange(min=0),
    default=1000,
    help="Responses kept in memory for /v1/responses' previous_response_id and GET/DELETE "
    "/v1/responses/{id}; the least recently used go first. 0 keeps none.",
)
@_option(
    "--reasoning-format",
    envvar="REASONING_FORMAT",
    type=click.Choice(["auto", "none"]),
    default="auto",
    help="auto: a thinking model's thought (<think>…</think>, found from its chat template) goes apart "
    "from the answer, as reasoning_content on chat completions, a reasoning item on Responses, a thinking "
    "block on Messages. none: it stays in the text, as the model wrote it.",
)
@_option(
    "--reasoning-budget",
    envvar="REASONING_BUDGET",
    type=click.IntRange(min=-1),
    default=-1,
    help="Tokens a thought may take before the server closes it (and the model answers), unless the "
    "request sets its own budget. -1: no limit; 0: no thinking.",
)
@_option(
    "--log-level",
    envvar="LOG_LEVEL",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log verbosity.",
)
def serve(**options: object) -> None:
    """Serve a model over HTTP (OpenAI and TGI APIs, plus a demo page at /)."""
    from server.serve import ServeOptions, run  # heavy imports only once we really serve

    try:
        options["model"] = resolve_model_path(options["model"])  # type: ignore[arg-type]
        if options["draft_model"] is not None:
            options["draft_model"] = resolve_model_path(options["draft_model"])  # type: ignore[arg-type]
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    if options["threads"] is None:
        options["threads"] = physical_cores()
    ubatch = options["ubatch_size"]
    if int(options["spec_ngram_min"]) > int(options["spec_ngram_max"]):  # type: ignore[call-overload]
        raise click.BadParameter("must not exceed --spec-ngram-max", param_hint="--spec-ngram-min")
    if options["deterministic"] and isinstance(ubatch, int) and ubatch >= 64:
        raise click.BadParameter("must be under 64 with --deterministic", param_hint="--ubatch-size")
    logging.basicConfig(level=str(options["log_level"]).upper(), format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run(ServeOptions(**options)))  # type: ignore[arg-type]


@main.group()
def models() -> None:
    """Manage the local model store."""


@models.command()
@click.argument("name", type=click.Choice(sorted(KNOWN_MODELS)), default="smollm2-135m")
def pull(name: str) -> None:
    """Fetch a model the store knows by NAME (default: the default model) and verify its sha256."""
    try:
        click.echo(ensure_model(KNOWN_MODELS[name]))
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None


@models.command(name="path")
def path_() -> None:
    """Print where models are stored."""
    click.echo(model_dir())
