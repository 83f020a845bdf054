"""Publishing the fund report to the public: a snapshot frozen at publication (a later
reversal or credit never changes what was published), kept in ``public_reports``."""

from __future__ import annotations

import secrets

import msgspec

from cardsvc import clock
from cardsvc.audit.services import AuditLog
from cardsvc.db import Pool, transaction
from cardsvc.errors import BusinessRuleViolation, Conflict, NotFound
from cardsvc.listing import fetch_page
from cardsvc.paging import Page, PageQuery, Sorts, Where
from cardsvc.reports.models import Figures, PublicReport, PublishedReport, PublishReport
from cardsvc.reports.snapshot import snapshot
from cardsvc.supervision.services import Supervision
from cardsvc.web.caller import Caller

REPORT_SORTS = Sorts(
    fields={"published_at": "published_at", "period_from": "period_from"},
    default="-published_at",
    tiebreak="report_id",
)
_LISTED = "report_id, title, period_from, period_to, published_at"
_figures = msgspec.json.Decoder(Figures)


class PublicReports:
    def __init__(self, pool: Pool, audit: AuditLog, supervision: Supervision) -> None:
        self._pool, self._audit, self._supervision = pool, audit, supervision

    async def publish(self, caller: Caller, req: PublishReport) -> PublicReport:
        if req.period_to >= clock.business_date():
            raise BusinessRuleViolation(
                "only a period that is over can be published (its figures are frozen)",
                code="PERIOD_NOT_OVER",
            )
        start, end = req.period_from, req.period_to
        figures = snapshot(
            await self._supervision.fund_report(start, end),
            await self._supervision.per_type(start, end),
        )
        report_id = "R" + secrets.token_hex(5).upper()
        async with transaction(self._pool) as conn:
            # Two reports whose periods overlap differ by the figures of the days only one
            # has (or by a settlement reversed between them): a withheld figure would be a
            # subtraction away. Publications wait for each other here, so none slips by.
            await conn.execute("LOCK TABLE public_reports IN SHARE ROW EXCLUSIVE MODE")
            overlapping = await conn.fetchval(
                "SELECT report_id FROM public_reports WHERE period_from <= $2"
                " AND period_to >= $1 ORDER BY period_from LIMIT 1",
                req.period_from,
                req.period_to,
            )
            if overlapping is not None:
                raise Conflict(
                    "the period overlaps a published report's: publish periods that do not",
                    code="PERIOD_OVERLAPS",
                    details={"report_id": overlapping},
                )
            published_at = await conn.fetchval(
                "INSERT INTO public_reports (report_id, title, period_from, period_to,"
                " snapshot, published_by) VALUES ($1, $2, $3, $4, $5, $6)"
                " RETURNING published_at",
                report_id,
                req.title,
                req.period_from,
                req.period_to,
                msgspec.json.encode(figures).decode(),
                caller.actor,
            )
            await self._audit.record(
                conn,
                caller,
                action="public_report.published",
                object_type="public_report",
                object_id=report_id,
                data={
                    "title": req.title,
                    "period_from": req.period_from.isoformat(),
                    "period_to": req.period_to.isoformat(),
                },
            )
        return PublicReport(
            report_id=report_id,
            title=req.title,
            period_from=req.period_from,
            period_to=req.period_to,
            published_at=published_at,
            figures=figures,
        )

    async def search(self, page: PageQuery) -> Page[PublishedReport]:
        rows, total = await fetch_page(
            self._pool, columns=_LISTED, source="public_reports", where=Where(), page=page
        )
        return page.answer([PublishedReport(**dict(r)) for r in rows], total)

    async def get(self, report_id: str) -> PublicReport:
        row = await self._pool.fetchrow(
            f"SELECT {_LISTED}, snapshot FROM public_reports WHERE report_id = $1",  # noqa: S608
            report_id,
        )
        if row is None:
            raise NotFound("no such published report", code="REPORT_NOT_FOUND")
        return PublicReport(
            **{k: row[k] for k in _LISTED.split(", ")},
            figures=_figures.decode(row["snapshot"]),
        )
