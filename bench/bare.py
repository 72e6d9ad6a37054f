"""The reference: a bare greedy decode loop on llama-cpp-python's C API, no server, no scheduler.

Run as a separate process (``python -m bench.bare MODEL THREADS N_SEQ N_TOKENS``) so that it owns the
CPU the way the server's engine would; prints one JSON object.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time

import llama_cpp as C

from engine.llama import FAST

PROMPT = "Once upon a time, in a quiet village by the sea, there lived"


@C.llama_log_callback  # type: ignore[untyped-decorator]
def _quiet(_level: int, _text: bytes, _user_data: ctypes.c_void_p) -> None:
    pass


def decode_rate(model_path: str, threads: int, n_seq: int, n_tokens: int, n_ctx: int = 4096) -> float:
    """Aggregate tokens/s of ``n_seq`` sequences decoded together, prompt prefill excluded."""
    C.llama_log_set(_quiet, ctypes.c_void_p(0))
    C.llama_backend_init()
    model = C.llama_model_load_from_file(model_path.encode(), C.llama_model_default_params())
    vocab = C.llama_model_get_vocab(model)
    params = C.llama_context_default_params()
    # the server's default context shape: 4 slots, a KV stream each, the fast shape's cells and
    # micro-batches (engine/llama.py: FAST)
    params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, 512, FAST.n_ubatch
    params.n_seq_max, params.kv_unified = 4, False
    params.type_k = params.type_v = FAST.cell_type
    params.flash_attn_type = FAST.flash_attn
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    ctx = C.llama_init_from_model(model, params)
    prompt = (C.llama_token * 256)()
    n_prompt = C.llama_tokenize(vocab, PROMPT.encode(), len(PROMPT.encode()), prompt, 256, False, True)
    batch = C.llama_batch_init(512, 0, 1)
    samplers = [C.llama_sampler_chain_init(C.llama_sampler_chain_default_params()) for _ in range(n_seq)]
    for sampler in samplers:
        C.llama_sampler_chain_add(sampler, C.llama_sampler_init_greedy())

    def put(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, logits

    for seq in range(n_seq):  # prefill every sequence in one batch
        for i in range(n_prompt):
            put(seq * n_prompt + i, prompt[i], i, seq, i == n_prompt - 1)
    batch.n_tokens = n_seq * n_prompt
    assert C.llama_decode(ctx, batch) == 0
    tokens = [C.llama_sampler_sample(s, ctx, (seq + 1) * n_prompt - 1) for seq, s in enumerate(samplers)]
    pos = n_prompt
    started = time.perf_counter()
    for _ in range(n_tokens - 1):
        for seq in range(n_seq):
            put(seq, tokens[seq], pos, seq, True)
        batch.n_tokens = n_seq
        assert C.llama_decode(ctx, batch) == 0
        tokens = [C.llama_sampler_sample(samplers[seq], ctx, seq) for seq in range(n_seq)]
        pos += 1
    elapsed = time.perf_counter() - started
    return n_seq * (n_tokens - 1) / elapsed


if __name__ == "__main__":
    path, threads, n_seq, n_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps({"tokens_per_second": decode_rate(path, threads, n_seq, n_tokens)}))
