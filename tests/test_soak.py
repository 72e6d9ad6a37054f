"""A bounded soak: mixed traffic with vanishing clients and bursts past the limit leaks nothing."""

from __future__ import annotations

from typing import Any

from bench.soak import soak


def test_a_bounded_soak_ends_clean(start_server: Any) -> None:
    with start_server("--max-concurrent-requests", "6", "--parallel", "4", "--log-level", "warning") as url:
        report = soak(url, n_requests=80, limit=6, parallel=4, seed=1)
    assert report.server_errors == 0, report.outcomes
    assert report.idle_at_end, report.final
    assert report.outcomes.get("http_429", 0) > 0  # the bursts really went past the limit
    assert report.outcomes.get("ok", 0) > 30
    assert report.rss_growth < 0.10, (report.rss_start, report.rss_end)
