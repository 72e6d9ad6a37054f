"""Bare-API speed of each KV context shape: prefill of a ~1,200-token prompt and greedy decode.

``python -m bench.shapes [MODEL] [THREADS] [ROUNDS]`` prints one JSON line per shape and round. Shapes
are measured in interleaved rounds in one process, so drift on a shared machine hits them alike. This
is how the default (fast) shape and the ``--deterministic`` one were chosen (README, docs/design.md).
"""

from __future__ import annotations

import ctypes
import json
import sys
import time

import llama_cpp as C

from models import ensure_model

TEXT = (
    "The river flows past the old mill and the quiet town, where the baker opens his shop before dawn "
    "and the children run to school along the water. "
)

# (name, KV cell type, micro-batch rows, flash attention)
SHAPES = [
    ("q8_0/ub32/fa-on", C.GGML_TYPE_Q8_0, 32, C.LLAMA_FLASH_ATTN_TYPE_ENABLED),
    ("q8_0/ub512/fa-on", C.GGML_TYPE_Q8_0, 512, C.LLAMA_FLASH_ATTN_TYPE_ENABLED),
    ("f16/ub32/fa-on", C.GGML_TYPE_F16, 32, C.LLAMA_FLASH_ATTN_TYPE_ENABLED),
    ("f16/ub512/fa-on", C.GGML_TYPE_F16, 512, C.LLAMA_FLASH_ATTN_TYPE_ENABLED),
    ("f16/ub512/fa-auto", C.GGML_TYPE_F16, 512, C.LLAMA_FLASH_ATTN_TYPE_AUTO),
    ("f16/ub512/fa-off", C.GGML_TYPE_F16, 512, C.LLAMA_FLASH_ATTN_TYPE_DISABLED),
]


@C.llama_log_callback  # type: ignore[untyped-decorator]
def _quiet(_level: int, _text: bytes, _user_data: ctypes.c_void_p) -> None:
    pass


Shape = tuple[str, int, int, int]


def measure(model: object, vocab: object, shape: Shape, threads: int) -> dict[str, object]:
    name, cell_type, n_ubatch, flash = shape
    params = C.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 4 * 2048, 512, n_ubatch
    params.n_seq_max, params.kv_unified = 4, False
    params.type_k = params.type_v = cell_type
    params.flash_attn_type = flash
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    ctx = C.llama_init_from_model(model, params)
    assert ctx, name
    text = (TEXT * 60).encode()
    tokens = (C.llama_token * 4096)()
    n = C.llama_tokenize(vocab, text, len(text), tokens, 4096, True, True)
    prompt = list(tokens[: min(n, 1200)])
    batch = C.llama_batch_init(512, 0, 1)

    def put(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, logits

    started = time.perf_counter()
    for start in range(0, len(prompt), 512):
        chunk = prompt[start : start + 512]
        for i, token in enumerate(chunk):
            put(i, token, start + i, 0, start + i == len(prompt) - 1)
        batch.n_tokens = len(chunk)
        assert C.llama_decode(ctx, batch) == 0
    prefill = len(prompt) / (time.perf_counter() - started)
    rates = {}
    for n_seq in (1, 4):
        mem = C.llama_get_memory(ctx)
        C.llama_memory_clear(mem, True)
        for seq in range(n_seq):  # a short prompt each, then 64 greedy steps
            for i, token in enumerate(prompt[:32]):
                put(i, token, i, seq, i == 31)
            batch.n_tokens = 32
            assert C.llama_decode(ctx, batch) == 0
        pos, steps = 32, 64
        started = time.perf_counter()
        for _ in range(steps):
            for seq in range(n_seq):
                put(seq, prompt[pos % len(prompt)], pos, seq, True)
            batch.n_tokens = n_seq
            assert C.llama_decode(ctx, batch) == 0
            pos += 1
        rates[f"decode_{n_seq}"] = round(n_seq * steps / (time.perf_counter() - started), 1)
    C.llama_batch_free(batch)
    C.llama_free(ctx)
    return {"shape": name, "prompt_tokens": len(prompt), "prefill": round(prefill, 1), **rates}


def main() -> None:
    path = (sys.argv[1] if len(sys.argv) > 1 else "") or str(ensure_model())
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    C.llama_log_set(_quiet, ctypes.c_void_p(0))
    C.llama_backend_init()
    model = C.llama_model_load_from_file(path.encode(), C.llama_model_default_params())
    vocab = C.llama_model_get_vocab(model)
    for round_ in range(rounds):
        for shape in SHAPES:
            print(json.dumps({"round": round_, **measure(model, vocab, shape, threads)}), flush=True)


if __name__ == "__main__":
    main()
