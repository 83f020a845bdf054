"""The card's EF05 and EF06 record data (docs/protocol.md, card profile), pure.

Values are returned as hex of the value bytes, keyed by the two-hex-digit record tag; the
card stores each as ``tag len value``.
"""

from __future__ import annotations

import datetime as dt

import msgspec

CARD_TYPE = "3"
SPEC_VERSION = "3.00"
NATIONALITY = "CHN"
NAME_BYTES = 30


class CardHolder(msgspec.Struct, frozen=True, kw_only=True):
    certno: str
    psn_name: str
    gend: str
    brdy: dt.date


class CardRecords(msgspec.Struct, kw_only=True):
    ef05: dict[str, str]
    ef06: dict[str, str]


def bcd_date(day: dt.date) -> bytes:
    return bytes.fromhex(day.strftime("%Y%m%d"))


def gbk_name(name: str) -> bytes:
    encoded = name.encode("gbk")
    if len(encoded) > NAME_BYTES:
        raise ValueError("name longer than 30 GBK bytes")
    return encoded.ljust(NAME_BYTES, b" ")


def build_records(
    *,
    card_sn: str,
    card_no: str,
    admdvs: str,
    issue_date: dt.date,
    expiry_date: dt.date,
    holder: CardHolder,
) -> CardRecords:
    ef05 = {
        "01": bytes.fromhex(card_sn),
        "02": CARD_TYPE.encode(),
        "03": SPEC_VERSION.encode(),
        "04": admdvs.encode(),
        "05": bcd_date(issue_date),
        "06": bcd_date(expiry_date),
        "07": card_no.encode(),
    }
    ef06 = {
        "08": holder.certno.encode(),
        "09": gbk_name(holder.psn_name),
        "0a": holder.gend.encode(),
        "0b": NATIONALITY.encode(),
        "0d": bcd_date(holder.brdy),
    }
    return CardRecords(
        ef05={tag: value.hex() for tag, value in ef05.items()},
        ef06={tag: value.hex() for tag, value in ef06.items()},
    )


def expiry_for(issue_date: dt.date, years: int = 10) -> dt.date:
    try:
        return issue_date.replace(year=issue_date.year + years)
    except ValueError:  # 29 February
        return issue_date.replace(year=issue_date.year + years, day=28)
