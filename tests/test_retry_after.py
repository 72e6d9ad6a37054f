"""Retry-After on a 429 is estimated from the queue (pure function, no server)."""

from __future__ import annotations

import pytest

from server.errors import RETRY_AFTER_MAX, RETRY_AFTER_SECONDS, retry_after


def test_nothing_measured_yet_gives_the_default() -> None:
    assert retry_after(waiting=5, running=4, seconds_in_slot=None) == RETRY_AFTER_SECONDS == 1


@pytest.mark.parametrize(
    ("waiting", "running", "seconds", "expected"),
    [
        (0, 1, 0.3, 1),  # a short request ends within the second: never less than 1
        (0, 1, 4.0, 4),  # one running request of ~4 s holds the only place
        (0, 4, 4.0, 1),  # four running: one of them ends every second on average
        (3, 4, 4.0, 4),  # three ahead plus our own place, at one place a second
        (7, 2, 3.0, 12),  # 8 places at 2 per 3 s
        (1, 0, 2.5, 5),  # nobody running yet (all just admitted): count as one
    ],
)
def test_grows_with_the_queue_and_shrinks_with_parallel_work(
    waiting: int, running: int, seconds: float, expected: int
) -> None:
    assert retry_after(waiting, running, seconds) == expected


def test_rounds_up_to_whole_seconds() -> None:
    assert retry_after(waiting=0, running=1, seconds_in_slot=1.01) == 2


def test_capped_where_clients_still_honour_it() -> None:
    assert retry_after(waiting=500, running=1, seconds_in_slot=30.0) == RETRY_AFTER_MAX == 60


def test_a_longer_queue_never_gives_a_shorter_wait() -> None:
    waits = [retry_after(waiting, 4, 2.0) for waiting in range(200)]
    assert waits == sorted(waits)
    assert waits[0] == 1 and waits[-1] == RETRY_AFTER_MAX
