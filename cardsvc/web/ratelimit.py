"""Per-key token buckets, pure: each terminal may send ``rate`` requests a second on
average and ``burst`` at once. Kept per process (a worker's share of the traffic); with N
workers a terminal gets at most N times the rate, which still bounds a runaway terminal
without a shared store on the hot path."""

from __future__ import annotations

from collections import OrderedDict


class TokenBuckets:
    def __init__(self, rate: float, burst: float, max_keys: int = 50_000) -> None:
        self._rate, self._burst, self._max = rate, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait(self, key: str, now: float) -> float:
        """The seconds until ``key`` has a token (0.0: it has one now), taking none."""
        tokens, last = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate

    def take(self, key: str, now: float) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available."""
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max:  # forget the least recently seen
            self._buckets.popitem(last=False)
        return wait
