"""``just bench``: a real tokenspout server measured against the bare llama.cpp loop in the same run.

Rounds alternate bare and HTTP measurements so that drift on a shared machine hits both alike; the
ratios of each round are reported with their median. Two clients read the streams: a raw one that
parses nothing (the most the server can do) and an ordinary one that parses every event as the SDKs do
(what users see: on two cores the client's and the server's CPU per token come out of llama.cpp's share).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import constrained, conversation, overload, protocols, spec, stall, thinking
from bench.bare import PROMPT
from bench.client import Streamer, parsed_stream, raw_stream, stream_rate
from bench.server import cpu_seconds, llama_server_binary, running_server, serving, serving_llama_server
from models import QWEN_CODER, ensure_model

SECTIONS = (
    "decode",
    "constraint",
    "prefill",
    "conversation",
    "thinking",
    "overload",
    "protocols",
    "spec",
    "spec-coder",
    "spec-draft",
)


def bare(model: str, threads: int, *args: str) -> dict[str, float]:
    """One run of the bare loop in its own process, so that it owns the CPU as the engine would."""
    command = [sys.executable, "-m", "bench.bare", model, "--threads", str(threads), *args]
    result: dict[str, float] = json.loads(
        subprocess.run(command, capture_output=True, text=True, check=True).stdout
    )
    return result


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def decode(model: str, threads: int, rounds: int, n_tokens: int) -> None:
    """1 and 4 concurrent streams: tokenspout read by both clients, llama-server (when `just
    llama-server` has built it) by the ordinary one, each against the bare loop of the same round."""
    body = {"prompt": PROMPT, "max_tokens": n_tokens, "temperature": 0, "ignore_eos": True}
    rows: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        # the token loop itself against the bare one: speculation has its own sections (spec, spec-coder)
        flags = ["--threads", str(threads), "--parallel", "4", "--no-spec"]
        ours = stack.enter_context(serving(model, flags))
        targets: list[tuple[str, tuple[subprocess.Popen[bytes], str], Streamer]] = [
            ("tokenspout raw", ours, raw_stream),
            ("tokenspout parsed", ours, parsed_stream),
        ]
        if binary := llama_server_binary():
            flags = ["-t", str(threads), "-np", "4", "-c", "4096"]
            theirs = stack.enter_context(serving_llama_server(binary, model, flags))
            targets.append(("llama-server parsed", theirs, parsed_stream))
        else:
            print("(llama-server is not built: `just llama-server` builds it for this comparison)")
        for round_ in range(1, rounds + 1):
            line = [f"round {round_}:"]
            for n in (1, 4):
                bare_rate = bare(model, threads, "--sequences", str(n), "--tokens", str(n_tokens))
                rows.setdefault(f"bare {n}", []).append(bare_rate["tokens_per_second"])
                # every other round in reverse, so that drift within a round favours nobody
                for name, (process, url), streamer in targets[:: 1 if round_ % 2 else -1]:
                    cpu = cpu_seconds(process.pid)
                    rate, ttft, tokens = asyncio.run(stream_rate(streamer, url, body, n))
                    rows.setdefault(f"{name} {n}", []).append(rate)
                    rows.setdefault(f"{name} {n} cpu", []).append((cpu_seconds(process.pid) - cpu) / tokens)
                    rows.setdefault(f"{name} {n} ttft", []).append(ttft)
                    line.append(f"{n}x {name} {rate / rows[f'bare {n}'][-1]:.3f}")
                line.append(f"(bare {rows[f'bare {n}'][-1]:.1f} tok/s) |")
            print(" ".join(line), flush=True)
    print("\nmedians; prefill included on both sides (first request sent to last token received):")
    for n in (1, 4):
        goal = 0.96 if n == 1 else 0.95
        for name, _, _ in targets:
            ratio = median_ratio(rows[f"{name} {n}"], rows[f"bare {n}"])
            cpu_ms = statistics.median(rows[f"{name} {n} cpu"]) * 1000
            ttft_ms = statistics.median(rows[f"{name} {n} ttft"]) * 1000
            print(
                f"{n} stream(s), {name:20}: {ratio:.3f} of the bare loop (goal >= {goal}),"
                f" server CPU {cpu_ms:.2f} ms per token, TTFT {ttft_ms:.0f} ms"
            )
        if len(targets) == 3:
            ours_vs = median_ratio(rows[f"tokenspout parsed {n}"], rows[f"llama-server parsed {n}"])
            print(f"{n} stream(s), tokenspout / llama-server (ordinary client): {ours_vs:.3f} (goal >= 1.0)")
    print()


def constraint(model: str, threads: int, rounds: int, n_tokens: int) -> None:
    # On the model under test and on a real tool-calling model (a bigger vocabulary: 151,936 tokens).
    for path in dict.fromkeys((model, str(ensure_model(QWEN_CODER)))):
        ratios = []
        print(f"model: {Path(path).name}")
        with running_server(path, ["--threads", str(threads)]) as url:
            for round_ in range(1, rounds + 1):
                with_schema, without = constrained.decode_rates(url, n_tokens)
                ratios.append(with_schema / without)
                print(
                    f"round {round_}: json_schema {with_schema:6.1f} tok/s vs free {without:6.1f}"
                    f" ({ratios[-1]:.3f})"
                )
        mask_us, check_us, n = constrained.mask_cost(path, threads, n_tokens)
        print(f"constrained / free decode: {statistics.median(ratios):.3f} (goal >= 0.95)")
        print(
            f"grammar per token ({n} tokens replayed): check {check_us:.1f} µs;"
            f" full mask, when needed, {mask_us:.1f} µs\n"
        )


def prefill(model: str, threads: int, rounds: int) -> None:
    prompt = conversation.long_text(430)  # ~1,200 tokens
    http, bares = [], []
    with running_server(model, ["--threads", str(threads)]) as url:
        for round_ in range(1, rounds + 1):
            fast = bare(model, threads, "--shape", "fast", "--prefill", prompt)
            bares.append(fast["tokens_per_second"])
            rate, n_prompt = conversation.cold_prefill_rate(url, prompt)
            http.append(rate)
            print(
                f"round {round_}: cold prefill of {n_prompt} tokens {rate:6.1f} tok/s"
                f" vs bare {bares[-1]:6.1f}"
            )
    print(
        f"cold prefill over HTTP / the bare loop's best shape: {median_ratio(http, bares):.3f}"
        " (goal >= 0.90)\n"
    )


def agent(model: str, threads: int) -> None:
    with running_server(model, ["--threads", str(threads)]) as url:
        turns = conversation.agent_conversation(url)
    for i, turn in enumerate(turns, 1):
        print(
            f"turn {i}: TTFT {turn.ttft * 1000:7.0f} ms, {turn.prompt_tokens} prompt tokens,"
            f" {turn.cached_tokens} cached"
        )
    later = turns[1:]
    share = sum(t.cached_tokens for t in later) / sum(t.prompt_tokens for t in later)
    ratio = statistics.median(t.ttft for t in later) / turns[0].ttft
    print(
        f"median TTFT of turns 2+ / turn 1: {ratio:.3f} (goal <= 0.05);"
        f" prompt tokens from cache: {share:.0%}\n"
    )


def backpressure(model: str, threads: int) -> None:
    # 2,048 cells per slot, so that the stall probe's 1,358-token prompt fits one slot
    busy = ["--threads", str(threads), "--parallel", "4", "--max-concurrent-requests", "4"]
    # and bodies of up to 4 MB, so that the stall probe's 1.9 MB prompt reaches the routes
    with running_server(model, [*busy, "--ctx-size", "8192", "--payload-limit", stall.PAYLOAD_LIMIT]) as url:
        overload.report(url, limit=4)
        stall.report(url)


def agent_protocols(model: str, threads: int, rounds: int, n_tokens: int) -> None:
    with running_server(model, ["--threads", str(threads)]) as url:
        protocols.report(url, rounds, n_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="GGUF file (default: the default model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256, help="tokens generated per stream")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    args = parser.parse_args()
    model = args.model or str(ensure_model())
    runs: dict[str, Callable[[], Any]] = {
        "decode": lambda: decode(model, args.threads, args.rounds, args.tokens),
        "constraint": lambda: constraint(model, args.threads, args.rounds, args.tokens),
        "prefill": lambda: prefill(model, args.threads, args.rounds),
        "conversation": lambda: agent(model, args.threads),
        "thinking": lambda: thinking.report(model, args.threads, args.rounds),
        "overload": lambda: backpressure(model, args.threads),
        "protocols": lambda: agent_protocols(model, args.threads, args.rounds, args.tokens),
        "spec": lambda: spec.report(model, args.threads, args.rounds, args.tokens),
        # the same on the Qwen coder model, which copies what it is asked to rewrite (1 stream: ~6x slower)
        "spec-coder": lambda: spec.report(
            str(ensure_model(QWEN_CODER)), args.threads, args.rounds, args.tokens, streams=(1,)
        ),
        # its own models: copies of the default model (a Q8_0 target, a Q4_0 draft)
        "spec-draft": lambda: spec.report_draft_model(args.threads, args.rounds, args.tokens),
    }
    for section in args.only.split(","):
        print(f"== {section} ==", flush=True)
        runs[section]()


if __name__ == "__main__":
    main()
