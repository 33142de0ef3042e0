"""Personal data detection (sessionrec.pii) and the token-bucket rate limiter
(service.limits), with a fake clock."""

from __future__ import annotations

import pytest

from service.limits import RateLimiter
from sessionrec.errors import ResourceExhausted
from sessionrec.pii import personal_data_kind


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("a@b.co", "e-mail address"),
        ("write to jane.doe+news@mail.example.org today", "e-mail address"),
        ("4111111111111111", "card number"),  # Visa test number
        ("4111 1111 1111 1111", "card number"),
        ("5500-0000-0000-0004", "card number"),
        ("3782 822463 10005", "card number"),  # Amex, 15 digits
        ("+49 30 1234567", "phone number"),
        ("call +1 (555) 123-4567 now", "phone number"),
        ("(555) 123-4567", "phone number"),
        ("030 1234 5678", "phone number"),
    ],
)
def test_personal_data_is_recognised(text: str, kind: str) -> None:
    assert personal_data_kind(text) == kind


@pytest.mark.parametrize(
    "text",
    [
        "",
        "home",
        "1700000000000",  # a millisecond timestamp
        "4111111111111112",  # fails the Luhn check
        "1234567890",  # a bare order number
        "192.168.100.200",
        "2026-11-27",
        "2026 11 27",
        "v1.2.3",
        "price 12.99",
        "sku-12345",
        "+1",
        "@home",
        "user@localhost",
        "order 123456789 shipped",
    ],
)
def test_ordinary_values_are_not_personal_data(text: str) -> None:
    assert personal_data_kind(text) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_refuses_with_the_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 4, what="calls", clock=clock)
    for _ in range(4):
        limiter.take("u")
    with pytest.raises(ResourceExhausted) as caught:
        limiter.take("u", field="user_id")
    assert caught.value.retry_after_ms == 500  # one token at 2 per second
    assert str(caught.value).startswith("user_id: over the limit of 2 calls per second")
    limiter.take("v")  # other keys have their own bucket
    clock.now += 0.5
    limiter.take("u")
    with pytest.raises(ResourceExhausted):
        limiter.take("u")


def test_a_refused_request_takes_nothing_and_costs_add_up() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 10, clock=clock)
    limiter.take("u", 8)
    with pytest.raises(ResourceExhausted) as caught:
        limiter.take("u", 5)
    assert caught.value.retry_after_ms == 300  # 3 tokens missing at 10 per second
    limiter.take("u", 2)  # the refused 5 were not taken
    clock.now += 100  # refills to the burst, not beyond
    limiter.take("u", 10)
    with pytest.raises(ResourceExhausted):
        limiter.take("u", 1)


def test_more_than_the_burst_at_once_is_refused_without_a_retry_hint() -> None:
    limiter = RateLimiter(1.0, 5, what="events", clock=Clock())
    with pytest.raises(ResourceExhausted) as caught:
        limiter.take("u", 6, field="events")
    assert caught.value.retry_after_ms is None
    assert "send smaller batches" in str(caught.value)


def test_rate_zero_is_no_limit_and_buckets_are_bounded() -> None:
    off = RateLimiter(0)
    for _ in range(1000):
        off.take("u")
    clock = Clock()
    limiter = RateLimiter(1.0, 1, clock=clock, max_keys=3)
    for key in "abcd":
        limiter.take(key)
    assert len(limiter._buckets) == 3  # "a", least recently used, was dropped
    limiter.take("a")  # so it starts again with a full bucket
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(-1)
