"""Sign-in throttling rule (pure). Failures are counted per login and per client address;
the first few are free, then each further failure locks the key for twice as long as the
previous one, up to a ceiling; a key quiet for ``FORGET_AFTER`` starts again from zero.

A password guesser gets a handful of tries and then one every quarter of an hour per login
and per address; an operator who mistypes twice loses nothing."""

from __future__ import annotations

import datetime as dt
import ipaddress

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


# One IPv6 host is given a whole /64 (its interface identifier is its own to choose): an
# address key finer than that would give a single guesser 2^64 fresh addresses.
IPV6_PREFIX = 64


def address_key(address: str) -> str:
    """The throttling key of a client address: an IPv4 address as it is (an IPv4-mapped
    IPv6 one too), an IPv6 address by its /64 network."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # no zone id (fe80::1%eth0)
    except ValueError:
        return "addr:" + address[:64]  # not an IP address (a Unix socket's peer)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"addr:{ip.ipv4_mapped}"
        return f"addr:{ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False)}"
    return f"addr:{ip}"
