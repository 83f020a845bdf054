from __future__ import annotations

import datetime as dt

import pytest

from cardsvc.cards.records import CardHolder, build_records, expiry_for, gbk_name


def test_records_match_the_card_profile():
    records = build_records(
        card_sn="320200" + "ab" * 13,
        card_no="A00000042",
        admdvs="320200",
        issue_date=dt.date(2026, 11, 25),
        expiry_date=dt.date(2036, 11, 25),
        holder=CardHolder(
            certno="11010519491231002X", psn_name="王五", gend="2", brdy=dt.date(1949, 12, 31)
        ),
    )
    assert records.ef05 == {
        "01": "320200" + "ab" * 13,
        "02": "33",
        "03": "332e3030",
        "04": "333230323030",
        "05": "20261125",
        "06": "20361125",
        "07": b"A00000042".hex(),
    }
    assert records.ef06["08"] == b"11010519491231002X".hex()
    assert bytes.fromhex(records.ef06["09"]) == "王五".encode("gbk") + b" " * 26
    assert records.ef06["0a"] == "32" and records.ef06["0d"] == "19491231"


def test_name_longer_than_30_gbk_bytes_is_refused():
    assert len(gbk_name("一" * 15)) == 30
    with pytest.raises(ValueError, match="30 GBK bytes"):
        gbk_name("一" * 16)


@pytest.mark.parametrize(
    ("issued", "expires"),
    [(dt.date(2026, 11, 25), dt.date(2036, 11, 25)), (dt.date(2028, 2, 29), dt.date(2038, 2, 28))],
)
def test_expiry_is_ten_years(issued: dt.date, expires: dt.date):
    assert expiry_for(issued) == expires
