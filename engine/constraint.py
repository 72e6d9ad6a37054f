"""Constrained decoding: the output must match a grammar (a JSON schema, a regex or a Lark grammar).

llguidance does the work. It reads the model's vocabulary once, compiles each request's grammar in
well under a millisecond, and fills a token mask in ~20 µs on the default model's 49,152 tokens. It
rejects what it cannot enforce (an unknown JSON-schema keyword, a bad regex) instead of skipping it, so
a request never gets output that only looks constrained. We chose it over llama.cpp's own GBNF sampler:
llama-cpp-python's JSON-schema-to-GBNF converter silently drops numeric bounds, and llama.cpp aborts the
process when a grammar rejects an accepted token.

Per token (:class:`Guide`): the sequence's ordinary sampler chain picks a token first; only if the
grammar rejects it is the full mask computed and applied to the logits, and the chain samples again
(llama.cpp's own trick: the mask is needed rarely, as a model mostly writes what the grammar allows).
End-of-generation tokens are allowed only where the grammar is complete.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import llama_cpp as C
import llguidance
import llguidance.llamacpp
import llguidance.numpy
import numpy as np
import numpy.typing as npt

from engine.errors import GenerationError, ValidationError
from engine.llama import Model
from engine.types import Constraint

if TYPE_CHECKING:  # a TypedDict declared only in llguidance's stubs
    from llguidance._lib import JsonCompileOptions

log = logging.getLogger("tokenspout.constraint")

# Draws before a refused token's grammar gives up on the mask (each bans the token it refused).
_MAX_REDRAWS = 4

# JSON written as `{"a": 1, "b": [2, 3]}`, with no other whitespace. llguidance's default lets any
# amount of whitespace in between, and a small model sampled at temperature 1 can spend its whole budget
# on newlines inside an object. A schema's own "x-guidance" options still win.
COMPACT_JSON: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


class Grammars:
    """Compiles constraints for one model (llguidance's view of its vocabulary is built once)."""

    def __init__(self, model: Model) -> None:
        self._model = model
        # Every end-of-generation token (not just EOS) may end a complete structure.
        with warnings.catch_warnings():  # it calls a llama-cpp-python alias deprecated once per token
            warnings.simplefilter("ignore", DeprecationWarning)
            self._tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(
                model.vocab, n_vocab=model.n_vocab, eos_token=sorted(model.eog)
            )

    def special_token(self, text: str) -> int | None:
        """The id of ``text`` when the vocabulary holds it as one token that llguidance treats as
        special (a control token, or a user-defined one spelled ``<...>``), else None. A grammar must
        name such a token by id (``<[id]>``): spelled as text it means other tokens, and the model's
        own token would be refused."""
        tokens = self._model.tokenize(text, add_special=False)
        if len(tokens) != 1:
            return None
        token = tokens[0]
        attr = C.llama_vocab_get_attr(self._model.vocab, token)
        if attr & C.LLAMA_TOKEN_ATTR_CONTROL:
            return token
        user_defined = attr & C.LLAMA_TOKEN_ATTR_USER_DEFINED
        return token if user_defined and text.startswith("<") and text.endswith(">") else None

    def compile(self, constraint: Constraint) -> llguidance.LLMatcher:
        """A matcher at the start of ``constraint``; ValidationError (naming its field) if llguidance
        cannot enforce it."""
        grammar = _grammar(constraint)
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self._tokenizer)
        if failed:
            raise ValidationError(
                f"`{constraint.field or constraint.kind}` cannot be enforced: {messages[0].strip()}",
                constraint.field,
            )
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValidationError(
                f"`{constraint.field or constraint.kind}` cannot be enforced: {matcher.get_error()}",
                constraint.field,
            )
        return matcher


def _grammar(constraint: Constraint) -> str:
    kind, source = constraint.kind, constraint.source
    if kind == "json_schema":
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(source, defaults=COMPACT_JSON)
        except ValueError as exc:
            raise ValidationError(
                f"`{constraint.field or kind}` is not a JSON schema: {exc}", constraint.field
            ) from exc
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(source)
    return llguidance.LLMatcher.grammar_from_lark(source)


class Guide:
    """One sequence's position in its grammar. Lives on the scheduler thread."""

    __slots__ = ("_bitmask", "_n_vocab", "_spell", "field", "matcher")

    def __init__(
        self,
        matcher: llguidance.LLMatcher,
        n_vocab: int,
        spell: Callable[[str], list[int]],
        field: str | None = None,
    ) -> None:
        self.matcher = matcher
        self._n_vocab = n_vocab
        self._spell = spell  # text -> ordinary tokens (no special ones)
        self.field = field  # the request field the grammar came from, for errors
        self._bitmask = llguidance.numpy.allocate_token_bitmask(1, n_vocab)

    def allows(self, token: int) -> bool:
        return bool(self.matcher.validate_tokens([token]))

    def restrict(self, logits: npt.NDArray[np.float32]) -> None:
        """Set the logit of every token the grammar forbids next to -inf, in place."""
        llguidance.numpy.fill_next_token_bitmask(self.matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask.view(np.uint8), count=self._n_vocab, bitorder="little")
        np.copyto(logits, np.float32(-np.inf), where=~bits.view(np.bool_))

    def resample(self, logits: npt.NDArray[np.float32], sample: Callable[[], int]) -> int:
        """A token the grammar takes, once the sampled one was refused: the logits are masked and
        ``sample`` draws again. llguidance's mask can still offer a token its matcher then refuses: a
        special token whose text is exactly the bytes the grammar forces (Qwen2.5's ``<tool_call>``,
        151657, where a grammar spells the marker as text). Such a token is banned and the draw
        repeated; where nothing is left, the forced text is spelled with ordinary tokens, which the
        grammar takes. Only a grammar that takes no token at all fails the request."""
        self.restrict(logits)
        refused = -1
        for _ in range(_MAX_REDRAWS):
            token = sample()
            if self.allows(token):
                return token
            refused = token
            logits[refused] = -np.inf
            if not np.isfinite(logits).any():
                break
        forced = self.matcher.compute_ff_bytes().decode("utf-8", "ignore")
        spelled = self._spell(forced[:1]) if forced else []
        if spelled and self.allows(spelled[0]):
            return spelled[0]
        where = self.field or "the grammar"
        log.error(
            "constraint %s: no token can continue it; refused token %d, forced text %r, matcher: %s",
            where,
            refused,
            forced,
            self.matcher.get_error() or "no error",
        )
        raise GenerationError(
            f"the output constraint `{where}` cannot go on: the grammar takes no token this model can write "
            f"here (the model's token {refused} was refused)"
        )

    def accept(self, token: int) -> None:
        """Advance past ``token``. Only a broken grammar state can refuse a token sampled under its
        mask: that fails this request, never the engine."""
        if not self.matcher.consume_token(token):
            raise GenerationError(f"the output constraint failed: {self.matcher.get_error()}")

    def takes(self, tokens: list[int]) -> int:
        """How many of ``tokens``, in order from here, the grammar would take (without advancing)."""
        return int(self.matcher.validate_tokens(tokens))

    def forced(self, limit: int) -> list[int]:
        """At most ``limit`` tokens the grammar allows as the only continuation from here (a schema's
        keys, ``", "``, closing brackets), without advancing past them: a draft that is certain.
        Empty where the grammar leaves a choice."""
        tokens: list[int] = self.matcher.compute_ff_tokens()
        return tokens[:limit] if len(tokens) > limit else tokens

    @property
    def complete(self) -> bool:
        """Nothing more may follow: the generation is over."""
        return bool(self.matcher.is_stopped())
