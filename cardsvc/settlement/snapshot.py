"""Reading what the policy engine needs about one settlement, in one round trip.

With ``lock=True`` the person's account row is locked ``FOR UPDATE`` until the end of the
transaction. Every write to a person's account or year state (settle, reverse) takes this
lock first, so two settlements of one person run one after the other and see each other's
effects: the year-state and balance rows need no lock of their own.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from cardsvc.db import Connection
from cardsvc.errors import NotFound
from cardsvc.settlement.policy import (
    CatalogItem,
    Enrolment,
    FacilityInfo,
    InjuryCase,
    Snapshot,
    YearState,
)

YEAR_COLUMNS = (
    "hifp_310",
    "seg_310",
    "inpatient_310",
    "hifp_390",
    "outpatient_fund_390",
    "prenatal_510",
    "deliveries_510",
)

_QUERY = """
SELECT p.psn_type, a.balance,
  (SELECT status FROM cards WHERE card_no = $2 AND psn_no = p.psn_no) AS card_status,
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
      FROM year_states WHERE psn_no = p.psn_no AND year = $6) y) AS year
FROM persons p JOIN psn_accounts a USING (psn_no)
WHERE p.psn_no = $1
"""

_enrolments = msgspec.json.Decoder(list[Enrolment])
_facility = msgspec.json.Decoder(FacilityInfo)
_catalog = msgspec.json.Decoder(list[CatalogItem])
_injury_case = msgspec.json.Decoder(InjuryCase)
_year = msgspec.json.Decoder(YearState)


async def load_snapshot(
    conn: Connection,
    *,
    psn_no: str,
    card_no: str,
    fixmedins_code: str,
    item_codes: list[str],
    injury_case_id: str | None,
    settle_date: dt.date,
    lock: bool,
) -> Snapshot:
    query = _QUERY + (" FOR UPDATE OF a" if lock else "")
    row = await conn.fetchrow(
        query,
        psn_no,
        card_no,
        fixmedins_code,
        item_codes,
        injury_case_id,
        settle_date.year,
    )
    if row is None:
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
    )
