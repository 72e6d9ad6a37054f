"""Chat prompts from the Jinja chat template stored in the GGUF file (``tokenizer.chat_template``)."""

from __future__ import annotations

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


class ChatMessage(msgspec.Struct, frozen=True):
    role: str
    content: str


def _raise_exception(message: str) -> NoReturn:
    # Templates call raise_exception() to reject conversations they cannot format.
    raise ValidationError(f"the model's chat template rejected the messages: {message}", "messages")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    def __init__(self, source: str | None, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        self.source = source or CHATML_TEMPLATE
        self._template = env.from_string(self.source)
        self._bos, self._eos = bos_token, eos_token

    def render(self, messages: tuple[ChatMessage, ...], add_generation_prompt: bool = True) -> str:
        context: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self._bos,
            "eos_token": self._eos,
        }
        try:
            return self._template.render(context)
        except ValidationError:
            raise
        except jinja2.TemplateError as exc:
            raise ValidationError(f"the model's chat template failed: {exc}", "messages") from exc
