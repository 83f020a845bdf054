"""Reading what the policy engine needs about a batch of settlements, in one round trip.

``read_for_settle`` returns, for each settlement of a batch, the snapshot the policy needs,
the account row's version (its ``xmin``), the settlement already stored under its
Idempotency-Key, whether its card token was spent, the person's recent settlements for fund
supervision, and its request's standing (session, terminal, facility). The batch's write
(``store.settlement_statement``) goes through only if every account row still has the
version read, and every write to a person's account or year state (settle, reverse,
review, credit) writes the account row: so a settlement is computed from a snapshot nobody
changed before it was stored, without a lock held while the service computes. The rare
person so busy that this keeps losing is settled alone under the account's lock
(``SettlementService``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg
import msgspec

from cardsvc.db import Connection
from cardsvc.errors import CardsvcError, NotFound
from cardsvc.settlement.flags import RecentActivity
from cardsvc.settlement.policy import (
    CatalogItem,
    Enrolment,
    FacilityInfo,
    InjuryCase,
    Snapshot,
    Stay,
    YearState,
)
from cardsvc.terminals.admission import check_admission, standing_select
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


def _columns(psn: str, fac: str, codes: str, case: str, year: str, stay: str, prefix: str) -> str:
    """What the policy needs, for the person in ``p`` (and ``a``, ``c``); the arguments are
    placeholders, or the columns of a batch's input row. ``stay`` (NULL: none, and nothing
    is read) is the ``mdtrt_id`` of the stay whose earlier settlements count, those whose
    Idempotency-Key starts with ``prefix`` (see :class:`StayKey`)."""
    return f"""
SELECT p.psn_type, a.balance, a.xmin AS account_version,
  c.status AS card_status, c.expiry_date AS card_expiry,
  (SELECT coalesce(json_agg(json_build_object(
      'insutype', i.insutype, 'begndate', i.begndate, 'enddate', i.enddate)), '[]')
   FROM insurances i WHERE i.psn_no = p.psn_no) AS enrolments,
  (SELECT row_to_json(f) FROM (
      SELECT fixmedins_code, type, level, credit_rating, status, agreements
      FROM facilities WHERE fixmedins_code = {fac}) f) AS facility,
  (SELECT coalesce(json_agg(json_build_object(
      'code', c.code, 'chrgitm_lv', c.chrgitm_lv, 'selfpay_prop', c.selfpay_prop,
      'max_price', c.max_price, 'work_injury', c.work_injury)), '[]')
   FROM unnest({codes}) AS k(code),
        -- OFFSET 0: one index probe per code, not a scan of the catalog per settlement
        LATERAL (SELECT * FROM catalog_items WHERE code = k.code OFFSET 0) c) AS catalog,
  (SELECT row_to_json(j) FROM (
      SELECT case_id, psn_no, status, valid_from, valid_to
      FROM injury_cases WHERE case_id = {case}) j) AS injury_case,
  (SELECT row_to_json(y) FROM (
      SELECT {", ".join(YEAR_COLUMNS)}
      FROM year_states WHERE psn_no = p.psn_no AND year = {year}) y) AS year,
  CASE WHEN {stay} IS NOT NULL THEN (SELECT json_build_object(
      'settled_this_year', count(*) FILTER (
          WHERE x.setl_date >= make_date({year}, 1, 1)
            AND x.setl_date < make_date({year} + 1, 1, 1)),
      'inscp_scp_amt', coalesce(sum(x.inscp_scp_amt), 0),
      'act_pay_dedc', coalesce(sum(x.act_pay_dedc), 0),
      'fund_pay_sumamt', coalesce(sum(x.fund_pay_sumamt), 0))
   FROM settlements x
   WHERE x.psn_no = p.psn_no AND x.fixmedins_code = {fac} AND x.mdtrt_id = {stay}
     AND x.status = 'settled' AND starts_with(x.idempotency_key, {prefix})) END AS stay"""


def _from(psn: str, card: str) -> str:
    """The person, the account, and the token's card if it is still this person's (one row:
    card_no is the key)."""
    return f"""
FROM persons p JOIN psn_accounts a USING (psn_no)
LEFT JOIN cards c ON c.card_no = {card} AND c.psn_no = p.psn_no
WHERE p.psn_no = {psn}"""


_PREVIEW = _columns("$1", "$3", "$4::text[]", "$5", "$6", "$7::text", "$8::text") + _from(
    "$1", "$2"
)

_BATCH_COLUMNS = _columns(
    "r.psn_no", "r.fixmedins_code", "r.codes", "r.injury_case_id", "$2", "r.stay", "r.stay_prefix"
)

# A batch of settlements read in one statement: each input row (``r``) gets its terminal's,
# session's and facility's standing (``adm``, NULL for a job without an admission or an
# unknown terminal) and its snapshot (``s``, NULL for an unknown person). Common to the
# batch: $2 year, $3 business date, $4 start of the other-facility window, $5 a day ago.
# It writes nothing (the nonces go with the batch's write), so it never waits for WAL.
# The nonce probe is a function (migration 0021): inline, its cached plan could be a scan.
_SETTLE_BATCH = f"""
SELECT r.n, adm.fenced IS NOT NULL AS has_standing, adm.*, s.*,
  nonce_recorded(r.terminal_id, r.nonce) AS nonce_seen
