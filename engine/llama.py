"""The only module that speaks to llama.cpp (through llama-cpp-python's low-level ctypes API).

It owns the model, the context and the batch buffer, and caches what the hot path would otherwise
ask llama.cpp for on every token: token pieces and end-of-generation ids.
"""

from __future__ import annotations

import bisect
import codecs
import ctypes
import itertools
import logging
from pathlib import Path

import llama_cpp as C
import numpy as np
import numpy.typing as npt

from engine.errors import ValidationError

log = logging.getLogger("tokenspout.llama")

# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}  # its info is chatty


@C.llama_log_callback  # type: ignore[untyped-decorator]
def _log_to_python(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    python_level = _LEVELS.get(level, logging.DEBUG)
    if log.isEnabledFor(python_level):
        log.log(python_level, text.decode("utf-8", "replace").rstrip())


_backend_ready = False


def init_backend() -> None:
    """Once per process. ``_log_to_python`` is module-level so llama.cpp never calls a freed callback."""
    global _backend_ready
    if not _backend_ready:
        C.llama_log_set(_log_to_python, ctypes.c_void_p(0))
        C.llama_backend_init()
        _backend_ready = True


class Model:
    """A loaded GGUF model and its vocabulary."""

    def __init__(self, path: Path, n_gpu_layers: int = 0) -> None:
        init_backend()
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        self.ptr = C.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise RuntimeError(f"llama.cpp could not load the model {path}")
        self.path = path
        self.vocab = C.llama_model_get_vocab(self.ptr)
        self.n_vocab: int = C.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = C.llama_model_n_ctx_train(self.ptr)
        self.add_bos: bool = C.llama_vocab_get_add_bos(self.vocab)
        self.bos: int = C.llama_vocab_bos(self.vocab)
        self.eos: int = C.llama_vocab_eos(self.vocab)
        self.eog = frozenset(t for t in range(self.n_vocab) if C.llama_vocab_is_eog(self.vocab, t))
        self._pieces: list[bytes | None] = [None] * self.n_vocab
        self._special_pieces: list[bytes | None] = [None] * self.n_vocab
        self._piece_buf = ctypes.create_string_buffer(256)
        self.longest_piece = self._longest_piece()

    def _longest_piece(self) -> int | None:
        """The most bytes of text one token can stand for, when the tokenizer guarantees that every
        byte of a text is covered by a token whose piece holds it: SentencePiece falls back to byte
        tokens, byte-level BPE has a token for every byte. Then a text of B bytes needs at least
        B / longest_piece tokens, which lets a prompt that surely cannot fit be refused before it is
        tokenized. Special tokens count with their text, since prompts are tokenized with
        ``parse_special``. None for other tokenizers (WordPiece and Unigram map a whole unknown word
        to one token), which get no such shortcut."""
        if C.llama_vocab_type(self.vocab) not in (C.LLAMA_VOCAB_TYPE_SPM, C.LLAMA_VOCAB_TYPE_BPE):
            return None
        return max(len(self._render(t, special=True)) for t in range(self.n_vocab))

    @property
    def description(self) -> str:
        """llama.cpp's one-line description, e.g. ``llama ?B Q4_1``."""
        buf = ctypes.create_string_buffer(256)
        C.llama_model_desc(self.ptr, buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def close(self) -> None:
        if self.ptr:
            C.llama_model_free(self.ptr)
            self.ptr = None

    def metadata(self, key: str) -> str | None:
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = C.llama_model_meta_val_str(self.ptr, key.encode(), buf, size)
        if n < 0:
            return None
        if n >= size:  # chat templates can be long: ask again with room for all of it
            buf = ctypes.create_string_buffer(n + 1)
            C.llama_model_meta_val_str(self.ptr, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", "replace")

    def token_text(self, token: int, special: bool = True) -> str:
        return self._render(token, special).decode("utf-8", "replace")

    def piece(self, token: int) -> bytes:
        """The bytes a generated token adds to the text (special tokens render empty). Cached."""
        cached = self._pieces[token]
        if cached is None:
            cached = self._pieces[token] = self._render(token, special=False)
        return cached

    def special_piece(self, token: int) -> bytes:
        """Like :meth:`piece`, but special tokens render as their text (``<|python_tag|>``). Cached."""
        cached = self._special_pieces[token]
        if cached is None:
            cached = self._special_pieces[token] = self._render(token, special=True)
        return cached

    def _render(self, token: int, special: bool, buf: ctypes.Array[ctypes.c_char] | None = None) -> bytes:
        """The token's bytes. ``buf``: a scratch buffer of the caller's own, for threads other than
        the scheduler's (which owns ``_piece_buf``)."""
        buf = self._piece_buf if buf is None else buf
        n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def token_spans(self, text: str) -> list[tuple[int, str, int, int]]:
        """Tokenize ``text``: each token's id, its text, and the [start, stop) characters of ``text``
        it covers. A token holding part of a character covers that whole character; a token the
        tokenizer adds itself (BOS) covers nothing."""
        tokens = self.tokenize(text, add_special=True)
        buf = ctypes.create_string_buffer(256)  # called off the scheduler thread: not _piece_buf
        pieces = [self._render(t, True, buf) for t in tokens]
        if self.add_bos and tokens and tokens[0] == self.bos and not text.encode().startswith(pieces[0]):
            pieces[0] = b""
        if b"".join(pieces) != utf8(text):
            # The tokenizer rewrote the text (a leading space, say): offsets of the rendered pieces.
            return _running_spans(tokens, pieces)
        char_ends = list(itertools.accumulate(len(c.encode()) for c in text))
        spans, at = [], 0
        for token, piece in zip(tokens, pieces, strict=True):
            first = bisect.bisect_right(char_ends, at)
            last = bisect.bisect_left(char_ends, at + len(piece)) + 1 if piece else first
            spans.append((token, text[first:last], first, last))
            at += len(piece)
        return spans

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        data = utf8(text)
        capacity = len(data) + 16
        tokens = (C.llama_token * capacity)()
        n = C.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special, parse_special)
        if n < 0:
            capacity = -n
            tokens = (C.llama_token * capacity)()
            n = C.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special, parse_special)
        if n < 0:
            raise ValidationError("the prompt could not be tokenized", "prompt")
        # numpy's tolist is several times faster than slicing the ctypes array for long prompts;
        # either runs holding the GIL in one call, so this keeps that pause short.
        ids: list[int] = np.ctypeslib.as_array(tokens)[:n].tolist()
        return ids


def utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 (and no token) can stand for it
        raise ValidationError(
            f"the text is not valid Unicode: {exc.reason} at {exc.start}", "prompt"
        ) from exc


def _running_spans(tokens: list[int], pieces: list[bytes]) -> list[tuple[int, str, int, int]]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    spans, at = [], 0
    for token, piece in zip(tokens, pieces, strict=True):
        n_chars = len(decoder.decode(piece))
        spans.append((token, piece.decode("utf-8", "replace"), at, at + n_chars))
        at += n_chars
    return spans


class Context:
    """A llama context whose KV cache of ``n_ctx`` cells is shared out evenly among ``n_seq`` slots.

    Greedy decoding must give one text whether a request runs alone or beside others (the guide's
    contract), so a row's logits must not depend on what else is in the cache. Besides micro-batches
    under 64 rows (``EngineConfig.n_ubatch``), two choices see to it:

    - Each slot has its own stream of cells (``kv_unified = False``). In one shared pool, llama.cpp
      fills the holes a finished request leaves, so a running sequence's next token can land in a
      cell below its earlier ones; flash attention then sums the cells in another order and rounds
      differently. In its own stream, a sequence starts at cell 0 (freeing it moves the stream's head
      back there) and grows upwards, exactly as when it runs alone.
    - The cache is Q8_0. With F16 cells, a micro-batch of one row (a request decoding alone) takes a
      split-KV attention path once the stream passes 256 cells, which rounds differently from the path
      a batch of several rows takes. Quantized cells take one path always; Q8_0 cost no speed or
      perplexity here (docs/design.md has the figures).
    """

    def __init__(
        self, model: Model, *, n_ctx: int, n_seq: int, n_batch: int, n_ubatch: int, n_threads: int
    ) -> None:
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_ubatch, n_batch)
        params.n_seq_max = n_seq
        params.kv_unified = False
        params.type_k = params.type_v = C.GGML_TYPE_Q8_0
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        self.ptr = C.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise RuntimeError("llama.cpp could not create a context (is --ctx-size too large?)")
        self.model = model
        self.n_ctx: int = C.llama_n_ctx(self.ptr)
        self.n_ctx_slot: int = C.llama_n_ctx_seq(self.ptr)  # n_ctx / n_seq, rounded up to 256 cells
        self.n_batch: int = C.llama_n_batch(self.ptr)
        self.memory = C.llama_get_memory(self.ptr)
        self.batch = Batch(self.n_batch)

    def close(self) -> None:
        if self.ptr:
            C.llama_free(self.ptr)
            self.ptr = None

    def decode(self) -> int:
        """Decode the batch buffer's tokens; 0 on success, llama_decode's code otherwise."""
        return int(C.llama_decode(self.ptr, self.batch.struct))

    def forget(self, seq_id: int) -> None:
        """Free every KV cell of ``seq_id``."""
        C.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def used_cells(self, n_seq: int) -> int:
        """KV cells in use, summed over sequences (positions are contiguous from 0 in each)."""
        total = 0
        for seq_id in range(n_seq):
            top = C.llama_memory_seq_pos_max(self.memory, seq_id)
            if top >= 0:
                total += top - C.llama_memory_seq_pos_min(self.memory, seq_id) + 1
        return total

    def logits(self, index: int) -> npt.NDArray[np.float32]:
        """The logits of batch row ``index``, as a view (valid until the next decode)."""
        pointer = C.llama_get_logits_ith(self.ptr, index)
        return np.ctypeslib.as_array(pointer, shape=(self.model.n_vocab,))


