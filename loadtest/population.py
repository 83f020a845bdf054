"""The synthetic population, pure: person ``i`` of the city is a fixed function of ``i``.

So a city can be extended (10,000 persons, then 1,000,000) and a person looked up again
without storing anything. Identity numbers are valid (GB 11643 check digit) and unique:
the district, birth date and sequence number come from a bijection of ``i``.
"""

from __future__ import annotations

import datetime as dt

from cardsvc.persons.certno import check_char

# Wuxi's districts and county-level cities (the first six digits of identity numbers).
DISTRICTS = ("320202", "320205", "320206", "320211", "320213", "320214", "320281", "320282")
_BIRTH_START = dt.date(1945, 1, 1)
_BIRTH_DAYS = 24_000  # to 2010-09
_SEQS = 1000
_SPACE = _BIRTH_DAYS * _SEQS  # identity numbers per district
_STRIDE = 7_368_787  # coprime to _SPACE: i -> i * _STRIDE mod _SPACE is a bijection
CAPACITY = len(DISTRICTS) * _SPACE
REFERENCE_YEAR = 2026  # ages, and so person types, are as of this year

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蔡蒋余"
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华文玉兰建国志红梅林海燕晨浩宇欣怡"


def mix(i: int) -> int:
    """splitmix64: a well-spread 64-bit hash of ``i``, the source of every attribute."""
    z = (i + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


class Person:
    """Person ``i``: identity, type, enrolments, account balance, injury case."""

    __slots__ = ("balance", "brdy", "certno", "gend", "index", "injured", "name", "psn_type")

    def __init__(self, i: int) -> None:
        if not 0 <= i < CAPACITY:
            raise ValueError(f"person index out of range 0..{CAPACITY - 1}")
        self.index = i
        district = DISTRICTS[i % len(DISTRICTS)]
        j = (i // len(DISTRICTS) * _STRIDE) % _SPACE
        self.brdy = _BIRTH_START + dt.timedelta(days=j // _SEQS)
        first17 = f"{district}{self.brdy:%Y%m%d}{j % _SEQS:03d}"
        self.certno = first17 + check_char(first17)
        self.gend = "1" if (j % _SEQS) % 2 else "2"
        h = mix(i)
        self.name = (
            _SURNAMES[h % len(_SURNAMES)]
            + _GIVEN[(h >> 8) % len(_GIVEN)]
            + _GIVEN[(h >> 16) % len(_GIVEN)]
        )
        self.psn_type = _psn_type(REFERENCE_YEAR - self.brdy.year, (h >> 24) % 100)
        employee = self.psn_type != "resident"
        # Personal accounts: 200 to 8,000 yuan in service, 500 to 15,000 retired.
        span = 780_000 if self.psn_type == "in_service" else 1_450_000
        self.balance = 20_000 + (h >> 32) % span + (30_000 if self.psn_type == "retired" else 0)
        if not employee:
            self.balance = 0
        self.injured = self.psn_type == "in_service" and (h >> 56) % 100 < 3

    @property
    def insutypes(self) -> list[str]:
        if self.psn_type == "resident":
            return ["390"]
        if self.psn_type == "retired":
            return ["310"]
        return ["310", "410", "510"]


def _psn_type(age: int, dice: int) -> str:
    if age < 18:
        return "resident"
    if age >= 60:
        return "retired" if dice < 70 else "resident"
    return "in_service" if dice < 72 else "resident"


def psn_no(admdvs: str, seq: int) -> str:
    """As the service numbers persons: the region and a 10-digit sequence number."""
    return f"{admdvs}{seq:010d}"


def card_no(seq: int) -> str:
    return f"A{seq:08d}"


def case_id(seq: int) -> str:
    return f"IC{seq:010d}"
