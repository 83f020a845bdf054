"""Reading what the policy engine needs about one settlement, in one round trip.

``read_for_settle`` also returns the account row's version (its ``xmin``), looks the
Idempotency-Key up, and counts the person's recent settlements for fund supervision. The
settlement's write (``store.settlement_statement``) goes through only if the account row
still has that version, and every write to a person's account or year state (settle,
reverse, review, credit) writes the account row: so a settlement is computed from a
snapshot nobody changed before it was stored, without a lock held while the service
computes. ``lock=True`` also takes the row ``FOR UPDATE`` until the end of the caller's
transaction: the path for a person so busy that the optimistic one keeps losing.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from cardsvc.db import Connection
from cardsvc.errors import NotFound
from cardsvc.settlement.flags import RecentActivity
from cardsvc.settlement.policy import (
    CatalogItem,
    Enrolment,
    FacilityInfo,
    InjuryCase,
    Snapshot,
    YearState,
)
from cardsvc.terminals.admission import check_admission, standing_cte
from cardsvc.web.caller import Admission

YEAR_COLUMNS = (
    "hifp_310",
    "seg_310",
    "inpatient_310",
    "hifp_390",
    "outpatient_fund_390",
    "prenatal_510",
    "deliveries_510",
)

_COLUMNS = """
SELECT p.psn_type, a.balance, a.xmin AS account_version,
  c.status AS card_status, c.expiry_date AS card_expiry,
  (SELECT coalesce(json_agg(json_build_object(
      'insutype', i.insutype, 'begndate', i.begndate, 'enddate', i.enddate)), '[]')
   FROM insurances i WHERE i.psn_no = p.psn_no) AS enrolments,
  (SELECT row_to_json(f) FROM (
      SELECT fixmedins_code, type, level, credit_rating, status, agreements
      FROM facilities WHERE fixmedins_code = $3) f) AS facility,
  (SELECT coalesce(json_agg(json_build_object(
      'code', c.code, 'chrgitm_lv', c.chrgitm_lv, 'selfpay_prop', c.selfpay_prop,
      'max_price', c.max_price, 'work_injury', c.work_injury)), '[]')
   FROM catalog_items c WHERE c.code = ANY($4::text[])) AS catalog,
  (SELECT row_to_json(j) FROM (
      SELECT case_id, psn_no, status, valid_from, valid_to
      FROM injury_cases WHERE case_id = $5) j) AS injury_case,
  (SELECT row_to_json(y) FROM (
      SELECT hifp_310, seg_310, inpatient_310, hifp_390, outpatient_fund_390,
             prenatal_510, deliveries_510
      FROM year_states WHERE psn_no = p.psn_no AND year = $6) y) AS year"""

# The token's card, if it is still this person's (one row: card_no is the key).
_FROM = """
FROM persons p JOIN psn_accounts a USING (psn_no)
LEFT JOIN cards c ON c.card_no = $2 AND c.psn_no = p.psn_no
WHERE p.psn_no = $1"""

_PREVIEW = _COLUMNS + _FROM

# $7 idempotency key, $8 business date, $9 start of the other-facility window, $10 a day ago,
# $11 the card token's auth_id.
_SETTLE = (
    _COLUMNS
    + """,
  (SELECT setl_id FROM settlements
   WHERE fixmedins_code = $3 AND idempotency_key = $7) AS earlier,
  EXISTS (SELECT 1 FROM settlements WHERE card_auth_id = $11) AS token_used,
  (SELECT count(*) FROM settlements
   WHERE psn_no = p.psn_no AND status = 'settled' AND setl_time > $10
     AND fixmedins_type = 'pharmacy' AND setl_date = $8) AS pharmacy_today,
  (SELECT max(fixmedins_code) FROM settlements
   WHERE psn_no = p.psn_no AND status = 'settled' AND setl_time > $9
     AND card_no = $2 AND fixmedins_code <> $3) AS other_facility"""
    + _FROM
)
_SETTLE_LOCKED = _SETTLE + "\nFOR UPDATE OF a"
# The first read of a settlement also reads its terminal's and session's standing ($12
# terminal, $13 session): the admission row always comes back, the snapshot's columns are
# NULL for an unknown person. It writes nothing (the nonce goes with the settlement's
# write), so it never waits for WAL.
_SETTLE_STANDING = (
    f"WITH {standing_cte('$12', '$13')}\nSELECT admission.*, s.* FROM admission LEFT JOIN ("
    + _SETTLE
    + "\n) s ON true"
)

_enrolments = msgspec.json.Decoder(list[Enrolment])
_facility = msgspec.json.Decoder(FacilityInfo)
_catalog = msgspec.json.Decoder(list[CatalogItem])
_injury_case = msgspec.json.Decoder(InjuryCase)
_year = msgspec.json.Decoder(YearState)


class SettleRead(msgspec.Struct, frozen=True):
    snapshot: Snapshot
    earlier: str | None  # the setl_id already stored under this Idempotency-Key
    token_used: bool  # a settlement was already paid for with this card token
    recent: RecentActivity
    account_version: int


async def load_snapshot(
    conn: Connection,
    *,
    psn_no: str,
    card_no: str,
    fixmedins_code: str,
    item_codes: list[str],
    injury_case_id: str | None,
    settle_date: dt.date,
) -> Snapshot:
    """The snapshot as it stands, without locking (a preview)."""
    row = await conn.fetchrow(
        _PREVIEW, psn_no, card_no, fixmedins_code, item_codes, injury_case_id, settle_date.year
    )
    return _snapshot(row, psn_no, settle_date)


async def read_for_settle(
    conn: Connection,
    *,
    psn_no: str,
    card_no: str,
    fixmedins_code: str,
    item_codes: list[str],
    injury_case_id: str | None,
    idempotency_key: str,
    card_auth_id: bytes,
    now: dt.datetime,
    settle_date: dt.date,
    other_facility_window: dt.timedelta,
    lock: bool = False,
    standing_of: Admission | None = None,
) -> SettleRead:
    """With ``standing_of`` (a request to admit), its session's, its terminal's and the
    facility's standing is read by the same statement, and an ended session or a disabled
    or suspended terminal refused before anything else is looked at."""
    sql = _SETTLE_LOCKED if lock else _SETTLE
    extra: tuple[str, ...] = ()
    if standing_of is not None:
        sql, extra = _SETTLE_STANDING, (standing_of.terminal_id, standing_of.session_id)
    row = await conn.fetchrow(
        sql,
        psn_no,
        card_no,
        fixmedins_code,
        item_codes,
        injury_case_id,
        settle_date.year,
        idempotency_key,
        settle_date,
        now - other_facility_window,
        now - dt.timedelta(days=1),
        card_auth_id,
        *extra,
    )
    if standing_of is not None:
        check_admission(row)
    snapshot = _snapshot(row, psn_no, settle_date)
    return SettleRead(
        snapshot=snapshot,
        earlier=row["earlier"],
        token_used=row["token_used"],
        recent=RecentActivity(
            pharmacy_purchases_today=row["pharmacy_today"],
            other_facility_recently=row["other_facility"],
        ),
        account_version=row["account_version"],
    )


def _snapshot(row: asyncpg.Record | None, psn_no: str, settle_date: dt.date) -> Snapshot:
    if row is None or row["psn_type"] is None:
        raise NotFound("no such person", code="PERSON_NOT_FOUND")
    if row["facility"] is None:
        raise NotFound("no such facility", code="FACILITY_NOT_FOUND")
    return Snapshot(
        psn_no=psn_no,
        psn_type=row["psn_type"],
        # A card that is not this person's is, for this settlement, no active card.
        card_status=row["card_status"] or "unknown",
        settle_date=settle_date,
        balance=row["balance"],
        year=_year.decode(row["year"]) if row["year"] else YearState(),
        enrolments=tuple(_enrolments.decode(row["enrolments"])),
        facility=_facility.decode(row["facility"]),
        catalog={item.code: item for item in _catalog.decode(row["catalog"])},
        injury_case=_injury_case.decode(row["injury_case"]) if row["injury_case"] else None,
        card_expiry=row["card_expiry"],
    )
