"""Generated text in, content and tool-call deltas out, as the text streams.

One small state machine per format (see ``server/tool_formats.py``). The grammar guarantees the shape,
so the parser only has to find where things are; it still never raises on odd text (a generation cut
by ``max_tokens``): whatever it cannot place is content.

A call's arguments are streamed as raw JSON text the moment it is generated; concatenated, the
fragments are exactly the arguments object the model wrote.
"""

from __future__ import annotations

import json
import re
import secrets
import string

import msgspec

from server.tool_formats import ToolFormat


class Content(msgspec.Struct, frozen=True):
    text: str


class CallStart(msgspec.Struct, frozen=True):
    index: int
    id: str
    name: str


class CallArguments(msgspec.Struct, frozen=True):
    index: int
    text: str


Delta = Content | CallStart | CallArguments

_ALPHANUMERIC = string.ascii_letters + string.digits


def call_id() -> str:
    return "call_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(24))


_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")')
# The arguments start at their first character (not at a space that happens to end a piece).
_ARGS = re.compile(r'\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\S)')


class _Call:
    """Scans one ``{"name": "...", "arguments": {...}}`` object as its text arrives (name first: the
    grammar orders the properties so)."""

    __slots__ = (
        "announced",
        "args_at",
        "buf",
        "depth",
        "done",
        "emitted",
        "end",
        "escaped",
        "in_string",
        "name",
        "scan",
    )

    def __init__(self) -> None:
        self.buf = ""
        self.name: str | None = None
        self.args_at = -1  # where the arguments value starts in buf
        self.scan = 0  # how far the arguments were scanned
        self.emitted = 0  # how much of them was handed out
        self.depth = 0
        self.in_string = self.escaped = False
        self.done = False  # the arguments value ended
        self.end = -1  # just past the call object's closing brace
        self.announced = False

    def feed(self, text: str) -> None:
        self.buf += text
        if self.name is None:
            m = _NAME.match(self.buf)
            if m is None:
                return
            self.name = str(json.loads(m.group(1)))
            self.scan = m.end()
        if self.args_at < 0:
            m = _ARGS.match(self.buf, self.scan)
            if m is None:
                return
            self.args_at = self.scan = self.emitted = m.end()
        if not self.done:
            self._scan_arguments()
        if self.done and self.end < 0:
            close = self.buf.find("}", self.scan)
            if close >= 0:
                self.end = close + 1

    def _scan_arguments(self) -> None:
        buf, i = self.buf, self.scan
        depth, in_string, escaped = self.depth, self.in_string, self.escaped
        while i < len(buf):
            c = buf[i]
            i += 1
            if in_string:
                if escaped:
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == '"':
                    in_string = False
                    if depth == 0:  # a string value: complete
                        self.done = True
                        break
            elif c == '"':
                in_string = True
            elif c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth <= 0:
                    self.done = True
                    break
        self.scan, self.depth, self.in_string, self.escaped = i, depth, in_string, escaped

    def arguments(self) -> str:
        """The arguments text scanned since the last call."""
        if self.args_at < 0 or self.scan <= self.emitted:
            return ""
        text = self.buf[self.emitted : self.scan]
        self.emitted = self.scan
        return text

    def rest(self) -> str:
        """What followed the call object."""
        return self.buf[self.end :] if self.end >= 0 else ""


