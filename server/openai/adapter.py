"""Pure translations between OpenAI's wire format and the engine: requests in, chunks and bodies out.

No HTTP and no model here, so every rule is unit-tested on its own.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from engine import (
    Completion,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    Thinking,
    TokenEvent,
    ValidationError,
    refuse_surely_too_long,
)
from server.conversation.plan import ChatPlan
from server.conversation.prompt import Tokenize, budget, logit_bias, seed, stop_strings
from server.conversation.reply import Reply, thought, whole
from server.conversation.types import CallArguments, CallEnd, CallStart, Delta, Reasoning, StopReason, Text
from server.errors import Problem, openai_body
from server.openai import wire as w
from server.sse import DONE, frame
from server.state import Limits


def finish_reason(reason: FinishReason) -> str:
    return "length" if reason is FinishReason.LENGTH else "stop"


def sampling(body: w.SamplingFields, limits: Limits) -> SamplingParams:
    if body.n != 1:
        raise ValidationError(f"only `n: 1` is supported (one choice per request); got {body.n}", "n")
    return SamplingParams(
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        min_p=body.min_p,
        repetition_penalty=body.repeat_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        seed=seed(body.seed),
        logit_bias=logit_bias(body.logit_bias, limits.n_vocab),
    )


def chat_request(
    body: w.ChatCompletionRequest,
    prompt: list[int],
    limits: Limits,
    plan: ChatPlan | None = None,
    thinking: Thinking | None = None,
) -> GenerationRequest:
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    top = body.top_logprobs or 0
    if top and not body.logprobs:
        raise ValidationError("`top_logprobs` needs `logprobs: true`", "top_logprobs")
    return GenerationRequest(
        prompt_tokens=tuple(prompt),
        max_tokens=budget(len(prompt), requested, limits, "messages", field),
        sampling=sampling(body, limits),
        stop=stop_strings(body.stop, limits),
        logprobs=body.logprobs,
        top_logprobs=top,
        ignore_eos=body.ignore_eos,
        constraint=plan.constraint if plan else None,
        special_text=plan.special_text if plan else False,
        thinking=thinking,
    )


def prompt_ids(prompt: list[int], n_vocab: int) -> list[int]:
    """A prompt given as token ids, checked: llama.cpp would read past its tables for an id outside
    the vocabulary."""
    for i, token in enumerate(prompt):
        if not 0 <= token < n_vocab:
            raise ValidationError(
                f"`prompt[{i}]` is token {token}, but this model's token ids run from 0 to {n_vocab - 1}",
                "prompt",
            )
    return prompt


def one_prompt(prompt: str | list[str | int | list[int]]) -> str | list[int]:
    """OpenAI's schema allows a string, token ids, or a list of either; one prompt per request here."""
    if isinstance(prompt, str):
        return prompt
    if all(type(p) is int for p in prompt):
        return prompt  # type: ignore[return-value]  # checked just above
    if len(prompt) != 1:
        raise ValidationError(
            "`prompt` must be one prompt: a string, token ids, or a list holding one of either "
            "(batched prompts are not supported)",
            "prompt",
        )
    return prompt[0]  # type: ignore[return-value]  # str or list[int]; a lone int was handled above


def completion_request(body: w.CompletionRequest, tokenize: Tokenize, limits: Limits) -> GenerationRequest:
    prompt = one_prompt(body.prompt)
    if not prompt:
        raise ValidationError("`prompt` must not be empty", "prompt")
    if body.echo:
        raise ValidationError("`echo` is not supported", "echo")
    if body.suffix:  # fill-in-the-middle needs the model's FIM tokens and prompt format
        raise ValidationError("`suffix` is not supported", "suffix")
    if body.best_of is not None and body.best_of != 1:
        raise ValidationError(f"only `best_of: 1` is supported; got {body.best_of}", "best_of")
    if isinstance(prompt, str):
        refuse_surely_too_long(prompt, limits.max_input_tokens, limits.longest_piece, "prompt")
        tokens = tokenize(prompt)
    else:
        tokens = prompt_ids(prompt, limits.n_vocab)
    n_logprobs = body.logprobs or 0
    return GenerationRequest(
        prompt_tokens=tuple(tokens),
        max_tokens=budget(len(tokens), body.max_tokens, limits, "prompt", "max_tokens"),
        sampling=sampling(body, limits),
        stop=stop_strings(body.stop, limits),
        logprobs=body.logprobs is not None,
        top_logprobs=n_logprobs,
        ignore_eos=body.ignore_eos,
    )


