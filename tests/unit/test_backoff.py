"""Retry delays: exponential, jittered, capped, and never shorter than the API server asked for."""

from __future__ import annotations

from tandem.controller.backoff import delay, retry_after


def test_the_ceiling_doubles_with_each_attempt() -> None:
    assert [delay(attempt, rand=lambda: 1.0) for attempt in range(4)] == [0.5, 1.0, 2.0, 4.0]


def test_the_delay_is_spread_below_the_ceiling_by_jitter() -> None:
    assert delay(3, rand=lambda: 0.25) == 1.0
    assert delay(3, rand=lambda: 0.0) == 0.0


def test_the_delay_is_capped_however_many_attempts_failed() -> None:
    assert delay(1000, rand=lambda: 1.0) == 60.0


def test_a_retry_after_from_the_server_is_the_minimum_wait() -> None:
    assert delay(0, server_asked=7.0, rand=lambda: 1.0) == 7.0
    assert delay(10, server_asked=7.0, rand=lambda: 1.0) == 60.0


def test_retry_after_is_read_in_delta_seconds_whatever_the_header_case() -> None:
    assert retry_after({"Retry-After": "3"}) == 3.0
    assert retry_after({"retry-after": "1.5"}) == 1.5


def test_an_absent_or_unreadable_retry_after_asks_for_nothing() -> None:
    assert retry_after(None) is None
    assert retry_after({"Content-Type": "application/json"}) is None
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after({"Retry-After": "-4"}) is None
