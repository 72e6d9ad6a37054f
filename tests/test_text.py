"""Incremental detokenization: no half characters, no stop strings, nothing lost."""

from __future__ import annotations

import pytest

from engine.text import TextStream


def feed(stream: TextStream, pieces: list[bytes]) -> list[str]:
    return [stream.push(p) for p in pieces]


def test_multibyte_character_split_across_tokens_is_held_until_whole() -> None:
    data = "a😀b世".encode()
    stream = TextStream()
    out = feed(stream, [bytes([b]) for b in data])
    assert all("\ufffd" not in piece for piece in out)
    assert "".join(out) + stream.flush() == "a😀b世"
    assert out[1:4] == ["", "", ""]  # the emoji's first three bytes release nothing
    assert out[4] == "😀"


def test_stop_string_spanning_tokens_is_withheld_and_never_sent() -> None:
    stream = TextStream(("END",))
    out = feed(stream, [b"hello E", b"N", b"D and more"])
    assert "".join(out) == "hello "
    assert stream.stopped


def test_possible_stop_prefix_is_released_when_it_turns_out_not_to_match() -> None:
    stream = TextStream(("END",))
    out = feed(stream, [b"E", b"N", b"x"])
    assert out == ["", "", "ENx"]
    assert not stream.stopped


def test_text_held_at_the_end_is_flushed() -> None:
    stream = TextStream(("END",))
    assert stream.push(b"abc EN") == "abc "
    assert stream.flush() == "EN"


def test_earliest_of_several_stop_strings_wins() -> None:
    stream = TextStream(("world", "lo w"))
    assert stream.push(b"hello world") == "hel"
    assert stream.stopped


@pytest.mark.parametrize("stops", [(), ("",)])
def test_no_stop_strings_passes_text_straight_through(stops: tuple[str, ...]) -> None:
    stream = TextStream(stops)
    assert stream.push(b"plain") == "plain"


def test_invalid_utf8_becomes_replacement_characters_instead_of_failing() -> None:
    stream = TextStream()
    assert stream.push(b"ok\xff") == "ok\ufffd"


def test_stop_string_inside_a_multibyte_sequence() -> None:
    stream = TextStream(("世界",))
    pieces = [bytes([b]) for b in "你好世界!".encode()]
    assert "".join(feed(stream, pieces)) == "你好"
    assert stream.stopped


def test_a_character_left_unfinished_at_the_end_is_dropped() -> None:
    stream = TextStream()
    assert stream.push("ok🐙".encode()[:-1]) == "ok"
    assert stream.flush() == ""


def test_lone_surrogates_are_refused_before_they_reach_llama_cpp() -> None:
    from engine import ValidationError
    from engine.llama import utf8

    with pytest.raises(ValidationError):
        utf8("ok \ud800")
    assert utf8("é") == b"\xc3\xa9"
