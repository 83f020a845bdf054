"""A masked identity number cannot be rebuilt from what the service answers or stores
(issue #11, item 3).

The attack: take every field a response (or a database dump) shows about a person — the
mask, ``admdvs`` (usually the number's region), ``gend`` (the parity of the sequence),
the birth year or date — enumerate every 18-character number consistent with them and
with the ISO 7064 MOD 11-2 check character, and see how many are left. The person's real
number must be among them (the enumeration is right) and must not be alone: at least
``MIN_CANDIDATES`` remain, and the clear number and birth date appear nowhere.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cardsvc import db
from cardsvc.devenv.pgcluster import LocalCluster
from tests.support.api import Service, authenticate_card, issue_card

pytestmark = pytest.mark.asyncio(loop_scope="session")

MIN_CANDIDATES = 1000
VISIBLE = ("certno", "admdvs", "gend", "brdy", "birth_year")
_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]
_CHECK_CHARS = "10X98765432"


def _weighted(text: str, start: int) -> int:
    return sum(int(c) * _WEIGHTS[start + i] for i, c in enumerate(text))


def _birth_days(visible: dict[str, str]) -> list[dt.date]:
    if "brdy" in visible:
        return [dt.date.fromisoformat(visible["brdy"][:10])]
    assert "birth_year" in visible, "nothing of the birth date is visible: widen the search"
    year = int(visible["birth_year"])
    first = dt.date(year, 1, 1)
    return [first + dt.timedelta(days=n) for n in range((dt.date(year + 1, 1, 1) - first).days)]


def rebuild(visible: dict[str, str]) -> list[str]:
    """Every identity number consistent with the visible fields (the attacker's view:
    the region is taken to be ``admdvs``; the mask's shown characters must match)."""
    shown = visible.get("certno", "*" * 18)
    assert len(shown) == 18, shown

    def fits(start: int, text: str) -> bool:
        return all(shown[start + i] in ("*", c) for i, c in enumerate(text))

    region = visible["admdvs"]
    if not fits(0, region):
        return []
    parity = {"1": 1, "2": 0}.get(visible.get("gend", ""))
    seqs = [
        f"{n:03d}"
        for n in range(1000)
        if (parity is None or n % 2 == parity) and fits(14, f"{n:03d}")
    ]
    found = []
    for day in _birth_days(visible):
        head = region + f"{day:%Y%m%d}"
        if not fits(6, head[6:]):
            continue
        head_sum = _weighted(head, 0)
        for seq in seqs:
            check = _CHECK_CHARS[(head_sum + _weighted(seq, 14)) % 11]
            if shown[17] in ("*", check):
                found.append(head + seq + check)
    return found


def _visible(*answers: Any) -> dict[str, str]:
    """The identity-related fields the answers show, wherever they are nested."""
    seen: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in VISIBLE and isinstance(value, str | int):
                    assert seen.setdefault(key, str(value)) == str(value), (key, value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for answer in answers:
        walk(answer)
    return seen


def assert_not_rebuildable(certno: str, text: str, visible: dict[str, str], where: str) -> None:
    candidates = rebuild(visible)
    assert certno in candidates, f"{where}: the enumeration misses the real number"
    assert len(candidates) >= MIN_CANDIDATES, (
        f"{where}: only {len(candidates)} numbers fit {visible}"
    )
    birth = dt.date(int(certno[6:10]), int(certno[10:12]), int(certno[12:14]))
    for secret in (certno, certno[6:14], birth.isoformat()):
        assert secret not in text, f"{where} shows {secret!r} in clear"


async def test_no_answer_rebuilds_the_identity_number(service: Service) -> None:
    person = await service.person(insutypes=())
    certno, psn_no = person["certno_full"], person["psn_no"]
    created = {k: v for k, v in person.items() if k != "certno_full"}
    enrolled = await service.admin_ok(
        "POST", f"/v1/persons/{psn_no}/insurances", {"insutype": "310", "begndate": "2020-01-01"}
    )
    fetched = await service.admin_ok("GET", f"/v1/persons/{psn_no}")
    facility = await service.facility()
    counter = await service.terminal("counter")
    pos = await service.terminal("pos", facility["fixmedins_code"])
    kiosk = await service.terminal("kiosk")
    card = await issue_card(counter, psn_no)
    at_pos = await authenticate_card(pos, card, "transaction")
    at_kiosk = await authenticate_card(kiosk, card, "identify")
    token = {"card_token": at_kiosk["card_token"]}
    summary = await kiosk.call("POST", "/v1/kiosk/summary", token)
    lost = await kiosk.call("POST", "/v1/kiosk/report-loss", token)

    answers = {
        "POST /v1/persons": [created],
        "POST /v1/persons/{psn_no}/insurances": [enrolled],
        "GET /v1/persons/{psn_no}": [fetched],
        "POST /v1/card-auth/verify (pos)": [at_pos],
        "kiosk: card-auth/verify, summary, report-loss": [at_kiosk, summary, lost],
    }
    everything = [a for group in answers.values() for a in group]
    answers["all of these together"] = everything
    for where, group in answers.items():
        text = json.dumps(group, ensure_ascii=False)
        assert_not_rebuildable(certno, text, _visible(*group), where)


def _copy_rows(dump: str, table: str) -> list[dict[str, str]]:
    """The rows of ``table`` in a plain pg_dump, as column -> text."""
    lines = iter(dump.splitlines())
    for line in lines:
        if line.startswith(f"COPY public.{table} ("):
            columns = line[line.index("(") + 1 : line.index(")")].split(", ")
            break
    else:
        raise AssertionError(f"no COPY of {table} in the dump")
    rows = []
    for line in lines:
        if line == "\\.":
            break
        rows.append(dict(zip(columns, line.split("\t"), strict=True)))
    return rows


async def test_a_database_dump_does_not_rebuild_the_identity_number(
    service: Service, pg_cluster: LocalCluster
) -> None:
    person = await service.person()
    certno, psn_no = person["certno_full"], person["psn_no"]
    counter = await service.terminal("counter")
    await issue_card(counter, psn_no)

    dump = pg_cluster.dump(service.database_url.rsplit("/", 1)[1])
    (row,) = [r for r in _copy_rows(dump, "persons") if r["psn_no"] == psn_no]
    visible = {("certno" if k == "certno_masked" else k): v for k, v in row.items()}
    assert_not_rebuildable(certno, dump, _visible(visible), "pg_dump")


async def test_migration_0007_recomputes_masks_and_drops_the_birth_date(
    pg_cluster: LocalCluster, tmp_path: Path
) -> None:
    """An existing database: its masks are cut down from the old ones (no data key needed)
    and its birth dates become birth years."""
    before = tmp_path / "before"
    before.mkdir()
    for path in db.migration_files():
        if path.name < "0007":
            shutil.copy(path, before / path.name)
    name = f"mig_{secrets.token_hex(4)}"
    pg_cluster.create_database(name)
    conn = await asyncpg.connect(pg_cluster.url(name))
    try:
        await db.migrate(conn, before)
        await conn.execute(
            """
            INSERT INTO persons (psn_no, certno_hash, certno_enc, certno_masked, psn_name,
                                 gend, brdy, admdvs, psn_type)
            VALUES ('3202000000000001', '\\x01', '\\x02', '320200********7089', '张三', '2',
                    '1985-03-14', '320200', 'resident')
            """
        )
        applied = await db.migrate(conn)
        row = await conn.fetchrow("SELECT * FROM persons")
    finally:
        await conn.close()
    assert applied[0].startswith("0007_")
    assert row["certno_masked"] == "32**************89" and row["birth_year"] == 1985
    assert "brdy" not in row.keys()