FROM json_to_recordset($1::json) AS r(
    n int, psn_no text, card_no char(9), fixmedins_code text, codes text[],
    injury_case_id text, idempotency_key text, card_auth_id text,
    terminal_id text, session_id text, nonce text, stay text, stay_prefix text)
LEFT JOIN LATERAL ({standing_select("r.terminal_id", "r.session_id")}) adm ON true
LEFT JOIN LATERAL ({_BATCH_COLUMNS},
  (SELECT setl_id FROM settlements
   WHERE fixmedins_code = r.fixmedins_code AND idempotency_key = r.idempotency_key) AS earlier,
  EXISTS (SELECT 1 FROM settlements WHERE card_auth_id = decode(r.card_auth_id, 'hex'))
      AS token_used,
  (SELECT count(*) FROM settlements
   WHERE psn_no = p.psn_no AND status = 'settled' AND setl_time > $5
     AND fixmedins_type = 'pharmacy' AND setl_date = $3) AS pharmacy_today,
  (SELECT max(fixmedins_code) FROM settlements
   WHERE psn_no = p.psn_no AND status = 'settled' AND setl_time > $4
     AND card_no = r.card_no AND fixmedins_code <> r.fixmedins_code) AS other_facility
  {_from("r.psn_no", "r.card_no")}
) s ON true
ORDER BY r.n"""

_enrolments = msgspec.json.Decoder(list[Enrolment])
_facility = msgspec.json.Decoder(FacilityInfo)
_catalog = msgspec.json.Decoder(list[CatalogItem])
_injury_case = msgspec.json.Decoder(InjuryCase)
_year = msgspec.json.Decoder(YearState)
_stay = msgspec.json.Decoder(Stay)
_batch_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class StayKey:
    """A settlement that is a part of an inpatient stay settled in parts (the national
    gateway's mid-stay and final settlements): the stay is ``mdtrt_id`` at the settlement's
    facility, of its person, and its earlier parts are the non-reversed settlements under
    it whose Idempotency-Key starts with ``key_prefix`` (the gateway's: a native
    settlement naming the same ``mdtrt_id`` is a stay of its own). The snapshot's
    ``stay`` sums what they took (``policy.Stay``)."""

    mdtrt_id: str
    key_prefix: str


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
    stay: StayKey | None = None,
) -> Snapshot:
    """The snapshot as it stands, without locking (a preview)."""
    row = await conn.fetchrow(
        _PREVIEW,
        psn_no,
        card_no,
        fixmedins_code,
        item_codes,
        injury_case_id,
        settle_date.year,
        None if stay is None else stay.mdtrt_id,
        None if stay is None else stay.key_prefix,
    )
    return _snapshot(row, psn_no, settle_date)


@dataclass(frozen=True)
class SettleInput:
    """One settlement of a batch to read: whose, where, what, and its request's admission."""

    psn_no: str
    card_no: str
    fixmedins_code: str
    item_codes: list[str]
    injury_case_id: str | None
    idempotency_key: str
    card_auth_id: bytes
    standing_of: Admission | None = None  # a request to admit: its standing is checked
    stay: StayKey | None = None  # a part of a stay: its earlier parts are read


async def read_for_settle(
    conn: Connection,
    inputs: list[SettleInput],
    *,
    now: dt.datetime,
    settle_date: dt.date,
    other_facility_window: dt.timedelta,
) -> list[SettleRead | CardsvcError]:
    """Every input's snapshot in one statement, in order; an input refused by its standing
    (an ended session, a disabled or suspended terminal) or naming no person or facility
    gets its error instead."""
    rows = await conn.fetch(
        _SETTLE_BATCH,
        _batch_json.encode([_input_row(n, i) for n, i in enumerate(inputs)]).decode(),
        settle_date.year,
        settle_date,
        now - other_facility_window,
        now - dt.timedelta(days=1),
    )
    return [_settle_read(row, i, settle_date) for row, i in zip(rows, inputs, strict=True)]


def _input_row(n: int, i: SettleInput) -> dict[str, object]:
    admission = i.standing_of
    return {
        "n": n,
        "psn_no": i.psn_no,
        "card_no": i.card_no,
        "fixmedins_code": i.fixmedins_code,
        "codes": i.item_codes,
        "injury_case_id": i.injury_case_id,
        "idempotency_key": i.idempotency_key,
        "card_auth_id": i.card_auth_id.hex(),
        "terminal_id": None if admission is None else admission.terminal_id,
        "session_id": None if admission is None else admission.session_id,
        "nonce": None if admission is None else admission.nonce,
        "stay": None if i.stay is None else i.stay.mdtrt_id,
        "stay_prefix": None if i.stay is None else i.stay.key_prefix,
    }


def _settle_read(
    row: asyncpg.Record, i: SettleInput, settle_date: dt.date
) -> SettleRead | CardsvcError:
    try:
        if i.standing_of is not None:
            # A replay already recorded is refused here, alone, not by failing the batch's
            # write (that still catches two copies racing through two workers).
            check_admission(
                {**row, "fresh": not row["nonce_seen"]} if row["has_standing"] else None
            )
        snapshot = _snapshot(row, i.psn_no, settle_date)
    except CardsvcError as exc:
        return exc
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
        stay=_stay.decode(row["stay"]) if row["stay"] else Stay(),
    )
