from __future__ import annotations

import pytest

from cardsvc.web.ratelimit import TokenBuckets


def test_burst_then_the_rate():
    buckets = TokenBuckets(rate=2.0, burst=3.0)
    assert [buckets.take("t", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("t", 0.0) == pytest.approx(0.5)
    assert buckets.take("t", 0.5) == 0.0  # one token came back after half a second
    assert buckets.take("other", 0.5) == 0.0  # keys do not share a bucket


def test_refill_never_exceeds_the_burst():
    buckets = TokenBuckets(rate=10.0, burst=2.0)
    buckets.take("t", 0.0)
    assert [buckets.take("t", 100.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert buckets.take("t", 100.0) > 0


def test_forgets_the_least_recent_keys():
    buckets = TokenBuckets(rate=1.0, burst=1.0, max_keys=2)
    buckets.take("a", 0.0)
    buckets.take("b", 0.0)
    buckets.take("c", 0.0)
    assert buckets.take("a", 0.0) == 0.0  # "a" was forgotten: a fresh bucket


def test_wait_looks_without_taking():
    buckets = TokenBuckets(rate=1.0, burst=1.0)
    assert buckets.wait("t", 0.0) == 0.0 and buckets.wait("t", 0.0) == 0.0
    assert buckets.take("t", 0.0) == 0.0
    assert buckets.wait("t", 0.0) == 1.0 and buckets.wait("t", 0.5) == 0.5
    assert buckets.wait("t", 1.0) == 0.0