class Batch:
    """A llama_batch whose arrays are numpy buffers we own, so prompt chunks are copied with slices."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tokens = np.zeros(capacity, dtype=np.int32)
        self.positions = np.zeros(capacity, dtype=np.int32)
        self.n_seq_ids = np.ones(capacity, dtype=np.int32)
        self.seq_ids = np.zeros((capacity, 1), dtype=np.int32)
        self.wants_logits = np.zeros(capacity, dtype=np.int8)
        row = ctypes.POINTER(C.llama_seq_id)
        base = self.seq_ids.ctypes.data
        self._rows = (row * capacity)(*(ctypes.cast(base + 4 * i, row) for i in range(capacity)))
        self.struct = C.llama_batch(
            n_tokens=0,
            token=self.tokens.ctypes.data_as(ctypes.POINTER(C.llama_token)),
            embd=None,
            pos=self.positions.ctypes.data_as(ctypes.POINTER(C.llama_pos)),
            n_seq_id=self.n_seq_ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            seq_id=self._rows,
            logits=self.wants_logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )
        self.size = 0

    def clear(self) -> None:
        self.size = 0

    def add(self, token: int, position: int, seq_id: int, logits: bool) -> int:
        """Append one token; returns its row (the index to sample from when ``logits``)."""
        i = self.size
        self.tokens[i] = token
        self.positions[i] = position
        self.seq_ids[i, 0] = seq_id
        self.wants_logits[i] = logits
        self.size = i + 1
        return i

    def add_span(self, tokens: tuple[int, ...], start: int, stop: int, seq_id: int, last_logits: bool) -> int:
        """Append prompt tokens ``tokens[start:stop]`` at positions ``start..stop-1``; returns the
        last row."""
        i, n = self.size, stop - start
        self.tokens[i : i + n] = tokens[start:stop]
        self.positions[i : i + n] = np.arange(start, stop, dtype=np.int32)
        self.seq_ids[i : i + n, 0] = seq_id
        self.wants_logits[i : i + n] = 0
        self.wants_logits[i + n - 1] = last_logits
        self.size = i + n
        return i + n - 1

    def seal(self) -> None:
        self.struct.n_tokens = self.size
