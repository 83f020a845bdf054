"""Readiness from the dependencies' answers, and how a database is named in messages."""

from __future__ import annotations

import pytest

from cardsvc.db import where
from cardsvc.ops.services import readiness_of


@pytest.mark.parametrize(
    ("database", "hsm", "status", "degraded", "serving"),
    [
        (True, True, "ok", [], True),
        (True, False, "degraded", ["hsm"], True),  # settlement needs no HSM: still ready
        (False, True, "unavailable", [], False),
        (False, False, "unavailable", ["hsm"], False),
    ],
)
def test_readiness(database: bool, hsm: bool, status: str, degraded: list[str], serving: bool):
    ready = readiness_of(database=database, hsm=hsm)
    assert (ready.status, ready.degraded, ready.serving) == (status, degraded, serving)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("postgresql://cardsvc:pw@db.example:6432/cardsvc", "db.example:6432/cardsvc"),
        ("postgresql://u@127.0.0.1/x", "127.0.0.1:5432/x"),
        ("postgresql:///cardsvc", "localhost:5432/cardsvc"),
    ],
)
def test_a_database_is_named_without_its_credentials(url: str, named: str):
    assert where(url) == named
