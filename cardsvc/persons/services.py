"""Persons and their enrolments.

The identity number is validated, then stored only as an AEAD ciphertext (bound to the
psn_no), a keyed lookup hash (for the duplicate check) and its masked form (for display).
Of the birth date only the year is kept: the full date is the part of the number a mask
must hide (the card's EF06 date is derived from the decrypted number at issuance).
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from cardsvc.audit.services import AuditLog
from cardsvc.db import Connection, Pool, transaction
from cardsvc.errors import BusinessRuleViolation, Conflict, InvalidRequest, NotFound
from cardsvc.persons import certno
from cardsvc.persons.models import (
    BaseInfo,
    CreatePerson,
    EnrolInsurance,
    InsuInfo,
    Insurance,
    Person,
    PersonSummary,
)
from cardsvc.privacy import DataProtector
from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params
from cardsvc.web.caller import Caller

NAME_BYTES = 30  # EF06 tag 09: GBK, 30 bytes


def _checked_certno(req: CreatePerson) -> str:
    try:
        value = certno.validate(req.certno)
    except certno.InvalidCertno as exc:
        raise InvalidRequest(str(exc), code="INVALID_CERTNO") from None
    if certno.birth_date(value) != req.brdy:
        raise InvalidRequest("brdy differs from the identity number", code="INVALID_CERTNO")
    if certno.gender(value) != req.gend:
        raise InvalidRequest("gend differs from the identity number", code="INVALID_CERTNO")
    return value


def _checked_name(name: str) -> str:
    name = name.strip()
    try:
        encoded = name.encode("gbk")
    except UnicodeEncodeError:
        raise InvalidRequest("psn_name must be writable in GBK", code="INVALID_NAME") from None
    if not name or len(encoded) > NAME_BYTES:
        raise InvalidRequest(f"psn_name must be 1-{NAME_BYTES} GBK bytes", code="INVALID_NAME")
    return name


class PersonRegistry:
    def __init__(self, pool: Pool, protector: DataProtector, audit: AuditLog) -> None:
        self._pool, self._protector, self._audit = pool, protector, audit

    async def create(self, caller: Caller, req: CreatePerson) -> Person:
        value = _checked_certno(req)
        name = _checked_name(req.psn_name)
        async with transaction(self._pool) as conn:
            seq = await conn.fetchval("SELECT nextval('psn_no_seq')")
            psn_no = f"{req.admdvs}{seq:010d}"
            try:
                await conn.execute(
                    """
                    INSERT INTO persons (psn_no, certno_hash, certno_enc, certno_masked,
                                         psn_name, gend, birth_year, admdvs, psn_type)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                    """,
                    psn_no,
                    self._protector.lookup_hash(value),
                    self._protector.encrypt(value.encode(), psn_no.encode()),
                    certno.mask(value),
                    name,
                    req.gend,
                    req.brdy.year,
                    req.admdvs,
                    req.psn_type,
                )
            except asyncpg.UniqueViolationError:
                raise Conflict(
                    "a person with this identity number exists", code="PERSON_EXISTS"
                ) from None
            await conn.execute("INSERT INTO psn_accounts (psn_no) VALUES ($1)", psn_no)
            await self._audit.record(
                conn,
                caller,
                action="person.created",
                object_type="person",
                object_id=psn_no,
                data={"certno": certno.mask(value), "psn_type": req.psn_type},
            )
            return await self._load(conn, psn_no)

    async def get(self, psn_no: str) -> Person:
        async with self._pool.acquire() as conn:
            return await self._load(conn, psn_no)

    async def enrol(self, caller: Caller, psn_no: str, req: EnrolInsurance) -> Person:
        if req.enddate is not None and req.enddate < req.begndate:
            raise InvalidRequest("enddate is before begndate", code="INVALID_DATES")
        async with transaction(self._pool) as conn:
            psn_type = await conn.fetchval(
                "SELECT psn_type FROM persons WHERE psn_no = $1 FOR NO KEY UPDATE", psn_no
            )
            if psn_type is None:
                raise NotFound("no such person", code="PERSON_NOT_FOUND")
            # Which person types each scheme covers is the policy file's.
            if psn_type not in load_params(CURRENT_POLICY_VERSION).person_types[req.insutype]:
                raise BusinessRuleViolation(
                    f"a {psn_type} person cannot enrol in {req.insutype}",
                    code="PSN_TYPE_NOT_ALLOWED",
                )
            await conn.execute(
                """
                INSERT INTO insurances (psn_no, insutype, begndate, enddate) VALUES ($1, $2, $3, $4)
                ON CONFLICT (psn_no, insutype) DO UPDATE
                    SET begndate = EXCLUDED.begndate, enddate = EXCLUDED.enddate, updated_at = now()
                """,
                psn_no,
                req.insutype,
                req.begndate,
                req.enddate,
            )
            await self._audit.record(
                conn,
                caller,
                action="insurance.enrolled",
                object_type="person",
                object_id=psn_no,
                data={
                    "insutype": req.insutype,
                    "begndate": req.begndate.isoformat(),
                    "enddate": req.enddate.isoformat() if req.enddate else None,
                },
            )
            return await self._load(conn, psn_no)

    async def _load(self, conn: Connection, psn_no: str) -> Person:
        row = await conn.fetchrow(
            """
            SELECT p.*, a.balance FROM persons p JOIN psn_accounts a USING (psn_no)
            WHERE p.psn_no = $1
            """,
            psn_no,
        )
        if row is None:
            raise NotFound("no such person", code="PERSON_NOT_FOUND")
        insurances = await conn.fetch(
            "SELECT insutype, begndate, enddate FROM insurances"
            " WHERE psn_no = $1 ORDER BY insutype",
            psn_no,
        )
        return Person(
            psn_no=psn_no,
            certno=row["certno_masked"],
            psn_name=row["psn_name"],
            gend=row["gend"],
            birth_year=row["birth_year"],
            admdvs=row["admdvs"],
            psn_type=row["psn_type"],
            balc=row["balance"],
            insurances=[Insurance(**dict(r)) for r in insurances],
        )


class _Enrolled(msgspec.Struct, frozen=True):
    insutype: str
    begndate: dt.date
    enddate: dt.date | None


_enrolled = msgspec.json.Decoder(list[_Enrolled])


_SUMMARY = """
SELECT {status} AS status, p.psn_no, p.psn_name, p.certno_masked, p.gend, p.birth_year, p.admdvs,
       p.psn_type, a.balance,
       (SELECT coalesce(json_agg(json_build_object('insutype', i.insutype,
            'begndate', i.begndate, 'enddate', i.enddate) ORDER BY i.insutype), '[]')
        FROM insurances i WHERE i.psn_no = p.psn_no AND i.begndate <= $2
          AND (i.enddate IS NULL OR i.enddate >= $2)) AS enrolments
