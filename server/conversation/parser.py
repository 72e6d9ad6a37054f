"""Generated text in, text and tool-call events out, as the text streams.

One small state machine for every format (see ``server/conversation/tool_formats.py``). A grammar
holds forced calls to the format; free (``auto``) answers are what the model writes, so the parser also
takes the shapes real models use beside their trained markers: a bare ``{"name": ..., "arguments":
{...}}`` object at the start of the answer, the same inside a ```` ```json ```` fence, several in a row,
``"parameters"`` for ``"arguments"``, arguments given as a JSON string. Only the ``{name, arguments}``
shape with the name of a declared tool is a call: an answer that merely is JSON stays text. It never
raises on odd text (a generation cut by ``max_tokens``): whatever it cannot place is text.

A call's arguments are streamed as raw JSON text the moment they are generated; concatenated, the
fragments are exactly the arguments object the model wrote.
"""

from __future__ import annotations

import json
import re
import secrets
import string

from server.conversation.tool_formats import ToolFormat
from server.conversation.types import CallArguments, CallEnd, CallStart, Delta, Text

_ALPHANUMERIC = string.ascii_letters + string.digits


def call_id() -> str:
    return "call_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(24))


_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")')
# The arguments start at their first character (not at a space that happens to end a piece).
_ARGS = re.compile(r'\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\S)')
_HEAD = '{"name":"'  # a bare call's opening, whitespace removed
_FENCES = ("```json\n", "```\n")
# Marker tokens the formats write before their calls, and what closes a call, as text.
_OPENERS = {
    ToolFormat.HERMES: "<tool_call>",
    ToolFormat.MISTRAL: "[TOOL_CALLS]",
    ToolFormat.LLAMA3: "<|python_tag|>",
}
_CLOSERS = ("</tool_call>", "```", "<|eom_id|>")


class _Call:
    """Scans one ``{"name": "...", "arguments": {...}}`` object as its text arrives (name first:
    the grammars order the properties so, and models write them so)."""

    __slots__ = ("args_at", "buf", "depth", "done", "emitted", "end", "escaped", "in_string", "name", "scan")

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

    def feed(self, text: str) -> None:
        self.buf += text
        if self.name is None:
            self.name = _name(self.buf)
            if self.name is None:
                return
            m = _NAME.match(self.buf)
            assert m is not None
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

    @property
    def quoted(self) -> bool:
        """The arguments are a JSON string (holding the object's text), not the object itself."""
        return self.args_at >= 0 and self.buf.startswith('"', self.args_at)

    def arguments(self) -> str:
        """The arguments text scanned since the last call. A quoted object is decoded, once whole."""
        if self.quoted:
            if not self.done or self.emitted > self.args_at:
                return ""
            self.emitted = self.scan
            return _unquoted(self.buf[self.args_at : self.scan])
        if self.args_at < 0 or self.scan <= self.emitted:
            return ""
        text = self.buf[self.emitted : self.scan]
        self.emitted = self.scan
        return text

    def rest(self) -> str:
        """What followed the call object."""
        return self.buf[self.end :] if self.end >= 0 else ""


def _unquoted(literal: str) -> str:
    try:
        value = json.loads(literal)
    except ValueError:
        return literal
    return value if isinstance(value, str) else literal


def _name(text: str) -> str | None:
    """The function name of the call object ``text`` opens, once whole."""
    m = _NAME.match(text)
    if m is None:
        return None
    try:
        return str(json.loads(m.group(1)))
    except ValueError:
        return ""  # not a name any tool has


def _unfenced(text: str) -> str:
    for fence in _FENCES:
        if text.startswith(fence):
            return text[len(fence) :].lstrip()
    return text


