"""Incremental detokenization: whole UTF-8 characters only, and stop strings never released.

A token can end in the middle of a multi-byte character (emoji, CJK), and a stop string can span
several tokens. :class:`TextStream` holds back exactly what might still turn out to be either.
"""

from __future__ import annotations

import codecs


class TextStream:
    """Feed token bytes with :meth:`push`; it returns the text that is now safe to release."""

    __slots__ = ("_decoder", "_held", "_max_stop", "_stops", "matched", "stopped")

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        self._max_stop = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text (Anthropic reports it)

    def push(self, piece: bytes) -> str:
        if self.stopped:  # nothing after a stop string is ever released
            return ""
        text = self._decoder.decode(piece)
        if not self._stops:
            return text
        held = self._held + text
        cut, stop = _earliest_match(held, self._stops)
        if cut >= 0:
            self.stopped, self.matched = True, stop
            self._held = ""
            return held[:cut]
        keep = _longest_stop_prefix_suffix(held, self._stops, self._max_stop)
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def flush(self) -> str:
        """Release the text held back for a possible stop string (the generation ended another way).
        Bytes of a character the generation never finished are dropped, not turned into U+FFFD."""
        text, self._held = self._held, ""
        self._decoder.reset()
        return text


def _earliest_match(text: str, stops: tuple[str, ...]) -> tuple[int, str | None]:
    best, which = -1, None
    for stop in stops:
        at = text.find(stop)
        if at >= 0 and (best < 0 or at < best):
            best, which = at, stop
    return best, which


def _longest_stop_prefix_suffix(text: str, stops: tuple[str, ...], max_stop: int) -> int:
    """Length of the longest tail of ``text`` that some stop string starts with."""
    for size in range(min(len(text), max_stop - 1), 0, -1):
        tail = text[-size:]
        if any(stop.startswith(tail) for stop in stops):
            return size
    return 0
