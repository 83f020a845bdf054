"""Valid 18-char identity numbers (公民身份号码, GB 11643) for test data."""

from __future__ import annotations

import random
from datetime import date

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def check_digit(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character."""
    total = sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True))
    return "10X98765432"[total % 11]


def is_valid(certno: str) -> bool:
    return len(certno) == 18 and certno[:17].isdigit() and check_digit(certno[:17]) == certno[17]


def make_certno(region: str, birth: date, male: bool) -> str:
    """Random sequence digits; the 17th digit is odd for men, even for women."""
    seq = random.randrange(0, 100) * 10 + random.choice(
        (1, 3, 5, 7, 9) if male else (0, 2, 4, 6, 8)
    )
    first17 = f"{region}{birth:%Y%m%d}{seq:03d}"
    return first17 + check_digit(first17)
