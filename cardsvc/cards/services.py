"""Card issuance and the card life cycle (counter terminals).

Issuance asks hsm_stub for the personalisation blob (card keys sealed under the
counter's K_term) before the database transaction, so no lock is held across HSM IO; the
service itself never sees a card key.
"""

from __future__ import annotations

import secrets

import asyncpg

from cardsvc import clock
from cardsvc.audit.services import AuditLog
from cardsvc.cards.lifecycle import CardAction, CardStatus, next_status
from cardsvc.cards.models import Card, CardReplaced, IssuedCard
from cardsvc.cards.records import CardHolder, build_records, expiry_for
from cardsvc.db import Connection, Pool, transaction
from cardsvc.errors import Conflict, NotFound
from cardsvc.hsm.client import HsmClient
from cardsvc.persons import certno
from cardsvc.privacy import DataProtector
from cardsvc.web.caller import Caller

_CARD_COLUMNS = "card_no, card_sn, psn_no, admdvs, status, issue_date, expiry_date, replaces"


def new_card_sn(admdvs: str) -> str:
    """32 hex digits: the region first, then 13 random bytes."""
    return admdvs + secrets.token_hex(13)


def _card(row: asyncpg.Record) -> Card:
    return Card(**dict(row))


class CardIssuer:
    def __init__(
        self, pool: Pool, hsm: HsmClient, protector: DataProtector, audit: AuditLog
    ) -> None:
        self._pool, self._hsm, self._protector, self._audit = pool, hsm, protector, audit

    async def issue(self, caller: Caller, psn_no: str) -> IssuedCard:
        admdvs, counter_key = await self._prepare(caller, psn_no, first_card=True)
        card_sn = new_card_sn(admdvs)
        blob = await self._hsm.build_personalization_blob(admdvs, card_sn, counter_key)
        async with transaction(self._pool) as conn:
            return await self._insert(conn, caller, psn_no, card_sn, blob, replaces=None)

    async def get(self, card_no: str) -> Card:
        row = await self._pool.fetchrow(
            f"SELECT {_CARD_COLUMNS} FROM cards WHERE card_no = $1",
            card_no,
        )
        if row is None:
            raise NotFound("no such card", code="CARD_NOT_FOUND")
        return _card(row)

    async def transition(
        self, caller: Caller, card_no: str, action: CardAction, *, psn_no: str | None = None
    ) -> Card:
        """``psn_no``: the card must be that person's (else ``CARD_NOT_FOUND``)."""
        async with transaction(self._pool) as conn:
            return await self._move(conn, caller, card_no, action, psn_no=psn_no)

    async def replace(self, caller: Caller, card_no: str) -> CardReplaced:
        old = await self.get(card_no)
        next_status(CardStatus(old.status), CardAction.REPLACE)  # refuse before HSM work
        admdvs, counter_key = await self._prepare(caller, old.psn_no, first_card=False)
        card_sn = new_card_sn(admdvs)
        blob = await self._hsm.build_personalization_blob(admdvs, card_sn, counter_key)
        async with transaction(self._pool) as conn:
            replaced = await self._move(conn, caller, card_no, CardAction.REPLACE)
            issued = await self._insert(
                conn, caller, replaced.psn_no, card_sn, blob, replaces=card_no
            )
        return CardReplaced(replaced=replaced, card=issued)

    async def _prepare(self, caller: Caller, psn_no: str, *, first_card: bool) -> tuple[str, bytes]:
        """The person's region and the counter's key; refuses early what would fail later."""
        row = await self._pool.fetchrow(
            """
            SELECT p.admdvs, t.key_under_lmk,
                   EXISTS (SELECT 1 FROM cards c WHERE c.psn_no = p.psn_no
                           AND c.status IN ('issued', 'active', 'loss_reported')) AS has_live
            FROM persons p, terminals t WHERE p.psn_no = $1 AND t.terminal_id = $2
            """,
            psn_no,
            caller.terminal_id,
        )
        if row is None:
            raise NotFound("no such person", code="PERSON_NOT_FOUND")
        if first_card and row["has_live"]:
            raise Conflict("the person already has a live card", code="CARD_EXISTS")
        return row["admdvs"], row["key_under_lmk"]

    async def _insert(
        self,
        conn: Connection,
        caller: Caller,
        psn_no: str,
        card_sn: str,
        blob: str,
        *,
        replaces: str | None,
    ) -> IssuedCard:
        person = await conn.fetchrow(
            "SELECT certno_enc, psn_name, gend, admdvs FROM persons WHERE psn_no = $1",
            psn_no,
        )
        issue_date = clock.business_date()
        expiry_date = expiry_for(issue_date)
        seq = await conn.fetchval("SELECT nextval('card_no_seq')")
        card_no = f"A{seq:08d}"
        try:
            await conn.execute(
                """
                INSERT INTO cards (card_no, card_sn, psn_no, admdvs, status, issue_date,
                                   expiry_date, replaces, issued_by)
                VALUES ($1, $2, $3, $4, 'issued', $5, $6, $7, $8)
                """,
                card_no,
                card_sn,
                psn_no,
                person["admdvs"],
                issue_date,
                expiry_date,
                replaces,
                caller.terminal_id,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict("the person already has a live card", code="CARD_EXISTS") from None
        await self._audit.append(
            conn,
            actor=caller.actor,
            action="card.issued",
            object_type="card",
            object_id=card_no,
            data={"psn_no": psn_no, "card_sn": card_sn, "replaces": replaces},
        )
        number = self._protector.decrypt(person["certno_enc"], psn_no.encode()).decode()
        holder = CardHolder(
            certno=number,
            psn_name=person["psn_name"],
            gend=person["gend"],
            brdy=certno.birth_date(number),  # not stored: it would unmask the number
        )
        return IssuedCard(
            card_no=card_no,
            card_sn=card_sn,
            psn_no=psn_no,
            admdvs=person["admdvs"],
            status=CardStatus.ISSUED,
            issue_date=issue_date,
            expiry_date=expiry_date,
            replaces=replaces,
            records=build_records(
                card_sn=card_sn,
                card_no=card_no,
                admdvs=person["admdvs"],
                issue_date=issue_date,
                expiry_date=expiry_date,
                holder=holder,
            ),
            personalization_blob=blob,
        )

    async def _move(
        self,
        conn: Connection,
        caller: Caller,
        card_no: str,
        action: CardAction,
        *,
        psn_no: str | None = None,
    ) -> Card:
        row = await conn.fetchrow(
            f"SELECT {_CARD_COLUMNS} FROM cards WHERE card_no = $1 FOR UPDATE",
            card_no,
        )
        if row is None or (psn_no is not None and row["psn_no"] != psn_no):
            raise NotFound("no such card", code="CARD_NOT_FOUND")
        target = next_status(CardStatus(row["status"]), action)
        updated = await conn.fetchrow(
            f"UPDATE cards SET status = $2, updated_at = now() WHERE card_no = $1"
            f" RETURNING {_CARD_COLUMNS}",
            card_no,
            str(target),
        )
        await self._audit.record(
            conn,
            caller,
            action=f"card.{action}",
            object_type="card",
            object_id=card_no,
            data={"from": row["status"], "to": str(target)},
        )
        return _card(updated)