def _held_prefix(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that ``marker`` starts with (it may still become it)."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class ToolCallParser:
    """Feed each piece of generated text with :meth:`push`, then call :meth:`finish`. ``names``: the
    declared tools; a bare object naming another function is text."""

    def __init__(self, fmt: ToolFormat, names: frozenset[str], max_calls: int | None = None) -> None:
        self.format = fmt
        self.names = names
        self.max_calls = max_calls
        self.calls: list[tuple[str, str, list[str]]] = []  # id, name, argument fragments
        self._out: list[Delta] = []
        self._pending = ""  # text not placed yet
        self._call: _Call | None = None
        self._announced = False  # the current call's start went out
        self._mode = "start"  # start text call between array response done
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
        """The end of the generation: whatever is still held back is text (or, inside a call, the
        arguments seen so far)."""
        self._run()
        if self._call is not None:
            self._call_progress()
            if self._announced:
                self._end_call()
            else:  # never became a call: it was text
                self._text(self._call.buf)
        elif self._mode in ("start", "text"):
            self._text(self._pending)
        self._pending = ""
        out, self._out = self._out, []
        return out

    def _text(self, text: str) -> None:
        if text:
            self._out.append(Text(text))

    def _run(self) -> None:
        while self._step():
            pass

    def _step(self) -> bool:
        """Advance on the pending text; True when the state changed and another step may help."""
        mode = self._mode
        if mode == "done":
            self._pending = ""
            return False
        if mode == "call":
            return self._feed_call()
        if self.format is ToolFormat.GENERIC:
            return self._generic(mode)
        if mode == "start":
            return self._start()
        if mode == "array":
            return self._array()
        if mode == "between":
            return self._between()
        return self._free_text()

    # -- the call object, shared by every format --------------------------------------------------
    def _start_call(self) -> None:
        if self.max_calls is not None and len(self.calls) >= self.max_calls:
            self._mode, self._pending = "done", ""
            return
        self._call = _Call()
        self._announced = False
        self._mode = "call"

    def _feed_call(self) -> bool:
        call = self._call
        assert call is not None
        text, self._pending = self._pending, ""
        call.feed(text)
        if call.name is not None and not self._announced and call.name not in self.names:
            # Not a call of a declared tool: the object was text all along.
            self._call, self._mode, self._pending = None, "text", call.buf
            return True
        self._call_progress()
        if call.end < 0:
            return False
        self._end_call()
        self._pending = call.rest()
        self._call = None
        self._mode = "between"
        return True

    def _call_progress(self) -> None:
        call = self._call
        assert call is not None
        if call.name is None or call.name not in self.names:
            return
        if not self._announced:  # the id and the name go out once, in the call's first delta
            self._announced = True
            self.calls.append((call_id(), call.name, []))
            self._out.append(CallStart(len(self.calls) - 1, self.calls[-1][0], call.name))
        fragment = call.arguments()
        if fragment:
            self.calls[-1][2].append(fragment)
            self._out.append(CallArguments(len(self.calls) - 1, fragment))

    def _end_call(self) -> None:
        ident, name, fragments = self.calls[-1]
        self._out.append(CallEnd(len(self.calls) - 1, ident, name, "".join(fragments)))

    # -- where calls begin -------------------------------------------------------------------------
    def _start(self) -> bool:
        """The answer's beginning: a marker, a bare call (perhaps in a fence), or text."""
        text = self._pending.lstrip()
        if not text:
            return False
        opener = _OPENERS[self.format]
        if text.startswith(opener):
            self._pending = text[len(opener) :]
            self._mode = "array" if self.format is ToolFormat.MISTRAL else "between"
            return True
        body = _unfenced(text)
        name = _name(body)
        if name is not None:
            if name in self.names:
                self._pending = body
                self._start_call()
            else:  # JSON, but not a call of a declared tool: text, as it was written
                self._mode = "text"
            return True
        if _OPENERS[self.format].startswith(text) or any(f.startswith(text) for f in _FENCES):
            return False
        if self._could_be_call(body):
            return False  # wait for the name
        self._mode = "text"
        return True

    def _could_be_call(self, text: str) -> bool:
        """``text`` may still grow into the opening of a bare call of a declared tool."""
        compact = re.sub(r"\s+", "", text[:200])
        if len(compact) <= len(_HEAD):
            return _HEAD.startswith(compact)
        if not compact.startswith(_HEAD):
            return False
        name = compact[len(_HEAD) :]
        return '"' not in name and any(n.startswith(name) for n in self.names)

    def _free_text(self) -> bool:
        """Text: a Hermes or Mistral marker may still open calls after it."""
        if self.format is ToolFormat.LLAMA3:  # its calls stand alone, at the start
            self._text(self._pending)
            self._pending = ""
            return False
        marker = _OPENERS[self.format]
        at = self._pending.find(marker)
        if at >= 0:
            self._text(self._pending[:at])
            self._pending = self._pending[at + len(marker) :]
            self._mode = "array" if self.format is ToolFormat.MISTRAL else "between"
            return True
        keep = _held_prefix(self._pending, marker)
        self._text(self._pending[: len(self._pending) - keep])
        self._pending = self._pending[len(self._pending) - keep :]
        return False

    def _between(self) -> bool:
        """After a marker or a call: the next call, closers and separators to skip, or text."""
        text = self._pending.lstrip(" \t\r\n,")
        for marker in (_OPENERS[self.format], *_CLOSERS):
            if text.startswith(marker):
                self._pending = text[len(marker) :]
                return True
            if marker.startswith(text):
                self._pending = text
                return False
        if text.startswith("{"):
            self._pending = text
            self._start_call()
            return True
        if text.startswith("]"):  # the end of a Mistral array
            self._pending = text[1:]
            return True
        self._pending = text
        if text:
            self._mode = "text"
            return True
        return False

    def _array(self) -> bool:
        """Mistral: the JSON array of calls after ``[TOOL_CALLS]``."""
        text = self._pending.lstrip()
        if not text:
            return False
        if text[0] == "[":
            self._pending = text[1:]
            self._mode = "between"
            return True
        self._mode = "between"  # a bare object after the marker, as some models write it
        self._pending = text
        return True

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
            self._text(self._pending)
            self._pending = ""
            return False
        if mode == "response":
            text, closed = self._string.feed(self._pending)
            self._pending = ""
            self._text(text)
            if closed:
                self._mode = "done"
            return False
        if mode == "array":
            return self._array()
        # between calls: "," and the next object, or the end of the array and of the object
        text = self._pending.lstrip(" \t\r\n,")
        if text.startswith("{"):
            self._pending = text
            self._start_call()
            return True
        if text:
            self._mode, self._pending = "done", ""
        return False


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