def _held_prefix(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that ``marker`` starts with (it may still become it)."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class ToolCallParser:
    """Feed each piece of generated text with :meth:`push`, then call :meth:`finish`."""

    def __init__(self, fmt: ToolFormat) -> None:
        self.format = fmt
        self.calls: list[tuple[str, str, list[str]]] = []  # id, name, argument fragments
        self._out: list[Delta] = []
        self._pending = ""  # text not placed yet
        self._call: _Call | None = None
        self._mode = "start"  # start text call between response done
        self._string = _JsonString()

    @property
    def called(self) -> bool:
        return bool(self.calls)

    def push(self, text: str) -> list[Delta]:
        if text:
            self._pending += text
            self._run()
        out, self._out = self._out, []
        return out

    def finish(self) -> list[Delta]:
        """The end of the generation: whatever is still held back is content (or, inside a call,
        the arguments seen so far)."""
        self._run()
        if self._call is not None:
            self._call_progress()
        elif self._mode in ("start", "text") and self._pending:
            self._content(self._pending)
        self._pending = ""
        out, self._out = self._out, []
        return out

    def _content(self, text: str) -> None:
        if text:
            self._out.append(Content(text))

    def _run(self) -> None:
        while self._step():
            pass

    def _step(self) -> bool:
        """Advance on the pending text; True when the state changed and another step may help."""
        fmt, mode = self.format, self._mode
        if mode == "done":
            self._pending = ""
            return False
        if mode == "call":
            return self._feed_call()
        if fmt is ToolFormat.HERMES:
            return self._hermes(mode)
        if fmt is ToolFormat.MISTRAL:
            return self._marked("[TOOL_CALLS]", mode)
        if fmt is ToolFormat.LLAMA3:
            return self._llama3(mode)
        return self._generic(mode)

    # -- the call object, shared by every format --------------------------------------------------
    def _start_call(self) -> None:
        self._call = _Call()
        self._mode = "call"

    def _feed_call(self) -> bool:
        call = self._call
        assert call is not None
        text, self._pending = self._pending, ""
        call.feed(text)
        self._call_progress()
        if call.end < 0:
            return False
        self._pending = call.rest()
        self._call = None
        self._mode = "between"
        return True

    def _call_progress(self) -> None:
        call = self._call
        assert call is not None
        if call.name is None:
            return
        if not call.announced:  # the id and the name go out once, in the call's first delta
            call.announced = True
            self.calls.append((call_id(), call.name, []))
            self._out.append(CallStart(len(self.calls) - 1, self.calls[-1][0], call.name))
        fragment = call.arguments()
        if fragment:
            self.calls[-1][2].append(fragment)
            self._out.append(CallArguments(len(self.calls) - 1, fragment))

    # -- formats ---------------------------------------------------------------------------------
    def _hermes(self, mode: str) -> bool:
        marker = "<tool_call>"
        if mode == "between":
            at = self._pending.find(marker)
            if at < 0:
                return False
            self._pending = self._pending[at + len(marker) :]
            self._start_call()
            return True
        at = self._pending.find(marker)
        if at >= 0:
            self._content(self._pending[:at])
            self._pending = self._pending[at + len(marker) :]
            self._start_call()
            return True
        keep = _held_prefix(self._pending, marker)
        self._content(self._pending[: len(self._pending) - keep])
        self._pending = self._pending[len(self._pending) - keep :]
        return False

    def _marked(self, marker: str, mode: str) -> bool:
        """Mistral: ``[TOOL_CALLS]`` then a JSON array of call objects."""
        if mode == "between":  # after a call: "," and the next object, or "]"
            stripped = self._pending.lstrip()
            if not stripped:
                return False
            if stripped[0] == ",":
                self._pending = stripped[1:]
                self._start_call()
                return True
            self._mode, self._pending = "done", ""
            return False
        if mode == "array":
            stripped = self._pending.lstrip()
            if not stripped:
                return False
            if stripped[0] == "[":
                self._pending = stripped[1:]
                self._start_call()
                return True
            self._mode = "text"
            return True
        at = self._pending.find(marker)
        if at >= 0:
            self._content(self._pending[:at])
            self._pending = self._pending[at + len(marker) :]
            self._mode = "array"
            return True
        keep = _held_prefix(self._pending, marker)
        self._content(self._pending[: len(self._pending) - keep])
        self._pending = self._pending[len(self._pending) - keep :]
        return False

    def _llama3(self, mode: str) -> bool:
        if mode == "start":  # a call is a JSON object from the first character (<|python_tag|> aside)
            stripped = self._pending.lstrip()
            if stripped.startswith("<|python_tag|>"):
                stripped = stripped[len("<|python_tag|>") :].lstrip()
            if not stripped or "<|python_tag|>".startswith(stripped):
                return False
            if stripped[0] == "{":
                self._pending = stripped
                self._start_call()
                return True
            self._mode = "text"
            return True
        if mode == "text":
            self._content(self._pending)
            self._pending = ""
            return False
        self._mode, self._pending = "done", ""  # one call per reply
        return False

    def _generic(self, mode: str) -> bool:
        """``{"tool_calls": [call, ...]}`` or ``{"response": "..."}``."""
        if mode == "start":
            m = re.match(r'\s*\{\s*"(tool_calls|response)"\s*:\s*', self._pending)
            if m is None:
                if len(self._pending) > 64 or not re.match(r'\s*(\{\s*("\w*"?\s*:?\s*)?)?$', self._pending):
                    self._mode = "text"  # not the format at all: show it as it is
                    return True
                return False
            self._pending = self._pending[m.end() :]
            self._mode = "array" if m.group(1) == "tool_calls" else "response"
            return True
        if mode == "text":
            self._content(self._pending)
            self._pending = ""
            return False
        if mode == "response":
            text, closed = self._string.feed(self._pending)
            self._pending = ""
            self._content(text)
            if closed:
                self._mode = "done"
            return False
        return self._marked("\0", mode)  # "array" / "between": the same array of calls as Mistral's


class _JsonString:
    """Decodes a JSON string value as it arrives (from its opening quote), holding back an escape
    sequence until it is whole."""

    def __init__(self) -> None:
        self._held = ""
        self._opened = False

    def feed(self, text: str) -> tuple[str, bool]:
        text = self._held + text
        self._held = ""
        if not self._opened:
            text = text.lstrip()
            if not text:
                return "", False
            if text[0] != '"':
                return text, True
            text, self._opened = text[1:], True
        out: list[str] = []
        i = 0
        while i < len(text):
            c = text[i]
            if c == '"':
                return "".join(out), True
            if c != "\\":
                out.append(c)
                i += 1
                continue
            if i + 1 >= len(text):
                self._held = text[i:]
                break
            if text[i + 1] == "u":
                if i + 6 > len(text):
                    self._held = text[i:]
                    break
                code = int(text[i + 2 : i + 6], 16)
                if 0xD800 <= code < 0xDC00:  # a surrogate pair: wait for the low half
                    if i + 12 > len(text):
                        self._held = text[i:]
                        break
                    out.append(json.loads(f'"{text[i : i + 12]}"'))
                    i += 12
                    continue
                out.append(chr(code))
                i += 6
                continue
            out.append(json.loads(f'"{text[i : i + 2]}"'))
            i += 2
        return "".join(out), False