def usage(event: FinishEvent) -> w.UsageOut:
    u = event.usage
    thought = w.CompletionTokensDetails(u.reasoning_tokens) if u.reasoning_tokens else None
    return w.UsageOut(
        u.prompt_tokens, u.completion_tokens, u.total_tokens, w.PromptTokensDetails(u.cached_tokens), thought
    )


def _token_logprob(event: TokenEvent) -> w.TokenLogprobOut:
    tops = [w.TopLogprobOut(t.text, t.logprob, list(t.text.encode())) for t in event.top_logprobs or ()]
    return w.TokenLogprobOut(event.text, event.logprob or 0.0, list(event.text.encode()), tops)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# -- chat ----------------------------------------------------------------------------------------


Choice = TypeVar("Choice", w.ChunkChoice, w.CompletionChoice)


class _Stream(ABC, Generic[Choice]):
    """What both OpenAI streams share: ids, the closing usage chunk and ``[DONE]``, error events."""

    __slots__ = ("_created", "_id", "_include_usage", "_logprobs", "_model")

    def __init__(self, prefix: str, model: str, *, include_usage: bool, logprobs: bool) -> None:
        self._id, self._created, self._model = new_id(prefix), int(time.time()), model
        self._include_usage = include_usage
        self._logprobs = logprobs

    @abstractmethod
    def _chunk(self, choices: list[Choice], usage: w.UsageOut | None) -> bytes:
        """One SSE frame in this stream's envelope (chat chunk or text completion)."""

    def _close(self, event: FinishEvent, frames: list[bytes]) -> bytes:
        if self._include_usage:
            frames.append(self._chunk([], usage(event)))
        frames.append(DONE)
        return b"".join(frames)

    def error(self, problem: Problem) -> bytes:
        return frame(openai_body(problem)) + DONE


def _tool_delta(delta: CallStart | CallArguments) -> w.ToolCallDelta:
    if isinstance(delta, CallStart):
        return w.ToolCallDelta(delta.index, w.FunctionDelta("", delta.name), delta.id, "function")
    return w.ToolCallDelta(delta.index, w.FunctionDelta(delta.text))


_CHAT_FINISH: dict[StopReason, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
}


class ChatStream(_Stream[w.ChunkChoice]):
    """Turns engine events into ``chat.completion.chunk`` SSE frames (a small state machine). With
    tools, the text goes through the conversation layer's :class:`Reply` first: content and each
    tool-call delta go out in chunks of their own."""

    __slots__ = ("_reply", "_role_sent")

    def __init__(
        self, model: str, *, include_usage: bool, logprobs: bool, reply: Reply | None = None
    ) -> None:
        super().__init__("chatcmpl", model, include_usage=include_usage, logprobs=logprobs)
        self._role_sent = False
        self._reply = reply or Reply(None)

    def _chunk(self, choices: list[w.ChunkChoice], usage: w.UsageOut | None) -> bytes:
        return frame(w.ChatCompletionChunk(self._id, self._created, self._model, choices, usage=usage))

    def _delta(self, delta: w.Delta, logprobs: w.ChoiceLogprobs | None) -> bytes:
        if not self._role_sent:  # the first chunk always carries the role
            delta.role, self._role_sent = "assistant", True
        return self._chunk([w.ChunkChoice(0, delta, logprobs)], None)

    def token(self, event: TokenEvent) -> bytes | None:
        """The frames for one token, or None when it shows nothing new."""
        logprobs = w.ChoiceLogprobs([_token_logprob(event)]) if self._logprobs else None
        if self._reply.parsing:
            return self._parsed(self._reply.push(event.text, event.reasoning), logprobs)
        if self._role_sent and not event.text and not self._logprobs:
            return None
        return self._delta(w.Delta(content=event.text), logprobs)

    def _parsed(self, deltas: list[Delta], logprobs: w.ChoiceLogprobs | None) -> bytes | None:
        frames = []
        for d in deltas:
            if isinstance(d, Text):
                frames.append(self._delta(w.Delta(content=d.text), logprobs))
            elif isinstance(d, Reasoning):
                frames.append(self._delta(w.Delta(reasoning_content=d.text, reasoning=d.text), logprobs))
            elif isinstance(d, CallEnd):  # OpenAI's chunks have no end of a call
                continue
            else:
                frames.append(self._delta(w.Delta(tool_calls=[_tool_delta(d)]), logprobs))
            logprobs = None  # a token's logprobs go out once, with its first frame
        if logprobs is not None:  # nothing visible, but the client asked for every token's logprob
            frames.append(self._delta(w.Delta(), logprobs))
        return b"".join(frames) if frames else None

    def finish(self, event: FinishEvent) -> bytes:
        last = self.token(event.token)
        frames = [last] if last is not None else []
        tail = self._parsed(self._reply.finish(), None)
        if tail is not None:
            frames.append(tail)
        reason = _CHAT_FINISH[self._reply.stop_reason(event.reason)]
        frames.append(self._chunk([w.ChunkChoice(0, w.Delta(), None, reason)], None))
        return self._close(event, frames)


