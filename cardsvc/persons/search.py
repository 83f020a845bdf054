"""Finding persons, and one person's overview for the counter.

A search never lists an identity number: ``q`` of 18 characters is looked up by its keyed
hash (the column the duplicate check uses), and every answer shows the mask. A name is
searched by prefix as a range over ``persons_name_prefix`` (text_pattern_ops), so a
prefix costs an index range scan whatever the plan's parameters.

A card's status history is read from the audit chain: every issuance and transition
appends an entry (``card.<action>``, ``{"from", "to"}``) in the same transaction that
changes the card, and the chain is what the audit verification proves; a second table
would be a copy that could disagree with it. ``audit_log_object`` makes it one index scan.
"""

from __future__ import annotations

import msgspec

from cardsvc.db import Pool
from cardsvc.listing import fetch_page
from cardsvc.paging import Page, PageQuery, QueryInvalid, Sorts, Where
from cardsvc.persons import certno
from cardsvc.persons.models import (
    AccountBalance,
    CardStatusChange,
    CardWithHistory,
    CreditLine,
    PersonListItem,
    PersonOverview,
)
from cardsvc.persons.services import PersonRegistry
from cardsvc.privacy import DataProtector
from cardsvc.settlement.listing import SETTLEMENT_COLUMNS
from cardsvc.settlement.models import SettlementListItem

PERSON_SORTS = Sorts(
    fields={"psn_no": "psn_no", "psn_name": "psn_name", "created_at": "created_at"},
    default="psn_no",
    tiebreak="psn_no",
    # Only psn_no (the primary key) orders the whole table; the others sort a search's rows.
    unindexed=frozenset({"psn_name", "created_at"}),
)
_PERSON_COLUMNS = "psn_no, certno_masked AS certno, psn_name, gend, birth_year, admdvs, psn_type"
OVERVIEW_LATEST = 20
_change = msgspec.json.Decoder(dict[str, object])


def prefix_range(prefix: str) -> tuple[str, str]:
    """[low, high) holding exactly the strings that begin with ``prefix`` (code point order
    is UTF-8 byte order, which text_pattern_ops compares)."""
    last = ord(prefix[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:  # surrogates are no characters: skip past them
        last = 0xE000
    if last > 0x10FFFF:
        return prefix, prefix[:-1] + "\U0010ffff" * 2  # cannot happen for a GBK name
    return prefix, prefix[:-1] + chr(last)


def person_filter(q: str | None, protector: DataProtector) -> Where:
    where = Where()
    if q is None:
        return where
    if len(q) == 16 and q.isdigit():
        return where.add("psn_no = {}", q)
    if len(q) == 18 and q[:17].isdigit():
        try:
            number = certno.validate(q)
        except certno.InvalidCertno as exc:
            raise QueryInvalid("q", str(exc)) from None
        return where.add("certno_hash = {}", protector.lookup_hash(number))
    low, high = prefix_range(q)
    return where.add("psn_name ~>=~ {} AND psn_name ~<~ {}", low, high)


class PersonSearch:
    def __init__(self, pool: Pool, protector: DataProtector, registry: PersonRegistry) -> None:
        self._pool, self._protector, self._registry = pool, protector, registry

    async def search(self, q: str | None, page: PageQuery) -> Page[PersonListItem]:
        rows, total = await fetch_page(
            self._pool,
            columns=_PERSON_COLUMNS,
            source="persons",
            where=person_filter(q, self._protector),
            page=page,
        )
        return page.answer([PersonListItem(**dict(r)) for r in rows], total)

    async def overview(self, psn_no: str) -> PersonOverview:
        person = await self._registry.get(psn_no)  # 404 for nobody
        async with self._pool.acquire() as conn:
            credits = await conn.fetch(
                "SELECT ref, amount, created_at FROM account_credits WHERE psn_no = $1"
                " ORDER BY created_at DESC, ref LIMIT $2",
                psn_no,
                OVERVIEW_LATEST,
            )
            cards = await conn.fetch(
                "SELECT card_no, status, issue_date, expiry_date, replaces FROM cards"
                " WHERE psn_no = $1 ORDER BY created_at DESC",
                psn_no,
            )
            events = await conn.fetch(
                "SELECT object_id, action, actor, at, data FROM audit_log"
                " WHERE object_type = 'card' AND object_id = ANY($1::text[])"
                " AND action LIKE 'card.%' ORDER BY at, chain, seq",
                [c["card_no"] for c in cards],
            )
            settlements = await conn.fetch(
                f"SELECT {SETTLEMENT_COLUMNS} FROM settlements WHERE psn_no = $1"  # noqa: S608
                " ORDER BY setl_time DESC LIMIT $2",
                psn_no,
                OVERVIEW_LATEST,
            )
        history: dict[str, list[CardStatusChange]] = {c["card_no"]: [] for c in cards}
        for e in events:
            data = _change.decode(e["data"])
            issued = e["action"] == "card.issued"
            history[e["object_id"]].append(
                CardStatusChange(
                    action=e["action"],
                    from_status=None if issued else str(data.get("from")),
                    to_status="issued" if issued else str(data.get("to")),
                    actor=e["actor"],
                    at=e["at"],
                )
            )
        return PersonOverview(
            person=person,
            insurances=person.insurances,
            accounts=AccountBalance(balance=person.balc),
            credits=[CreditLine(**dict(r)) for r in credits],
            cards=[CardWithHistory(**dict(c), history=history[c["card_no"]]) for c in cards],
            settlements=[SettlementListItem(**dict(r)) for r in settlements],
        )
