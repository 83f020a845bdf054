"""Running one page of a list (``cardsvc.paging``) against PostgreSQL: the page's rows and
the total, read in one snapshot so that they agree."""

from __future__ import annotations

import asyncpg

from cardsvc.db import Pool
from cardsvc.paging import MAX_TOTAL, PageQuery, Where


def page_sql(*, columns: str, source: str, where: Where, page: PageQuery) -> tuple[str, str]:
    """The page's statement (``where``'s parameters, then LIMIT and OFFSET) and the count's
    (``where``'s parameters). ``columns`` and ``source`` are the caller's SQL constants;
    ORDER BY comes from the endpoint's allow-list. The count stops at ``MAX_TOTAL``, so it
    stays bounded whatever the table's size."""
    limit, offset = where.next, where.next + 1
    rows_sql = (
        f"SELECT {columns} FROM {source} WHERE {where.sql}"  # noqa: S608 - constants only
        f" ORDER BY {page.order_by()} LIMIT ${limit} OFFSET ${offset}"
    )
    count_sql = (
        f"SELECT count(*) FROM (SELECT 1 FROM {source} WHERE {where.sql}"  # noqa: S608
        f" LIMIT {MAX_TOTAL}) AS matching"
    )
    return rows_sql, count_sql


async def fetch_page(
    pool: Pool, *, columns: str, source: str, where: Where, page: PageQuery
) -> tuple[list[asyncpg.Record], int]:
    rows_sql, count_sql = page_sql(columns=columns, source=source, where=where, page=page)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(rows_sql, *where.args, page.page_size, page.offset)
        total = await conn.fetchval(count_sql, *where.args)
    return list(rows), int(total)
