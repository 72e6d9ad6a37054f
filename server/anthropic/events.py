"""The answer in the Messages API's shape: the message object, and the stream from ``message_start``
to ``message_stop`` with ``event:`` lines. Pure: no HTTP and no model.

Content blocks are numbered 0..n in the order they start; a tool call's arguments go out as
``input_json_delta`` fragments as they are generated. A thinking model's thought comes first, as a
``thinking`` block (``thinking_delta`` fragments, then one ``signature_delta``); an empty thought
gives none. Anthropic counts ``input_tokens`` apart from the tokens read from the cache
(``cache_read_input_tokens``): their sum is the prompt. ``output_tokens`` counts the thought too.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import msgspec

from engine import Completion, FinishEvent, TokenEvent
from server.anthropic import wire as w
from server.conversation.reply import Reply, thought, whole
from server.conversation.types import CallArguments, CallEnd, CallStart, Delta, Reasoning, StopReason, Text
from server.errors import Problem, anthropic_body
from server.sse import ENCODER, named_frame

STOP: dict[StopReason, str] = {
    "end_turn": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_calls": "tool_use",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def usage(event: FinishEvent) -> w.Usage:
    u = event.usage
    return w.Usage(u.prompt_tokens - u.cached_tokens, u.completion_tokens, 0, u.cached_tokens)


def _input(arguments: str) -> Any:
    """A call's ``input`` object (the parser's arguments are JSON; a call cut short is not)."""
    try:
        return msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return {}


def _signature(digest: hashlib._Hash) -> str:
    return digest.hexdigest()[:32]


def signature(thought: str) -> str:
    """A thinking block's ``signature``. Anthropic's is an encrypted copy of the thought that its API
    verifies when the block comes back; ours is only a hash of the text (no secret, nothing checked on
    the way back): clients need the field, and equal thoughts get equal signatures."""
    return _signature(hashlib.sha256(thought.encode()))


def message_of(model: str, result: Completion, reply: Reply, omit_thought: bool = False) -> w.Message:
    """The whole (not streamed) answer; ``omit_thought``: its thinking block without the text."""
    content, calls = whole(reply, result.text, result.reasoning)
    blocks: list[w.ContentOut] = []
    reasoning = thought(result.reasoning)
    if reasoning:
        blocks.append(w.ThinkingOut("" if omit_thought else reasoning, signature(reasoning)))
    if content.strip() or not (calls or blocks):
        blocks.append(w.TextOut(content))
    blocks.extend(w.ToolUseOut(new_id("toolu"), c.name, _input(c.arguments)) for c in calls)
    finish = result.finish
    reason = reply.stop_reason(finish.reason)
    stop = finish.stop_sequence if reason == "stop_sequence" else None
    return w.Message(new_id("msg"), model, blocks, STOP[reason], stop, usage(finish))


_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


class MessageStream:
    """Engine events in, Messages stream frames out (a small state machine)."""

    __slots__ = (
        "_block",
        "_calls",
        "_held",
        "_model",
        "_n_prompt",
        "_next",
        "_omit_thought",
        "_reply",
        "_started",
        "_text_head",
        "_thought",
        "_thought_hash",
        "_thought_head",
    )

    def __init__(self, model: str, n_prompt: int, reply: Reply, omit_thought: bool = False) -> None:
        self._model, self._n_prompt, self._reply = model, n_prompt, reply
        self._started = False
        self._next = 0  # the next content block's index
        self._block: int | None = None  # the open text block, if any
        self._text_head = b""
        self._calls: dict[int, int] = {}  # the parser's call index -> its block index
        self._held = ""  # whitespace before anything else: dropped if a call comes first
        self._omit_thought = omit_thought  # ``thinking.display: omitted``: no thinking_delta events
        self._thought: int | None = None  # the open thinking block, if any
        self._thought_head = b""
        self._thought_hash = hashlib.sha256()  # of the thought as shown: its signature

    def _start(self, frames: list[bytes]) -> None:
        self._started = True
        shell = w.Message(new_id("msg"), self._model, [], None, None, w.Usage(self._n_prompt, 1))
        frames.append(named_frame(b"message_start", w.MessageStart(shell)))
        frames.append(_PING)

    def _open(self, block: w.ContentOut, frames: list[bytes]) -> int:
        index, self._next = self._next, self._next + 1
        frames.append(named_frame(b"content_block_start", w.BlockStart(index, block)))
        return index

    def _close(self, index: int, frames: list[bytes]) -> None:
        frames.append(named_frame(b"content_block_stop", w.BlockStop(index)))

    def _text(self, text: str, frames: list[bytes]) -> None:
        if self._block is None:
            if self._reply.parsing and not text.strip():
                self._held += text
                return
            self._block = self._open(w.TextOut(""), frames)
            # A text delta is the hottest event: its frame up to the text is built once, as bytes.
            self._text_head = (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                b'"delta":{"type":"text_delta","text":' % self._block
            )
            text, self._held = self._held + text, ""
        if text:
            frames.append(b"%s%s}}\n\n" % (self._text_head, ENCODER.encode(text)))

    def _think(self, text: str, frames: list[bytes]) -> None:
        """A piece of the thought (never empty: the reply drops what it does not show)."""
        if self._thought is None:
            self._thought = self._open(w.ThinkingOut("", ""), frames)
            # As hot as a text delta while the model thinks: the frame up to the text, built once.
            self._thought_head = (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                b'"delta":{"type":"thinking_delta","thinking":' % self._thought
            )
        self._thought_hash.update(text.encode())
        if not self._omit_thought:
            frames.append(b"%s%s}}\n\n" % (self._thought_head, ENCODER.encode(text)))

    def _end_thought(self, frames: list[bytes]) -> None:
        """The thinking block's signature, then its end: the answer begins (or the message ends)."""
        if self._thought is None:
            return
        sig = w.ThinkingBlockDelta(self._thought, w.SignatureDelta(_signature(self._thought_hash)))
        frames.append(named_frame(b"content_block_delta", sig))
        self._close(self._thought, frames)
        self._thought = None

    def _delta(self, d: Delta, frames: list[bytes]) -> None:
        if isinstance(d, Reasoning):
            self._think(d.text, frames)
            return
        self._end_thought(frames)
        if isinstance(d, Text):
            self._text(d.text, frames)
        elif isinstance(d, CallStart):
            if self._block is not None:
                self._close(self._block, frames)
                self._block = None
            self._held = ""
            self._calls[d.index] = self._open(w.ToolUseOut(new_id("toolu"), d.name, {}), frames)
        elif isinstance(d, CallArguments):
            delta = w.BlockDelta(self._calls[d.index], w.JsonDelta(d.text))
            frames.append(named_frame(b"content_block_delta", delta))
        elif isinstance(d, CallEnd):
            self._close(self._calls.pop(d.index), frames)

    def token(self, event: TokenEvent) -> bytes | None:
        text = event.text
        if self._block is not None and not self._reply.parsing:  # the hot path: one frame
            return b"%s%s}}\n\n" % (self._text_head, ENCODER.encode(text)) if text else None
        frames: list[bytes] = []
        if not self._started:
            self._start(frames)
        if self._reply.parsing:
            for d in self._reply.push(text, event.reasoning):
                self._delta(d, frames)
        else:
            self._text(text, frames)
        return b"".join(frames) if frames else None

    def finish(self, event: FinishEvent) -> bytes:
        last = self.token(event.token)
        frames = [last] if last is not None else []
        for d in self._reply.finish():
            self._delta(d, frames)
        self._end_thought(frames)  # a thought cut short by max_tokens, with no answer after it
        for index in self._calls.values():  # (the parser ends every call it started)
            self._close(index, frames)
        if self._block is not None:
            self._close(self._block, frames)
        reason = self._reply.stop_reason(event.reason)
        stop = event.stop_sequence if reason == "stop_sequence" else None
        delta = w.MessageDelta(w.StopDelta(STOP[reason], stop), usage(event))
        frames.append(named_frame(b"message_delta", delta))
        frames.append(_STOP)
        return b"".join(frames)

    def error(self, problem: Problem) -> bytes:
        frames: list[bytes] = []
        if not self._started:
            self._start(frames)
        frames.append(named_frame(b"error", anthropic_body(problem)))
        return b"".join(frames)
