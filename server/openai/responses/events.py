"""The answer in the Responses API's shape: the ``response`` object, and the typed stream events
from ``response.created`` to ``response.completed``. Pure: no HTTP and no model.

Every event carries ``type`` and ``sequence_number`` and goes out with an ``event:`` line. An output
item is announced (``output_item.added``) before any of its content and repeated whole when it ends
(``output_item.done``: Codex reads calls only from there); the closing ``response.completed`` carries
the whole response with ``output`` and ``usage`` (the agents SDK builds its turn from it).

A thinking model's thought is a ``reasoning`` item before the answer's items, its text one
``reasoning_text`` part streamed as ``response.reasoning_text.delta`` events. Its part is announced with
``response.content_part.added``/``done`` and a ``reasoning_text`` part, as OpenAI's API reference types
those events (vLLM sends ``response.reasoning_part.*`` instead, which the openai SDK does not know).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from engine import Completion, FinishEvent, FinishReason, TokenEvent
from engine.chat import ToolCall
from server.conversation.reply import Reply, thought, whole
from server.conversation.types import (
    CallArguments,
    CallEnd,
    CallStart,
    Delta,
    Reasoning,
    StopReason,
    Text,
    Turn,
)
from server.errors import Problem
from server.openai.responses import wire as w
from server.openai.responses.translate import decoded, encrypted
from server.sse import ENCODER, named_frame


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Echo:
    """The request's settings, echoed in every ``response`` object of one answer."""

    __slots__ = ("body", "created_at", "encrypted_thoughts", "id", "model", "previous")

    def __init__(self, body: w.ResponsesRequest, model: str, previous: str | None) -> None:
        self.id, self.created_at = new_id("resp"), int(time.time())
        self.body, self.model, self.previous = body, model, previous
        # Codex asks for it when it keeps the conversation itself (store: false)
        self.encrypted_thoughts = "reasoning.encrypted_content" in (body.include or ())

    def response(
        self,
        status: str,
        output: list[w.OutputItem],
        usage: w.Usage | None = None,
        *,
        error: w.ResponseError | None = None,
        incomplete: str | None = None,
    ) -> w.Response:
        b = self.body
        choice: str | w.NamedChoiceOut = "auto"
        if isinstance(b.tool_choice, str):
            choice = b.tool_choice
        elif b.tool_choice is not None and b.tool_choice.name:
            choice = w.NamedChoiceOut(b.tool_choice.name)
        fmt = b.text.format if b.text and b.text.format else None
        text = w.TextOut(w.FormatOut("text"))
        if fmt is not None and fmt.type != "text":
            text = w.TextOut(w.FormatOut(fmt.type))
            if fmt.type == "json_schema":
                text.format.name = fmt.name or "response"
                text.format.schema = fmt.schema or {}
                text.format.strict = fmt.strict if fmt.strict is not None else False
                if fmt.description is not None:
                    text.format.description = fmt.description
        tools = [
            w.FunctionToolOut(t.name or "", t.parameters or {}, t.description, t.strict is not False)
            for t in b.tools or ()
        ]
        reasoning = (
            w.ReasoningOut(b.reasoning.effort, b.reasoning.summary) if b.reasoning else w.ReasoningOut()
        )
        return w.Response(
            id=self.id,
            created_at=self.created_at,
            model=self.model,
            status=status,  # type: ignore[arg-type]  # one of the four, from this module
            output=output,
            instructions=b.instructions,
            max_output_tokens=b.max_output_tokens,
            parallel_tool_calls=b.parallel_tool_calls is not False,
            previous_response_id=self.previous,
            reasoning=reasoning,
            store=b.store,
            temperature=1.0 if b.temperature is None else b.temperature,
            text=text,
            tool_choice=choice,
            tools=tools,
            top_p=1.0 if b.top_p is None else b.top_p,
            metadata=b.metadata or {},
            user=b.user,
            usage=usage,
            error=error,
            incomplete_details=w.IncompleteDetails(incomplete) if incomplete else None,
            service_tier=b.service_tier or "default",
        )

    def final(self, output: list[w.OutputItem], reason: StopReason, finish: FinishEvent) -> w.Response:
        if reason == "length":
            return self.response("incomplete", output, usage(finish), incomplete="max_output_tokens")
        return self.response("completed", output, usage(finish))


