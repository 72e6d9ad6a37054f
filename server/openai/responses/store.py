"""Kept responses, for ``previous_response_id`` and ``GET``/``DELETE /v1/responses/{id}``.

In memory and bounded (``--responses-store-size``): the least recently used go first. A response is
kept with the turns that led to it and its answer, so a follow-up sends only its new input and, with
the prompt cache, only the new tokens are prefilled. Touched only from the event loop: no locks.
"""

from __future__ import annotations

from collections import OrderedDict

from server.conversation.types import Turn
from server.errors import NotFound
from server.openai.responses import wire as w


class Kept:
    __slots__ = ("response", "turns")

    def __init__(self, response: w.Response, turns: tuple[Turn, ...]) -> None:
        self.response, self.turns = response, turns


class ResponseStore:
    def __init__(self, size: int) -> None:
        self.size = size
        self._kept: OrderedDict[str, Kept] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def put(self, response: w.Response, turns: tuple[Turn, ...]) -> None:
        if self.size <= 0:
            return
        self._kept[response.id] = Kept(response, turns)
        self._kept.move_to_end(response.id)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)

    def get(self, ident: str, field: str = "response_id") -> Kept:
        kept = self._kept.get(ident)
        if kept is None:
            raise NotFound(
                f"Response with id {ident!r} not found: it was never stored (store: false), was deleted, "
                f"or was evicted (this server keeps the {self.size} most recently used responses)",
                field,
            )
        self._kept.move_to_end(ident)
        return kept

    def delete(self, ident: str) -> None:
        self.get(ident)
        del self._kept[ident]
