from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardsvc.persons import certno

VALID = [
    ("11010519491231002X", dt.date(1949, 12, 31), "2"),
    ("440524188001010014", dt.date(1880, 1, 1), "1"),
    ("11010119900307803X", dt.date(1990, 3, 7), "1"),
]
INVALID = [
    ("110105194912310021", "check digit"),
    ("11010519491231002", "17 digits"),
    ("1101051949123100XX", "17 digits"),
    ("110105194913310021", "birth date"),
    ("", "17 digits"),
]


@pytest.mark.parametrize(("number", "birth", "gend"), VALID)
def test_valid_numbers(number: str, birth: dt.date, gend: str):
    assert certno.validate(number.lower()) == number
    assert certno.birth_date(number) == birth
    assert certno.gender(number) == gend


@pytest.mark.parametrize(("number", "why"), INVALID)
def test_invalid_numbers(number: str, why: str):
    with pytest.raises(certno.InvalidCertno, match=why):
        certno.validate(number)


def test_mask_keeps_the_first_two_and_last_two():
    # Region, birth date and two sequence digits hidden (issue #11, item 3).
    assert certno.mask("11010519491231002X") == "11**************2X"


@given(st.text(alphabet="0123456789", min_size=17, max_size=17))
def test_exactly_one_check_character_is_accepted(first17: str):
    accepted = [c for c in "0123456789X" if _accepts(first17 + c)]
    assert len(accepted) <= 1
    assert not accepted or accepted[0] == certno.check_char(first17)


def _accepts(number: str) -> bool:
    try:
        certno.validate(number)
    except certno.InvalidCertno:
        return False
    return True
