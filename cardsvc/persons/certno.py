"""公民身份号码 (resident identity number): check digit, embedded fields, masking. Pure.

Format (GB 11643): 6-digit region, 8-digit birth date YYYYMMDD, 3-digit sequence (odd for
men, even for women), and a check character by ISO 7064 MOD 11-2 (``0``-``9`` or ``X``).
"""

from __future__ import annotations

import datetime as dt

_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))
_CHECK_CHARS = "10X98765432"


class InvalidCertno(ValueError):
    """The identity number is malformed; the message says how."""


def check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits."""
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def normalise(certno: str) -> str:
    return certno.strip().upper()


def validate(certno: str) -> str:
    """The normalised number, or InvalidCertno naming what is wrong."""
    value = normalise(certno)
    if (
        len(value) != 18
        or not value[:17].isdigit()
        or not (value[17].isdigit() or value[17] == "X")
    ):
        raise InvalidCertno("identity number must be 17 digits and a check digit or X")
    if check_char(value[:17]) != value[17]:
        raise InvalidCertno("identity number check digit is wrong")
    birth_date(value)
    return value


def birth_date(certno: str) -> dt.date:
    try:
        return dt.datetime.strptime(certno[6:14], "%Y%m%d").date()
    except ValueError:
        raise InvalidCertno("identity number has no valid birth date") from None


def gender(certno: str) -> str:
    """``1`` male (odd sequence digit), ``2`` female, as the national gend codes."""
    return "1" if int(certno[16]) % 2 else "2"


# What a mask shows: the province (first two digits) and the last two characters (the
# sequence's gender digit and the check character). The rest of the region, the whole
# birth date and two sequence digits stay hidden, so that with everything else a response
# or a database row shows (admdvs, gend, birth_year) about 3,300 numbers remain possible
# (docs/design-notes.md, Data at rest).
MASK_HEAD, MASK_TAIL = 2, 2


def mask(certno: str) -> str:
    """``32**************34``: the first two and the last two characters only."""
    hidden = len(certno) - MASK_HEAD - MASK_TAIL
    return certno[:MASK_HEAD] + "*" * hidden + certno[-MASK_TAIL:]
