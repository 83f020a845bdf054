"""Work-injury cases. A case recorded here is approved: the decision was taken upstream."""

from __future__ import annotations

import asyncpg

from cardsvc.audit.services import AuditLog
from cardsvc.db import Pool, transaction
from cardsvc.errors import InvalidRequest, NotFound
from cardsvc.injuries.models import CreateInjuryCase, InjuryCase
from cardsvc.web.caller import Caller


class InjuryCases:
    def __init__(self, pool: Pool, audit: AuditLog) -> None:
        self._pool, self._audit = pool, audit

    async def create(self, caller: Caller, req: CreateInjuryCase) -> InjuryCase:
        if req.valid_to < req.valid_from or req.injury_date > req.valid_to:
            raise InvalidRequest(
                "need valid_from <= valid_to and injury_date <= valid_to", code="INVALID_DATES"
            )
        async with transaction(self._pool) as conn:
            seq = await conn.fetchval("SELECT nextval('injury_case_seq')")
            case_id = f"IC{seq:010d}"
            try:
                row = await conn.fetchrow(
                    """
                    INSERT INTO injury_cases
                        (case_id, psn_no, employer, injury_date, valid_from, valid_to)
                    VALUES ($1, $2, $3, $4, $5, $6)
                    RETURNING case_id, psn_no, employer, injury_date, valid_from, valid_to, status
                    """,
                    case_id,
                    req.psn_no,
                    req.employer,
                    req.injury_date,
                    req.valid_from,
                    req.valid_to,
                )
            except asyncpg.ForeignKeyViolationError:
                raise NotFound("no such person", code="PERSON_NOT_FOUND") from None
            await self._audit.record(
                conn,
                caller,
                action="injury_case.approved",
                object_type="injury_case",
                object_id=case_id,
                data={
                    "psn_no": req.psn_no,
                    "valid_from": req.valid_from.isoformat(),
                    "valid_to": req.valid_to.isoformat(),
                },
            )
        return InjuryCase(**dict(row))