FROM persons p JOIN psn_accounts a USING (psn_no) {join}
WHERE {where} = $1
"""
_BY_CARD = _SUMMARY.format(status="c.status", join="JOIN cards c USING (psn_no)", where="c.card_no")
_BY_PERSON = _SUMMARY.format(status="NULL::text", join="", where="p.psn_no")


async def card_holder_summary(
    pool: Pool, card_no: str, on: dt.date
) -> tuple[str, PersonSummary] | None:
    """The card's status and its holder's 1101-shaped summary (identity masked, enrolments
    active on ``on``) in one query; None if there is no such card."""
    row = await pool.fetchrow(_BY_CARD, card_no, on)
    return None if row is None else (row["status"], _summary(row))


async def person_summary(pool: Pool, psn_no: str, on: dt.date) -> PersonSummary:
    """The person's 1101-shaped summary, as ``card_holder_summary`` gives it."""
    row = await pool.fetchrow(_BY_PERSON, psn_no, on)
    if row is None:
        raise NotFound("no such person", code="PERSON_NOT_FOUND")
    return _summary(row)


def _summary(row: asyncpg.Record) -> PersonSummary:
    account_insutypes = load_params(CURRENT_POLICY_VERSION).account_insutypes
    return PersonSummary(
        baseinfo=BaseInfo(
            psn_no=row["psn_no"],
            psn_name=row["psn_name"],
            certno=row["certno_masked"],
            gend=row["gend"],
            birth_year=row["birth_year"],
            admdvs=row["admdvs"],
        ),
        insuinfo=[
            InsuInfo(
                insutype=e.insutype,
                psn_type=row["psn_type"],
                # Only the schemes with a personal account show its balance.
                balc=row["balance"] if e.insutype in account_insutypes else 0,
                begndate=e.begndate,
                enddate=e.enddate,
            )
            for e in _enrolled.decode(row["enrolments"])
        ],
    )
