"""Sign-in throttling rule (pure). Failures are counted per login and per client address;
the first few are free, then each further failure locks the key for twice as long as the
previous one, up to a ceiling; a key quiet for ``FORGET_AFTER`` starts again from zero.

A password guesser gets a handful of tries and then one every quarter of an hour per login
and per address; an operator who mistypes twice loses nothing."""

from __future__ import annotations

import datetime as dt

FREE_PER_LOGIN = 5
FREE_PER_ADDRESS = 20  # a whole office may share one address
FIRST_LOCK = dt.timedelta(seconds=1)
MAX_LOCK = dt.timedelta(minutes=15)
FORGET_AFTER = dt.timedelta(hours=1)


def lock_after(failures: int, free: int) -> dt.timedelta | None:
    """How long a key is locked once it has ``failures`` failures; ``None``: not locked."""
    over = failures - free
    if over <= 0:
        return None
    lock: dt.timedelta = FIRST_LOCK * (2 ** min(over - 1, 20))
    return min(MAX_LOCK, lock)


def login_key(login: str) -> str:
    return "login:" + login.lower()[:64]


def address_key(address: str) -> str:
    return "addr:" + address[:64]
