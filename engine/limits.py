"""Token budgets: pure checks shared by every protocol, so each refuses the same requests."""

from __future__ import annotations

from engine.errors import ValidationError


def resolve_max_tokens(
    n_prompt: int,
    requested: int | None,
    *,
    max_input: int,
    max_total: int,
    prompt_field: str,
    max_field: str,
) -> int:
    """The number of tokens to generate at most; refuses prompts and budgets that do not fit.

    ``requested=None`` means "as many as the context allows", as OpenAI's API does.
    """
    if n_prompt == 0:
        raise ValidationError(f"`{prompt_field}` must not be empty", prompt_field)
    if n_prompt > max_input:
        raise ValidationError(
            f"`{prompt_field}` has {n_prompt} tokens, more than the {max_input} allowed "
            f"(max_input_tokens; a request holds at most {max_total} tokens)",
            prompt_field,
        )
    room = max_total - n_prompt
    if requested is None:
        return room
    if requested <= 0:
        raise ValidationError(f"`{max_field}` must be strictly positive", max_field)
    if requested > room:
        raise ValidationError(
            f"`{max_field}` is {requested}, but the {n_prompt}-token input leaves room for only {room} "
            f"new tokens within max_total_tokens = {max_total}",
            max_field,
        )
    return requested
