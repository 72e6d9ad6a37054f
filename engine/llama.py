"""The only module that speaks to llama.cpp (through llama-cpp-python's low-level ctypes API).

It owns the model, the context and the batch buffer, and caches what the hot path would otherwise
ask llama.cpp for on every token: token pieces and end-of-generation ids.
"""

from __future__ import annotations

import bisect
import codecs
import ctypes
import hashlib
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import llama_cpp as C
import msgspec
import numpy as np
import numpy.typing as npt

from engine.errors import GenerationError, ValidationError

log = logging.getLogger("tokenspout.llama")

# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}  # its info is chatty


# llama.cpp's own report of the KV memory it allocated for the last context, e.g. "size = 288.00 MiB
# (24576 cells, 30 layers, 4/4 seqs), K (f16): ...": what the start-up log quotes.
_kv_report: list[str] = []


@C.llama_log_callback  # type: ignore[untyped-decorator]
def _log_to_python(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    python_level = _LEVELS.get(level, logging.DEBUG)
    if text.startswith(b"llama_kv_cache: size ="):
        _kv_report.append(text.decode("utf-8", "replace").removeprefix("llama_kv_cache: ").strip())
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

    def __init__(self, path: Path, n_gpu_layers: int = 0, *, repack: bool = True) -> None:
        init_backend()
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        # Repacked weights (interleaved for the CPU's SIMD width) take other matmul kernels for one
        # row than for several, so a row's logits could depend on its batch: deterministic mode can
        # turn them off.
        params.use_extra_bufts = repack
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
        self.n_layer: int = C.llama_model_n_layer(self.ptr)
        self.n_head: int = C.llama_model_n_head(self.ptr)
        self.n_head_kv: int = C.llama_model_n_head_kv(self.ptr)
        self.n_embd: int = C.llama_model_n_embd(self.ptr)
        # A recurrent (or hybrid) model's state holds no cell per token: its last tokens cannot be
        # removed alone, as rejecting a speculative draft needs.
        self.recurrent = bool(C.llama_model_is_recurrent(self.ptr) or C.llama_model_is_hybrid(self.ptr))
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

    def vocabulary(self) -> Vocabulary:
        """What a draft model must share with this one, cheapest to compare first (``digest`` last)."""
        vocab = self.vocab
        return Vocabulary(
            kind=C.llama_vocab_type(vocab),
            n_tokens=self.n_vocab,
            bos=self.bos,
            eos=self.eos,
            eog=self.eog,
            add_bos=self.add_bos,
            add_eos=bool(C.llama_vocab_get_add_eos(vocab)),
        )

    def vocab_digest(self) -> str:
        """sha256 of every token's text and attributes (normal, control, user-defined, ...) in id order:
        two models with the same digest turn every id into the same text. About 2 µs a token."""
        digest = hashlib.sha256()
        for token in range(self.n_vocab):
            digest.update(C.llama_vocab_get_text(self.vocab, token) or b"")
            digest.update(b"\0%d\0" % C.llama_vocab_get_attr(self.vocab, token))
        return digest.hexdigest()

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

    @property
    def weight_type(self) -> str:
        """The file type of the weights, as llama.cpp names it (``Q4_1``, ``Q4_K_M``, ``F16``...)."""
        return _FTYPE_NAMES.get(C.llama_model_ftype(self.ptr), "unknown")

    def kv_bytes_per_token(self, cell_type: int) -> int:
        """Bytes of K and V one token takes in the KV cache over all layers, from the model's shape.

        Head sizes come from the GGUF's ``attention.key_length``/``value_length`` where the model
        states them (they need not be n_embd / n_head), else n_embd / n_head as llama.cpp assumes.
        """
        arch = self.metadata("general.architecture") or ""
        default_head = self.n_embd // max(1, self.n_head)
        head_k = int(self.metadata(f"{arch}.attention.key_length") or default_head)
        head_v = int(self.metadata(f"{arch}.attention.value_length") or default_head)
        per_element = CELL_TYPES[cell_type][1]
        return int(self.n_layer * self.n_head_kv * (head_k + head_v) * per_element)

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

    def blank(self, token: int) -> bool:
        """Whether the token is whitespace only (a special token never is)."""
        return not self.special_piece(token).strip()

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

    def tokenize_tail(self, text: str, n: int) -> list[int]:
        """The last ``n`` tokens of ``tokenize(text, add_special=True)`` (TGI's ``truncate``), computed
        from the end of the text when it is long: tokenizing all of a 2 MB input takes half a second
        of a core that running streams need.

        A tail cut just before a word (a space after a non-space, where pre-tokenizers split) holds
        at least ``n + TAIL_MARGIN`` tokens; only its first few can tokenize otherwise than in the
        whole text. As a check, two tails cut at different words must agree on their last ``n``
        tokens, or the whole text is tokenized after all (as is a text without a word boundary in
        reach)."""
        if self.longest_piece is not None:
            reach = (n + TAIL_MARGIN) * self.longest_piece  # characters that surely hold that many tokens
            near = _word_start_before(text, len(text) - reach)
            far = _word_start_before(text, len(text) - 2 * reach)
            if near is not None and far is not None:
                utf8(text[:far])  # a lone surrogate where no tail reaches is refused all the same
                tail = self.tokenize(text[near:], add_special=True)[-n:]
                if self.tokenize(text[far:], add_special=True)[-n:] == tail:
                    return tail
        return self.tokenize(text, add_special=True)[-n:]


class Vocabulary(msgspec.Struct, frozen=True):
    """A vocabulary's shape: its kind (SentencePiece, BPE...), size and special tokens."""

    kind: int
    n_tokens: int
    bos: int
    eos: int
    eog: frozenset[int]
    add_bos: bool
    add_eos: bool


TAIL_MARGIN = 64  # tokens of a tail before the kept ones, where its cut may tokenize differently
_WORD_SEARCH = 1024  # characters searched back for a word boundary before giving up on a tail


def _word_start_before(text: str, at: int) -> int | None:
    """The last index at or before ``at`` where a space follows a non-space (so a pre-token begins),
    within ``_WORD_SEARCH`` characters; None if ``at`` is outside the text or there is none."""
    if at <= 0:
        return None
    for i in range(at, max(at - _WORD_SEARCH, 0), -1):
        if text[i].isspace() and not text[i - 1].isspace():
            return i
    return None


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


_FTYPE_NAMES = {
    getattr(C, name): name.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_")
    for name in dir(C)
    if name.startswith("LLAMA_FTYPE_") and name != "LLAMA_FTYPE_GUESSED"
}

# KV cell types the server uses: name and bytes per element (Q8_0: 32 values in 34 bytes).
CELL_TYPES: dict[int, tuple[str, float]] = {
    C.GGML_TYPE_F16: ("f16", 2.0),
    C.GGML_TYPE_Q8_0: ("q8_0", 34 / 32),
}


class Shape(msgspec.Struct, frozen=True):
    """How the context computes: KV cell type, micro-batch rows and flash attention.

    Two are offered (``EngineConfig.deterministic`` picks one): the fastest measured on CPU (F16 cells,
    micro-batches of 512, flash attention as llama.cpp sees fit) and the batch-invariant one described
    on :class:`Context`.
    """

    cell_type: int
    n_ubatch: int
    flash_attn: int


FAST = Shape(C.GGML_TYPE_F16, 512, C.LLAMA_FLASH_ATTN_TYPE_AUTO)
DETERMINISTIC = Shape(C.GGML_TYPE_Q8_0, 32, C.LLAMA_FLASH_ATTN_TYPE_ENABLED)


# llama_get_logits_ith returning the bare address (llama-cpp-python's binding returns a float
# pointer, whose address costs two more objects to read). Its own function object, so that the
# binding's is left as it is.
_get_logits_ith = C.llama_cpp._lib["llama_get_logits_ith"]
_get_logits_ith.argtypes = [C.llama_context_p_ctypes, ctypes.c_int32]
_get_logits_ith.restype = ctypes.c_void_p
_MAX_LOGITS_VIEWS = 4096  # far more rows than a batch outputs: reached only if the buffer keeps moving


class Context:
    """A llama context whose KV cache of ``n_ctx`` cells is shared out evenly among ``n_seq`` slots.

    Each slot has its own stream of cells (``kv_unified = False``): a sequence fills its stream from
    cell 0 upwards, as it would alone, and a slot's cells can be kept, saved and restored on their own
    (the prompt cache). In one shared pool, llama.cpp fills the holes a finished request leaves, so a
    sequence's next token can land below its earlier ones and attention sums its cells in another order.

    With the :data:`DETERMINISTIC` shape a row's logits do not depend on what else is in the batch or
    the cache: micro-batches under 64 rows (from 64 on, a tiled kernel rounds differently) and Q8_0
    cells (with F16 cells, a micro-batch of one row takes a split-KV attention path past 256 cells).
    """

    def __init__(
        self, model: Model, *, n_ctx: int, n_seq: int, n_batch: int, shape: Shape, n_threads: int
    ) -> None:
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(shape.n_ubatch, n_batch)
        params.n_seq_max = n_seq
        params.kv_unified = False
        params.type_k = params.type_v = shape.cell_type
        params.flash_attn_type = shape.flash_attn
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        _kv_report.clear()
        self.ptr = C.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise RuntimeError("llama.cpp could not create a context (is --ctx-size too large?)")
        self.model = model
        self.shape = shape
        self.n_ctx: int = C.llama_n_ctx(self.ptr)
        self.n_seq = n_seq
        self.n_ctx_slot: int = C.llama_n_ctx_seq(self.ptr)  # n_ctx / n_seq, rounded up to 256 cells
        self.n_batch: int = C.llama_n_batch(self.ptr)
        self.n_ubatch: int = C.llama_n_ubatch(self.ptr)
        self.memory = C.llama_get_memory(self.ptr)
        self.batch = Batch(self.n_batch)
        self._logits_row = ctypes.c_float * model.n_vocab
        self._logits_views: dict[int, npt.NDArray[np.float32]] = {}
        # What llama.cpp logged it allocated; None if this build words it otherwise.
        self.kv_report: str | None = _kv_report[-1] if _kv_report else None

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

    def keep(self, seq_id: int, n: int) -> None:
        """Keep the first ``n`` cells (positions 0..n-1) of ``seq_id`` and free the rest."""
        if not C.llama_memory_seq_rm(self.memory, seq_id, n, -1):
            raise RuntimeError(f"llama.cpp could not trim sequence {seq_id} to {n} cells")

    def cells(self, seq_id: int) -> int:
        """KV cells ``seq_id`` holds (its positions are contiguous from 0)."""
        top = C.llama_memory_seq_pos_max(self.memory, seq_id)
        return 0 if top < 0 else top - C.llama_memory_seq_pos_min(self.memory, seq_id) + 1

    def state_size(self, seq_id: int) -> int:
        """Bytes :meth:`save` would take for ``seq_id``."""
        return int(C.llama_state_seq_get_size(self.ptr, seq_id))

    def save(self, seq_id: int) -> bytes:
        """``seq_id``'s cells as llama.cpp's sequence state, in host memory."""
        size = self.state_size(seq_id)
        buf = (ctypes.c_uint8 * size)()
        written = C.llama_state_seq_get_data(self.ptr, buf, size, seq_id)
        if written != size:
            raise RuntimeError(f"llama.cpp wrote {written} of {size} bytes of sequence {seq_id}'s state")
        return bytes(buf)

    def restore(self, seq_id: int, data: bytes) -> None:
        """Replace ``seq_id``'s cells with a saved state; it fills the stream from cell 0."""
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if C.llama_state_seq_set_data(self.ptr, buf, len(data), seq_id) == 0:
            self.forget(seq_id)  # a failed load may leave part of it behind
            raise RuntimeError(f"llama.cpp could not restore a saved state into sequence {seq_id}")

    def logits(self, index: int) -> npt.NDArray[np.float32]:
        """The logits of batch row ``index``, as a view (valid until the next decode).

        This runs between two decodes, where every microsecond is on the critical path: making a
        numpy view of a ctypes pointer took 20-40 µs there (caches are cold after a decode), so each
        row address llama.cpp hands out gets its view made once. The address is what llama.cpp says
        holds this row's ``n_vocab`` logits now, so its view reads exactly that, whatever buffer it
        was first made for."""
        address = _get_logits_ith(self.ptr, index)
        if not address:
            raise GenerationError(f"llama.cpp holds no logits for batch row {index}")
        view = self._logits_views.get(address)
        if view is None:
            if len(self._logits_views) >= _MAX_LOGITS_VIEWS:  # the output buffer moved: start over
                self._logits_views.clear()
            view = np.ctypeslib.as_array(self._logits_row.from_address(address))
            self._logits_views[address] = view
        return view


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

    def add_draft(self, tokens: list[int], start: int, seq_id: int) -> None:
        """Append draft tokens at positions ``start..``, every one with its logits: each row's
        logits are what verification samples the token after it from."""
        i, n = self.size, len(tokens)
        self.tokens[i : i + n] = tokens
        self.positions[i : i + n] = np.arange(start, start + n, dtype=np.int32)
        self.seq_ids[i : i + n, 0] = seq_id
        self.wants_logits[i : i + n] = 1
        self.size = i + n

    def add_run(self, tokens: Sequence[int], position: int, seq_id: int, last_logits: bool) -> int:
        """Append ``tokens`` at positions ``position..``, logits for the last one only when
        ``last_logits``; returns the last row."""
        i, n = self.size, len(tokens)
        self.tokens[i : i + n] = tokens
        self.positions[i : i + n] = np.arange(position, position + n, dtype=np.int32)
        self.seq_ids[i : i + n, 0] = seq_id
        self.wants_logits[i : i + n] = 0
        self.wants_logits[i + n - 1] = last_logits
        self.size = i + n
        return i + n - 1

    def seal(self) -> None:
        self.struct.n_tokens = self.size