def usage(event: FinishEvent) -> w.Usage:
    u = event.usage
    return w.Usage(
        u.prompt_tokens,
        w.InputTokensDetails(u.cached_tokens),
        u.completion_tokens,
        w.OutputTokensDetails(u.reasoning_tokens),
        u.total_tokens,
    )


def assistant_turn(output: list[w.OutputItem]) -> Turn:
    """The answer as a turn of the conversation, for a follow-up's ``previous_response_id``: its
    thought goes back to the template as the turn's reasoning."""
    text = "".join(p.text for item in output if isinstance(item, w.MessageItem) for p in item.content)
    calls = tuple(
        ToolCall(item.call_id, item.name, decoded(item.arguments))
        for item in output
        if isinstance(item, w.FunctionCallItem)
    )
    thoughts = [p.text for item in output if isinstance(item, w.ReasoningItem) for p in item.content]
    return Turn("assistant", text, calls, reasoning="\n\n".join(thoughts) or None)


def cut_in_thought(finish: FinishEvent) -> bool:
    """The token budget ran out before the thought closed (its last token was still the thought's)."""
    return finish.reason is FinishReason.LENGTH and finish.token.reasoning


def reasoning_item(echo: Echo, ident: str, text: str, cut: bool) -> w.ReasoningItem:
    item = w.ReasoningItem(ident, [w.ReasoningText(text)], status="incomplete" if cut else "completed")
    if echo.encrypted_thoughts:
        item.encrypted_content = encrypted(text)
    return item


def response_of(echo: Echo, result: Completion, reply: Reply) -> w.Response:
    """The whole (not streamed) answer."""
    content, calls = whole(reply, result.text, result.reasoning)
    output: list[w.OutputItem] = []
    shown = thought(result.reasoning)
    cut = bool(shown) and cut_in_thought(result.finish)
    if shown:
        output.append(reasoning_item(echo, new_id("rs"), shown, cut))
    # An empty answer is one empty message, as OpenAI sends it; an answer cut in its thought has none.
    if content.strip() or not (calls or cut):
        output.append(w.MessageItem(new_id("msg"), [w.OutputText(content)]))
    output.extend(w.FunctionCallItem(new_id("fc"), c.id, c.name, c.arguments) for c in calls)
    return echo.final(output, reply.stop_reason(result.finish.reason), result.finish)


Done = Callable[[w.Response], None]

_ADDED, _ITEM_DONE = "response.output_item.added", "response.output_item.done"
_PART_ADDED, _PART_DONE = "response.content_part.added", "response.content_part.done"
_TEXT_DONE, _THOUGHT_DONE = "response.output_text.done", "response.reasoning_text.done"
_ARGS_DELTA, _ARGS_DONE = "response.function_call_arguments.delta", "response.function_call_arguments.done"


class _Streamed:
    """The message or reasoning item being streamed: its id, place and text so far."""

    __slots__ = ("head", "id", "index", "texts")

    def __init__(self, ident: str, index: int, event: bytes, fields: bytes = b"") -> None:
        self.id, self.index = ident, index
        self.texts: list[str] = []
        # A text delta is the hottest event: its frame up to the delta is built once, as bytes.
        head = b'event: %s\ndata: {"type":"%s","item_id":"%s","output_index":%d,"content_index":0,%s"delta":'
        self.head = head % (event, event, ident.encode(), index, fields)


def _message(ident: str, index: int) -> _Streamed:
    return _Streamed(ident, index, b"response.output_text.delta", b'"logprobs":[],')


def _thought(ident: str, index: int) -> _Streamed:
    return _Streamed(ident, index, b"response.reasoning_text.delta")


class _Call:
    __slots__ = ("call_id", "id", "index", "name")

    def __init__(self, ident: str, index: int, call_id: str, name: str) -> None:
        self.id, self.index, self.call_id, self.name = ident, index, call_id, name