def chat_completion(
    model: str, result: Completion, logprobs: bool, reply: Reply | None = None
) -> w.ChatCompletion:
    choice_logprobs = w.ChoiceLogprobs([_token_logprob(t) for t in result.tokens]) if logprobs else None
    reply = reply or Reply(None)
    content, calls = whole(reply, result.text, result.reasoning)
    message = w.AssistantMessage(content)
    reasoning = thought(result.reasoning)
    if reasoning is not None:
        message.reasoning_content = message.reasoning = reasoning
    if calls:
        message.content = content if content.strip() else None
        message.tool_calls = [w.ToolCallOut(c.id, w.FunctionCallOut(c.name, c.arguments)) for c in calls]
    reason = _CHAT_FINISH[reply.stop_reason(result.finish.reason)]
    choice = w.ChatChoice(0, message, reason, choice_logprobs)
    return w.ChatCompletion(new_id("chatcmpl"), int(time.time()), model, [choice], usage(result.finish))


# -- completions ---------------------------------------------------------------------------------


def _completion_logprobs(
    tokens: tuple[TokenEvent, ...] | list[TokenEvent], offset: int
) -> w.CompletionLogprobs:
    texts, values, tops, offsets = [], [], [], []
    for t in tokens:
        texts.append(t.text)
        values.append(t.logprob or 0.0)
        tops.append({top.text: top.logprob for top in t.top_logprobs or ()})
        offsets.append(offset)
        offset += len(t.text)
    return w.CompletionLogprobs(texts, values, tops, offsets)


class CompletionStream(_Stream[w.CompletionChoice]):
    """Turns engine events into ``text_completion`` SSE frames."""

    __slots__ = ("_offset",)

    def __init__(self, model: str, *, include_usage: bool, logprobs: bool) -> None:
        super().__init__("cmpl", model, include_usage=include_usage, logprobs=logprobs)
        self._offset = 0

    def _chunk(self, choices: list[w.CompletionChoice], usage: w.UsageOut | None) -> bytes:
        return frame(w.Completion(self._id, self._created, self._model, choices, usage=usage))

    def _text(self, event: TokenEvent, reason: str | None) -> bytes:
        logprobs = _completion_logprobs([event], self._offset) if self._logprobs else None
        self._offset += len(event.text)
        return self._chunk([w.CompletionChoice(0, event.text, reason, logprobs)], None)

    def token(self, event: TokenEvent) -> bytes | None:
        if not event.text and not self._logprobs:
            return None
        return self._text(event, None)

    def finish(self, event: FinishEvent) -> bytes:
        return self._close(event, [self._text(event.token, finish_reason(event.reason))])


def text_completion(model: str, result: Completion, logprobs: bool) -> w.Completion:
    choice_logprobs = _completion_logprobs(result.tokens, 0) if logprobs else None
    choice = w.CompletionChoice(0, result.text, finish_reason(result.finish.reason), choice_logprobs)
    return w.Completion(new_id("cmpl"), int(time.time()), model, [choice], usage=usage(result.finish))
