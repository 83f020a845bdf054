"""How a person search's ``q`` becomes a filter: psn_no, identity number (by its keyed
hash only), or a name prefix as an index range."""

from __future__ import annotations

import pytest

from cardsvc.paging import QueryInvalid
from cardsvc.persons.search import person_filter, prefix_range
from cardsvc.privacy import DataProtector
from tests.support.api import make_certno

PROTECTOR = DataProtector(b"\1" * 32)


def test_a_prefix_range_holds_exactly_the_names_that_begin_with_it() -> None:
    low, high = prefix_range("张")
    names = ["张", "张三", "张三丰", "弛", "引", "张\U0010ffff", "章"]
    inside = sorted(n for n in names if low.encode() <= n.encode() < high.encode())
    assert inside == sorted(n for n in names if n.startswith("张"))


def test_an_identity_number_is_searched_by_its_hash_never_in_clear() -> None:
    number = make_certno()
    where = person_filter(number.lower(), PROTECTOR)
    assert where.sql == "certno_hash = $1"
    assert where.args == [PROTECTOR.lookup_hash(number)]
    assert number not in repr(where.args)


def test_psn_no_name_and_bad_numbers() -> None:
    assert person_filter("3202000000000001", PROTECTOR).sql == "psn_no = $1"
    assert person_filter("张", PROTECTOR).sql == "psn_name ~>=~ $1 AND psn_name ~<~ $2"
    assert person_filter(None, PROTECTOR).sql == "TRUE"
    number = make_certno()
    wrong_check = number[:17] + ("1" if number[17] == "0" else "0")
    with pytest.raises(QueryInvalid):
        person_filter(wrong_check, PROTECTOR)
