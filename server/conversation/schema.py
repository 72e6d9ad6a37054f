"""Tool schemas as clients write them, made enforceable without changing what they allow.

Claude Code's schemas say ``"propertyNames": {"type": "string"}``, which llguidance does not implement,
so the whole request would be refused; but JSON object keys are always strings, so that keyword
allows everything and dropping it changes nothing. Only such vacuous keywords are dropped: anything
that would loosen a schema stays, and is refused naming the field if it cannot be enforced.
"""

from __future__ import annotations

from typing import Any

_ANY_STRING = {"type": "string"}


def without_vacuous(schema: Any) -> Any:
    """A copy of ``schema`` without keywords that allow every value."""
    if isinstance(schema, list):
        return [without_vacuous(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: without_vacuous(value)
        for key, value in schema.items()
        if not (key == "propertyNames" and value == _ANY_STRING)
    }
