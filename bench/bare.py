"""The reference: a bare greedy decode loop on llama-cpp-python's C API, no server, no scheduler.

Run as a separate process (``python -m bench.bare MODEL [options]``) so that it owns the
CPU the way the server's engine would; prints one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time
from typing import Any

import llama_cpp as C

from engine.llama import DETERMINISTIC, FAST, Shape

PROMPT = "Once upon a time, in a quiet village by the sea, there lived"


@C.llama_log_callback  # type: ignore[untyped-decorator]
def _quiet(_level: int, _text: bytes, _user_data: ctypes.c_void_p) -> None:
    pass


SHAPES = {"fast": FAST, "deterministic": DETERMINISTIC}  # the server's two context shapes


def _load(model_path: str, threads: int, shape: Shape, n_ctx: int, n_seq: int = 4) -> tuple[Any, Any, Any]:
    C.llama_log_set(_quiet, ctypes.c_void_p(0))
    C.llama_backend_init()
    model = C.llama_model_load_from_file(model_path.encode(), C.llama_model_default_params())
    params = C.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, 512, shape.n_ubatch
    # as the server: a KV stream per slot
    params.n_seq_max, params.kv_unified = n_seq, False
    params.type_k = params.type_v = shape.cell_type
    params.flash_attn_type = shape.flash_attn
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    return model, C.llama_model_get_vocab(model), C.llama_init_from_model(model, params)


def _tokenize(vocab: Any, text: str) -> list[int]:
    data = text.encode()
    out = (C.llama_token * (len(data) + 16))()
    n = C.llama_tokenize(vocab, data, len(data), out, len(data) + 16, False, True)
    return list(out[:n])


def decode_rate(model_path: str, threads: int, n_seq: int, n_tokens: int, shape: Shape) -> float:
    """Aggregate tokens/s of ``n_seq`` sequences decoded together, greedy, from the start of their
    prompt's prefill to their last token (as a streaming client waits for them)."""
    _, vocab, ctx = _load(model_path, threads, shape, n_ctx=4096)
    prompt = _tokenize(vocab, PROMPT)
    n_prompt = len(prompt)
    batch = C.llama_batch_init(512, 0, 1)
    samplers = [C.llama_sampler_chain_init(C.llama_sampler_chain_default_params()) for _ in range(n_seq)]
    for sampler in samplers:
        C.llama_sampler_chain_add(sampler, C.llama_sampler_init_greedy())

    def put(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, logits

    started = time.perf_counter()
    for seq in range(n_seq):  # prefill every sequence in one batch
        for i in range(n_prompt):
            put(seq * n_prompt + i, prompt[i], i, seq, i == n_prompt - 1)
    batch.n_tokens = n_seq * n_prompt
    assert C.llama_decode(ctx, batch) == 0
    tokens = [C.llama_sampler_sample(s, ctx, (seq + 1) * n_prompt - 1) for seq, s in enumerate(samplers)]
    pos = n_prompt
    for _ in range(n_tokens - 1):
        for seq in range(n_seq):
            put(seq, tokens[seq], pos, seq, True)
        batch.n_tokens = n_seq
        assert C.llama_decode(ctx, batch) == 0
        tokens = [C.llama_sampler_sample(samplers[seq], ctx, seq) for seq in range(n_seq)]
        pos += 1
    return n_seq * n_tokens / (time.perf_counter() - started)


def prefill_rate(model_path: str, threads: int, prompt: str, shape: Shape) -> tuple[float, int]:
    """Prompt tokens/s of one cold prefill in batches of 512 (the last row's logits only), and the
    prompt's length in tokens."""
    _, vocab, ctx = _load(model_path, threads, shape, n_ctx=16384, n_seq=1)
    tokens = _tokenize(vocab, prompt)
    batch = C.llama_batch_init(512, 0, 1)
    started = time.perf_counter()
    for at in range(0, len(tokens), 512):
        chunk = tokens[at : at + 512]
        for i, token in enumerate(chunk):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, at + i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, at + i == len(tokens) - 1
        batch.n_tokens = len(chunk)
        assert C.llama_decode(ctx, batch) == 0
    return len(tokens) / (time.perf_counter() - started), len(tokens)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="fast", help="the server's context shape")
    parser.add_argument("--sequences", type=int, default=1, help="decode: sequences batched together")
    parser.add_argument("--tokens", type=int, default=256, help="decode: tokens per sequence")
    parser.add_argument("--prefill", default=None, help="measure the prefill of this prompt instead")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    if args.prefill is not None:
        rate, n_prompt = prefill_rate(args.model, args.threads, args.prefill, shape)
        print(json.dumps({"tokens_per_second": rate, "prompt_tokens": n_prompt}))
    else:
        rate = decode_rate(args.model, args.threads, args.sequences, args.tokens, shape)
        print(json.dumps({"tokens_per_second": rate}))
