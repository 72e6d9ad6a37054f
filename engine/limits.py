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


def refuse_surely_too_long(text: str, max_input: int, longest_piece: int | None, field: str) -> None:
    """Refuse, before tokenizing it, a text that cannot fit ``max_input`` tokens whatever the
    tokenizer does: each token stands for at most ``longest_piece`` bytes, so a text of more than
    ``max_input * longest_piece`` bytes needs more tokens than allowed. Tokenizing a 2 MB text takes
    about half a second of CPU on a laptop; this check takes microseconds."""
    if longest_piece is None:
        return
    limit = max_input * longest_piece
    # A character is at least one byte: the length in characters settles most cases without encoding.
    n_bytes = len(text)
    if n_bytes <= limit and not text.isascii():
        n_bytes = len(text.encode("utf-8", "surrogatepass"))
    if n_bytes > limit:
        raise ValidationError(
            f"`{field}` is too long: {n_bytes} bytes or more of text cannot fit in the {max_input} "
            f"tokens allowed (max_input_tokens), as no token of this model stands for more than "
            f"{longest_piece} bytes",
            field,
        )


# llama.cpp gives each slot's stream a multiple of this many cells.
CELL_BLOCK = 256


def auto_slot_context(n_ctx_train: int, bytes_per_token: int, n_slots: int, budget_bytes: int) -> int:
    """Cells per slot when --ctx-size is not given: the model's trained context, or as many as the KV
    memory budget affords for every slot, whichever is less; a whole number of 256-cell blocks, and at
    least one block (a smaller budget cannot be honoured)."""
    affordable = budget_bytes // max(1, bytes_per_token * n_slots)
    trained = n_ctx_train if n_ctx_train > 0 else affordable  # 0: the GGUF does not say
    cells = min(trained, affordable) // CELL_BLOCK * CELL_BLOCK
    return max(CELL_BLOCK, cells)