class ResponseStream:
    """Engine events in, Responses stream frames out (a small state machine). ``done`` receives the
    final response (to store it)."""

    __slots__ = (
        "_calls",
        "_echo",
        "_held",
        "_message",
        "_output",
        "_reply",
        "_seq",
        "_started",
        "_thought",
        "done",
    )

    def __init__(self, echo: Echo, reply: Reply, done: Done | None = None) -> None:
        self._echo, self._reply, self.done = echo, reply, done
        self._seq = 0
        self._started = False
        self._output: list[tuple[int, w.OutputItem]] = []  # finished items and their output_index
        self._message: _Streamed | None = None
        self._thought: _Streamed | None = None  # the reasoning item, while the thought goes on
        self._calls: dict[int, _Call] = {}  # the parser's call index -> the call item being streamed
        self._held = ""  # whitespace before anything else: dropped if a call comes first

    def _next(self) -> int:
        self._seq += 1
        return self._seq - 1

    def _event(
        self,
        event: w.ResponseEvent
        | w.ItemEvent
        | w.PartEvent
        | w.TextDoneEvent
        | w.ReasoningDoneEvent
        | w.ArgumentsDoneEvent
        | w.ArgumentsDeltaEvent,
    ) -> bytes:
        return named_frame(event.type.encode(), event)

    def _lifecycle(self, kind: str, response: w.Response) -> bytes:
        return self._event(w.ResponseEvent(kind, self._next(), response))

    def _start(self, frames: list[bytes]) -> None:
        self._started = True
        shell = self._echo.response("in_progress", [])
        frames.append(self._lifecycle("response.created", shell))
        frames.append(self._lifecycle("response.in_progress", shell))

    def _think(self, text: str, frames: list[bytes]) -> None:
        t = self._thought
        if t is None:  # the thought comes first: nothing else is open yet
            t = self._thought = _thought(new_id("rs"), len(self._output))
            item = w.ReasoningItem(t.id, [], status="in_progress")
            frames.append(self._event(w.ItemEvent(_ADDED, self._next(), t.index, item)))
            part = w.PartEvent(_PART_ADDED, self._next(), t.id, t.index, 0, w.ReasoningText(""))
            frames.append(self._event(part))
        t.texts.append(text)
        frames.append(b'%s%s,"sequence_number":%d}\n\n' % (t.head, ENCODER.encode(text), self._next()))

    def _close_thought(self, frames: list[bytes], cut: bool = False) -> None:
        t = self._thought
        if t is None:
            return
        self._thought = None
        text = "".join(t.texts)
        frames.append(self._event(w.ReasoningDoneEvent(_THOUGHT_DONE, self._next(), t.id, t.index, 0, text)))
        part = w.ReasoningText(text)
        frames.append(self._event(w.PartEvent(_PART_DONE, self._next(), t.id, t.index, 0, part)))
        item = reasoning_item(self._echo, t.id, text, cut)
        frames.append(self._event(w.ItemEvent(_ITEM_DONE, self._next(), t.index, item)))
        self._output.append((t.index, item))

    def _open_message(self, frames: list[bytes]) -> _Streamed:
        m = self._message = _message(new_id("msg"), len(self._output) + len(self._calls))
        item = w.MessageItem(m.id, [], "in_progress")
        frames.append(self._event(w.ItemEvent(_ADDED, self._next(), m.index, item)))
        part = w.PartEvent(_PART_ADDED, self._next(), m.id, m.index, 0, w.OutputText(""))
        frames.append(self._event(part))
        return m

    def _text(self, text: str, frames: list[bytes]) -> None:
        m = self._message
        if m is None:
            if self._reply.parsing and not text.strip():
                self._held += text
                return
            m = self._open_message(frames)
            text, self._held = self._held + text, ""
        m.texts.append(text)
        frames.append(b'%s%s,"sequence_number":%d}\n\n' % (m.head, ENCODER.encode(text), self._next()))

    def _close_message(self, frames: list[bytes]) -> None:
        m = self._message
        if m is None:
            return
        self._message = None
        text = "".join(m.texts)
        frames.append(self._event(w.TextDoneEvent(_TEXT_DONE, self._next(), m.id, m.index, 0, text)))
        part = w.OutputText(text)
        frames.append(self._event(w.PartEvent(_PART_DONE, self._next(), m.id, m.index, 0, part)))
        item = w.MessageItem(m.id, [part])
        frames.append(self._event(w.ItemEvent(_ITEM_DONE, self._next(), m.index, item)))
        self._output.append((m.index, item))

    def _delta(self, d: Delta, frames: list[bytes]) -> None:
        if isinstance(d, Text):
            self._text(d.text, frames)
        elif isinstance(d, Reasoning):
            self._think(d.text, frames)
        elif isinstance(d, CallStart):
            self._close_message(frames)
            self._held = ""
            call = _Call(new_id("fc"), len(self._output) + len(self._calls), d.id, d.name)
            self._calls[d.index] = call
            item = w.FunctionCallItem(call.id, d.id, d.name, "", "in_progress")
            frames.append(self._event(w.ItemEvent(_ADDED, self._next(), call.index, item)))
        elif isinstance(d, CallArguments):
            call = self._calls[d.index]
            delta = w.ArgumentsDeltaEvent(_ARGS_DELTA, self._next(), call.id, call.index, d.text)
            frames.append(self._event(delta))
        elif isinstance(d, CallEnd):
            call = self._calls.pop(d.index)
            done = w.ArgumentsDoneEvent(_ARGS_DONE, self._next(), call.id, call.index, d.name, d.arguments)
            frames.append(self._event(done))
            item = w.FunctionCallItem(call.id, call.call_id, d.name, d.arguments)
            frames.append(self._event(w.ItemEvent(_ITEM_DONE, self._next(), call.index, item)))
            self._output.append((call.index, item))

    def token(self, event: TokenEvent) -> bytes | None:
        text = event.text
        if self._started and not self._reply.parsing:
            if not text:
                return None
            m = self._message
            if m is not None:  # the hot path: one frame, no list
                m.texts.append(text)
                return b'%s%s,"sequence_number":%d}\n\n' % (m.head, ENCODER.encode(text), self._next())
        frames: list[bytes] = []
        if not self._started:
            self._start(frames)
        if self._reply.parsing:
            if self._thought is not None and not event.reasoning:  # the thought has ended
                self._close_thought(frames)
            for d in self._reply.push(text, event.reasoning):
                self._delta(d, frames)
        elif text:
            self._text(text, frames)
        return b"".join(frames) if frames else None

    def finish(self, event: FinishEvent) -> bytes:
        last = self.token(event.token)
        frames = [last] if last is not None else []
        for d in self._reply.finish():
            self._delta(d, frames)
        cut = self._thought is not None and cut_in_thought(event)
        self._close_thought(frames, cut)
        if not (self._answered() or cut):  # an empty answer: one empty message, as OpenAI sends it
            self._message = self._open_message(frames)
        self._close_message(frames)
        output = [item for _index, item in sorted(self._output, key=lambda pair: pair[0])]
        response = self._echo.final(output, self._reply.stop_reason(event.reason), event)
        if self.done is not None:
            self.done(response)
        frames.append(self._lifecycle(f"response.{response.status}", response))
        return b"".join(frames)

    def _answered(self) -> bool:
        """Some of the answer (a message or a call) has begun."""
        if self._message is not None or self._calls:
            return True
        return any(not isinstance(item, w.ReasoningItem) for _index, item in self._output)

    def error(self, problem: Problem) -> bytes:
        frames: list[bytes] = []
        if not self._started:
            self._start(frames)
        code = "server_error" if problem.status >= 500 else "invalid_prompt"
        output = [item for _index, item in sorted(self._output, key=lambda pair: pair[0])]
        failed = self._echo.response("failed", output, error=w.ResponseError(code, problem.message))
        frames.append(self._lifecycle("response.failed", failed))
        return b"".join(frames)


def failed_stream(echo: Echo, code: str, message: str) -> bytes:
    """A request refused after the stream began (Codex expects ``context_length_exceeded`` there):
    ``response.created``, ``response.in_progress``, then ``response.failed`` with the error."""
    s = ResponseStream(echo, Reply(None))
    frames: list[bytes] = []
    s._start(frames)
    failed = echo.response("failed", [], error=w.ResponseError(code, message))
    frames.append(s._lifecycle("response.failed", failed))
    return b"".join(frames)
