"""Chat prompts from the Jinja chat template stored in the GGUF file (``tokenizer.chat_template``).

Messages reach the template in the shape Hugging Face templates expect: ``role`` and ``content``, plus
``tool_calls`` (each ``{id, type, function: {name, arguments}}``, arguments as an object),
``tool_call_id`` and ``name`` only where a message has them, since templates test ``is defined``. A
template that knows tools receives them as ``tools``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import msgspec
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import ValidationError

# Used only when a model carries no template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


class ToolCall(msgspec.Struct, frozen=True):
    """A call an assistant made earlier in the conversation."""

    id: str
    name: str
    arguments: Any  # the decoded JSON object; the raw text when it does not decode


class ChatMessage(msgspec.Struct, frozen=True):
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning_content: str | None = None  # an assistant turn's thought (Qwen3's templates read it)


def _raise_exception(message: str) -> NoReturn:
    # Templates call raise_exception() to reject conversations they cannot format.
    raise ValidationError(f"the model's chat template rejected the messages: {message}", "messages")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any, indent: int | None = None, separators: tuple[str, str] | None = None, sort_keys: bool = False
) -> str:
    # As Hugging Face's renderer: plain JSON. Jinja's own tojson escapes <, > and & for HTML, which
    # would show the model tool schemas it was never trained on.
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


def _message(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    if m.reasoning_content is not None:
        out["reasoning_content"] = m.reasoning_content
    return out


class ChatTemplate:
    def __init__(self, source: str | None, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        env.filters["tojson"] = _tojson
        self.source = source or CHATML_TEMPLATE
        self._template = env.from_string(self.source)
        self._bos, self._eos = bos_token, eos_token

    def render(
        self,
        messages: tuple[ChatMessage, ...],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """``extra``: more variables (``enable_thinking``); they cannot replace the ones set here."""
        context: dict[str, Any] = {
            **(extra or {}),
            "messages": [_message(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self._bos,
            "eos_token": self._eos,
        }
        if tools:
            context["tools"] = tools
        try:
            return self._template.render(context)
        except ValidationError:
            raise
        except Exception as exc:  # whatever the request made of it (a kwarg of the wrong type): a 400
            error = exc if isinstance(exc, jinja2.TemplateError) else f"{type(exc).__name__}: {exc}"
            raise ValidationError(f"the model's chat template failed: {error}", "messages") from exc
