"""Visits (``mdtrt_id``) and their uploaded fee lines: the store the gateway's visit and
settlement transactions share.

A visit belongs to one facility, one person, one insutype and med_type; it is keyed by
(``fixmedins_code``, ``mdtrt_id``). Its fee lines are keyed by (``fixmedins_code``,
``mdtrt_id``, ``feedetl_sn``) and are, in their ``status``::

    active     uploaded; unsettled while ``setl_id`` is None, else settled by that settlement
    cancelled  cancelled (2205/2302, 2202, 2601) before any settlement took it
    refunded   cancelled by a refund line (2301, negative ``cnt``, ``init_feedetl_sn``)
    refund     the refund line itself (never settled)

A settlement takes the unsettled lines as read with their versions
(``unsettled_lines_versioned``); the settlement pipeline's batch write marks them with its
``setl_id`` in the settlement's own statement, only if none changed since (and none is held
by another transaction), and a reversal unmarks them (``release``). A transaction that
cancels or refunds lines holds them first (``lock_lines``), so that it and a settlement
never both take a line.

Every row records the message (``msgid``) that created it, so that a rerun of that message
finds what it did, and 2601 undoes it (``undo_message``).

The records (``Visit``, ``VisitLine``, ``NewLine``) are defined with the other visit
structs in ``visit_models`` (so that pure code can use them) and exported from here.

Amounts are exact integers: ``total`` in fen, ``price_e4`` in 10^-4 fen, ``count_e4`` in
10^-4 units (``cardsvc.national.units`` converts from and to the interface's decimals).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg
import msgspec

from cardsvc.audit.services import NewEntry, append_cte
from cardsvc.clock import business_date
from cardsvc.db import Connection
from cardsvc.errors import Conflict, NotFound
from cardsvc.national.visit_models import LineStatus as LineStatus
from cardsvc.national.visit_models import NewLine as NewLine
from cardsvc.national.visit_models import Visit as Visit
from cardsvc.national.visit_models import VisitKind as VisitKind
from cardsvc.national.visit_models import VisitLine as VisitLine
from cardsvc.national.visit_models import VisitStatus as VisitStatus
from cardsvc.settlement.policy import LineSplit
from cardsvc.settlement.store import LineVersion

# Every unsettled line of the visit, whatever its charge batch (2205 ``chrg_bchno``).
ALL_BATCHES = "0000"


_result_decoder = msgspec.json.Decoder(LineSplit)
_encoder = msgspec.json.Encoder()

_VISIT_COLUMNS = ", ".join(Visit.__struct_fields__)
_LINE_COLUMNS = (
    "feedetl_sn, chrg_bchno, code, price_e4, count_e4, total, setl_id, status,"
    " init_feedetl_sn, created_msgid, result"
)


def visit_not_found(mdtrt_id: str) -> NotFound:
    return NotFound(f"no visit {mdtrt_id} at this facility", code="VISIT_NOT_FOUND")


def _visit(row: asyncpg.Record) -> Visit:
    return Visit(**{name: row[name] for name in Visit.__struct_fields__})


def _line(row: asyncpg.Record) -> VisitLine:
    values = {name: row[name] for name in VisitLine.__struct_fields__ if name != "result"}
    return VisitLine(**values, result=_result_decoder.decode(row["result"]))


# --- reading ---------------------------------------------------------------------------


async def load_visit(
    conn: Connection, fixmedins_code: str, mdtrt_id: str, *, lock: bool = False
) -> Visit:
    """The facility's visit ``mdtrt_id`` (``VISIT_NOT_FOUND``: none at this facility);
    ``lock``: held ``FOR UPDATE`` until the caller's transaction ends."""
    row = await conn.fetchrow(
        f"SELECT {_VISIT_COLUMNS} FROM gateway_visits"  # noqa: S608 - constant columns
        f" WHERE fixmedins_code = $1 AND mdtrt_id = $2{' FOR UPDATE' if lock else ''}",
        fixmedins_code,
        mdtrt_id,
    )
    if row is None:
        raise visit_not_found(mdtrt_id)
    return _visit(row)


async def find_visit(conn: Connection, fixmedins_code: str, mdtrt_id: str) -> Visit | None:
    """The visit locked ``FOR UPDATE``, or None."""
    try:
        return await load_visit(conn, fixmedins_code, mdtrt_id, lock=True)
    except NotFound:
        return None


async def visit_created_by(conn: Connection, fixmedins_code: str, msgid: str) -> Visit | None:
    row = await conn.fetchrow(
        f"SELECT {_VISIT_COLUMNS} FROM gateway_visits"  # noqa: S608 - constant columns
        " WHERE fixmedins_code = $1 AND created_msgid = $2",
        fixmedins_code,
        msgid,
    )
    return None if row is None else _visit(row)


async def unsettled_lines(
    conn: Connection, fixmedins_code: str, mdtrt_id: str, chrg_bchno: str | None
) -> list[VisitLine]:
    """The visit's active lines no settlement has taken, of charge batch ``chrg_bchno``
    (None or ``"0000"``: of every batch), in upload order; cancelled, refunded and refund
    lines are never among them."""
    batch = None if chrg_bchno in (None, ALL_BATCHES) else chrg_bchno
    rows = await conn.fetch(
        f"SELECT {_LINE_COLUMNS} FROM gateway_visit_lines"  # noqa: S608 - constant columns
        " WHERE fixmedins_code = $1 AND mdtrt_id = $2 AND status = 'active'"
        " AND setl_id IS NULL AND ($3::text IS NULL OR chrg_bchno = $3)"
        " ORDER BY created_at, feedetl_sn",
        fixmedins_code,
        mdtrt_id,
        batch,
    )
    return [_line(row) for row in rows]


_LINE_FIELDS = [name for name in VisitLine.__struct_fields__ if name != "result"]
_VISIT_AND_LINES_COLUMNS = (
    ", ".join(f"v.{name}" for name in Visit.__struct_fields__)
    + ", "
    + ", ".join(f"l.{name} AS l_{name}" for name in [*_LINE_FIELDS, "result"])
    + ", l.ctid::text AS l_tid, l.xmin::text AS l_version"
)
_UNSETTLED_JOIN = (
    " LEFT JOIN gateway_visit_lines l"
    " ON l.fixmedins_code = v.fixmedins_code AND l.mdtrt_id = v.mdtrt_id"
    " AND l.status = 'active' AND l.setl_id IS NULL AND ($3::text IS NULL OR l.chrg_bchno = $3)"
)
_VISIT_AND_LINES = (
    f"SELECT {_VISIT_AND_LINES_COLUMNS} FROM gateway_visits v{_UNSETTLED_JOIN}"  # noqa: S608
    " WHERE v.fixmedins_code = $1 AND v.mdtrt_id = $2"
    " ORDER BY l.created_at, l.feedetl_sn"
)
# A settlement message's opening read (``gateway_message_open``: the 2601 check under the
# message's lock, the person's type, the message's own settlement) with the visit and its
# unsettled lines, in one round trip. The visit and lines are read with the statement's
# snapshot, from before the lock: what settles them is the batch write's guard, not this.
_OPENING_AND_LINES = (
    f"SELECT o.undone_by, o.psn_type, o.setl_id, {_VISIT_AND_LINES_COLUMNS}"  # noqa: S608
    " FROM gateway_message_open($1, $4, $5, $6) o LEFT JOIN gateway_visits v"
    f" ON v.fixmedins_code = $1 AND v.mdtrt_id = $2{_UNSETTLED_JOIN}"
    " ORDER BY l.created_at, l.feedetl_sn"
)


class Opening(NamedTuple):
    """A settlement message's opening read (``open_settlement``)."""

    undone_by: str | None  # the 2601 that undid the message, if one did
    psn_type: str | None
    setl_id: str | None  # the message's own settlement, if it made one
    visit: Visit | None
    lines: list[VisitLine]
    versions: tuple[LineVersion, ...]


def _visit_and_lines(
    rows: Sequence[asyncpg.Record],
) -> tuple[Visit | None, list[VisitLine], tuple[LineVersion, ...]]:
    if not rows or rows[0]["fixmedins_code"] is None:
        return None, [], ()
    taken = [row for row in rows if row["l_feedetl_sn"] is not None]
    lines = [
        VisitLine(
            **{name: row[f"l_{name}"] for name in _LINE_FIELDS},
            result=_result_decoder.decode(row["l_result"]),
        )
        for row in taken
    ]
    versions = tuple(LineVersion(row["l_tid"], row["l_version"]) for row in taken)
    return _visit(rows[0]), lines, versions


async def visit_with_unsettled_lines(
    conn: Connection, fixmedins_code: str, mdtrt_id: str, chrg_bchno: str | None
) -> tuple[Visit, list[VisitLine], tuple[LineVersion, ...]]:
    """``load_visit`` (not locked) and ``unsettled_lines`` in one read, with each line's
    version, for the settlement that takes them (its batch write marks them only if none
    changed since: ``store.settlement_statement``)."""
    batch = None if chrg_bchno in (None, ALL_BATCHES) else chrg_bchno
    visit, lines, versions = _visit_and_lines(
        await conn.fetch(_VISIT_AND_LINES, fixmedins_code, mdtrt_id, batch)
    )
    if visit is None:
        raise visit_not_found(mdtrt_id)
    return visit, lines, versions


async def open_settlement(
    conn: Connection,
    fixmedins_code: str,
    mdtrt_id: str,
    chrg_bchno: str | None,
    *,
    msgid: str,
    key: str,
    psn_no: str,
) -> Opening:
    """A settlement message's opening read and ``visit_with_unsettled_lines``, one round
    trip (the visit None: no such visit at this facility)."""
    batch = None if chrg_bchno in (None, ALL_BATCHES) else chrg_bchno
    rows = await conn.fetch(_OPENING_AND_LINES, fixmedins_code, mdtrt_id, batch, msgid, key, psn_no)
    first = rows[0]
    return Opening(first["undone_by"], first["psn_type"], first["setl_id"], *_visit_and_lines(rows))


async def lines_by_sn(
    conn: Connection, fixmedins_code: str, mdtrt_id: str, feedetl_sns: Sequence[str]
) -> dict[str, VisitLine]:
    rows = await conn.fetch(
        f"SELECT {_LINE_COLUMNS} FROM gateway_visit_lines"  # noqa: S608 - constant columns
        " WHERE fixmedins_code = $1 AND mdtrt_id = $2 AND feedetl_sn = ANY($3::text[])",
        fixmedins_code,
        mdtrt_id,
        list(feedetl_sns),
    )
    return {row["feedetl_sn"]: _line(row) for row in rows}


async def has_settled_lines(conn: Connection, fixmedins_code: str, mdtrt_id: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM gateway_visit_lines WHERE fixmedins_code = $1"
            " AND mdtrt_id = $2 AND setl_id IS NOT NULL)",
            fixmedins_code,
            mdtrt_id,
        )
    )


# --- settlement (settle's interface) ---------------------------------------------------


async def release(conn: Connection, setl_id: str) -> int:
    """A reversed settlement's lines are unsettled again; returns how many."""
    result = await conn.execute(
        "UPDATE gateway_visit_lines SET setl_id = NULL WHERE setl_id = $1", setl_id
    )
    return int(result.split()[-1])


_LOCK_LINES = (
    "SELECT 1 FROM gateway_visit_lines WHERE fixmedins_code = $1 AND mdtrt_id = $2"
    " AND setl_id IS NULL FOR UPDATE"
)
_RENEW_LINES = (
    "UPDATE gateway_visit_lines SET status = status WHERE fixmedins_code = $1"
    " AND mdtrt_id = $2 AND setl_id IS NULL"
)


async def lock_lines(conn: Connection, visit: Visit, *, renew: bool = False) -> None:
    """Holds the visit's unsettled lines ``FOR UPDATE`` until the caller's transaction ends:
    first thing in a transaction that changes them (2202, 2205/2302, a 2301 refund, 2601).
    A settlement being written waits to commit before this returns (so what is read after
    sees its lines settled), and one written meanwhile finds them held and is refused, to
    be sent again (its batch write takes lines ``SKIP LOCKED``). ``renew``: each line gets
    a new row version too (2203 changing what a settlement of them applies), so that a
    settlement that read them before is refused at its write."""
    await conn.execute(_RENEW_LINES if renew else _LOCK_LINES, visit.fixmedins_code, visit.mdtrt_id)


# --- writing (the visit transactions) --------------------------------------------------


async def mint_mdtrt_id(conn: Connection, now: dt.datetime) -> str:
    """A new mdtrt_id: ``M``, the date (yyyyMMdd, Asia/Shanghai), 12 digits (21 chars)."""
    seq = await conn.fetchval("SELECT nextval('gateway_mdtrt_seq')")
    return f"M{business_date(now):%Y%m%d}{seq:012d}"


async def open_visit(conn: Connection, visit: Visit, info: dict[str, Any]) -> Visit:
    """Stores ``visit``; if its message already created one (a rerun), or the facility
    already has its ``mdtrt_id``, that visit is returned instead (compare its
    ``created_msgid``)."""
    stored, _ = await open_new_visit(conn, visit, info)
    return stored


_N_INSERT = len(Visit.__struct_fields__) + 1
_INSERT_VISIT = (
    f"INSERT INTO gateway_visits ({_VISIT_COLUMNS}, info)"  # noqa: S608 - constant columns
    f" VALUES ({', '.join(f'${i}' for i in range(1, _N_INSERT + 1))})"
    f" ON CONFLICT DO NOTHING RETURNING {_VISIT_COLUMNS}"
)
# The same, with the audit entry of the opening, written only if the visit was stored.
_INSERT_VISIT_AUDITED = (
    f"WITH opened AS ({_INSERT_VISIT}), {append_cte(_N_INSERT + 1, after='opened')}"  # noqa: S608
    " SELECT * FROM opened"
)


async def open_new_visit(
    conn: Connection, visit: Visit, info: dict[str, Any], audit: NewEntry | None = None
) -> tuple[Visit, bool]:
    """``open_visit``, and whether ``visit`` was stored now (False: another was found).
    Either way the visit returned is held ``FOR UPDATE``. ``audit``: the entry that records
    the opening, appended in the same statement (only if the visit was stored now)."""
    row = await conn.fetchrow(
        _INSERT_VISIT_AUDITED if audit else _INSERT_VISIT,
        *(getattr(visit, name) for name in Visit.__struct_fields__),
        _encoder.encode(info).decode(),
        *(audit.params() if audit else ()),
    )
    if row is not None:
        return _visit(row), True
    row = await conn.fetchrow(
        f"SELECT {_VISIT_COLUMNS} FROM gateway_visits"  # noqa: S608 - constant columns
        " WHERE fixmedins_code = $1 AND (created_msgid = $2 OR mdtrt_id = $3)"
        " ORDER BY created_msgid = $2 DESC LIMIT 1 FOR UPDATE",
        visit.fixmedins_code,
        visit.created_msgid,
        visit.mdtrt_id,
    )
    return _visit(row), False


async def update_visit(
    conn: Connection,
    visit: Visit,
    *,
    info: dict[str, Any] | None = None,
    **changes: Any,
) -> Visit:
    """Sets ``changes`` (Visit fields) and merges ``info`` into the stored details."""
    unknown = set(changes) - set(Visit.__struct_fields__)
    if unknown:
        raise ValueError(f"not visit fields: {sorted(unknown)}")
    sets = [f"{name} = ${i}" for i, name in enumerate(changes, 3)]
    sets.append(f"info = info || ${len(changes) + 3}::jsonb")
    row = await conn.fetchrow(
        f"UPDATE gateway_visits SET {', '.join(sets)}, updated_at = now()"  # noqa: S608
        f" WHERE fixmedins_code = $1 AND mdtrt_id = $2 RETURNING {_VISIT_COLUMNS}",
        visit.fixmedins_code,
        visit.mdtrt_id,
        *changes.values(),
        _encoder.encode(info or {}).decode(),
    )
    return _visit(row)


async def store_lines(
    conn: Connection,
    visit: Visit,
    lines: Sequence[NewLine],
    msgid: str,
    audit: NewEntry | None = None,
) -> None:
    """Inserts ``lines`` (created by ``msgid``); a line of the same ``feedetl_sn`` that was
    cancelled is replaced, any other is left as it is (the caller decided beforehand,
    under the visit's lock, that none of these conflicts). ``audit``: the entry that
    records it, appended in the same statement."""
    if not lines:
        return
    audited = f"{append_cte(13)}, " if audit else ""
    await conn.execute(
        f"""
        WITH {audited}stored AS (
        INSERT INTO gateway_visit_lines AS l
            (fixmedins_code, mdtrt_id, feedetl_sn, chrg_bchno, code, price_e4, count_e4,
             total, init_feedetl_sn, status, result, details, created_msgid)
        SELECT $1, $2, u.sn, u.bch, u.code, u.price, u.cnt, u.total, u.init,
               CASE WHEN u.init IS NULL THEN 'active' ELSE 'refund' END,
               u.result::jsonb, u.details::jsonb, $3
        FROM unnest($4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[],
                    $9::bigint[], $10::text[], $11::text[], $12::text[])
             AS u(sn, bch, code, price, cnt, total, init, result, details)
        ON CONFLICT (fixmedins_code, mdtrt_id, feedetl_sn) DO UPDATE SET
            chrg_bchno = EXCLUDED.chrg_bchno, code = EXCLUDED.code,
            price_e4 = EXCLUDED.price_e4, count_e4 = EXCLUDED.count_e4,
            total = EXCLUDED.total, init_feedetl_sn = EXCLUDED.init_feedetl_sn,
            status = EXCLUDED.status, result = EXCLUDED.result, details = EXCLUDED.details,
            created_msgid = EXCLUDED.created_msgid, cancelled_msgid = NULL,
            created_at = now()
        WHERE l.status = 'cancelled'
        RETURNING 1)
        SELECT 1
        """,  # noqa: S608 - constant text only
        visit.fixmedins_code,
        visit.mdtrt_id,
        msgid,
        [line.feedetl_sn for line in lines],
        [line.chrg_bchno for line in lines],
        [line.code for line in lines],
        [line.price_e4 for line in lines],
        [line.count_e4 for line in lines],
        [line.total for line in lines],
        [line.init_feedetl_sn for line in lines],
        [_encoder.encode(line.result).decode() for line in lines],
        [_encoder.encode(line.details).decode() for line in lines],
        *(audit.params() if audit else ()),
    )


async def mark_refunded(
    conn: Connection, visit: Visit, feedetl_sns: Sequence[str], msgid: str
) -> None:
    """The lines named by refund lines (active, unsettled) are refunded."""
    await conn.execute(
        "UPDATE gateway_visit_lines SET status = 'refunded', cancelled_msgid = $4"
        " WHERE fixmedins_code = $1 AND mdtrt_id = $2 AND feedetl_sn = ANY($3::text[])"
        " AND status = 'active' AND setl_id IS NULL",
        visit.fixmedins_code,
        visit.mdtrt_id,
        list(feedetl_sns),
        msgid,
    )


async def cancel_lines(
    conn: Connection,
    visit: Visit,
    msgid: str,
    *,
    feedetl_sn: str | None = None,
    chrg_bchno: str | None = None,
    created_msgid: str | None = None,
) -> int:
    """Cancels the visit's unsettled lines: the one ``feedetl_sn``, or those of charge
    batch ``chrg_bchno`` (``"0000"``: all), or those message ``created_msgid`` uploaded
    (None for all three: every one). A cancelled refund line gives back the line it
    refunded, unless that line is cancelled too. Returns how many lines were cancelled."""
    everything = (
        feedetl_sn is None
        and created_msgid is None
        and (chrg_bchno is None or chrg_bchno == ALL_BATCHES)
    )
    statuses = ["active", "refund", "refunded"] if everything else ["active", "refund"]
    batch = None if chrg_bchno == ALL_BATCHES else chrg_bchno
    rows = await conn.fetch(
        "UPDATE gateway_visit_lines SET status = 'cancelled', cancelled_msgid = $3"
        " WHERE fixmedins_code = $1 AND mdtrt_id = $2 AND setl_id IS NULL"
        " AND status = ANY($4::text[]) AND ($5::text IS NULL OR feedetl_sn = $5)"
        " AND ($6::text IS NULL OR chrg_bchno = $6)"
        " AND ($7::text IS NULL OR created_msgid = $7)"
        " RETURNING init_feedetl_sn",
        visit.fixmedins_code,
        visit.mdtrt_id,
        msgid,
        statuses,
        feedetl_sn,
        batch,
        created_msgid,
    )
    restored = [row["init_feedetl_sn"] for row in rows if row["init_feedetl_sn"] is not None]
    if restored:
        await conn.execute(
            "UPDATE gateway_visit_lines SET status = 'active', cancelled_msgid = NULL"
            " WHERE fixmedins_code = $1 AND mdtrt_id = $2 AND feedetl_sn = ANY($3::text[])"
            " AND status = 'refunded'",
            visit.fixmedins_code,
            visit.mdtrt_id,
            restored,
        )
    return len(rows)


async def close_visit(
    conn: Connection, visit: Visit, status: VisitStatus, msgid: str, **changes: Any
) -> Visit:
    return await update_visit(conn, visit, status=status, closed_msgid=msgid, **changes)


def visit_has_settlement(mdtrt_id: str) -> Conflict:
    return Conflict(
        f"visit {mdtrt_id} has a settlement: cancel the settlement first (2208/2305)",
        code="VISIT_HAS_SETTLEMENT",
    )


async def undo_message(conn: Connection, fixmedins_code: str, omsgid: str, msgid: str) -> bool:
    """2601 for a registration or fee-line message ``omsgid``: its unsettled lines are
    cancelled, and the visit it opened is cancelled with its other unsettled lines. A
    registration (2201/2401) whose visit has a settlement is refused
    (``VISIT_HAS_SETTLEMENT``); a pharmacy visit opened by a 2204 whose lines were
    settled stays. Returns whether ``omsgid`` had done anything here."""
    opened = await visit_created_by(conn, fixmedins_code, omsgid)
    line_visits = await conn.fetch(
        "SELECT DISTINCT mdtrt_id FROM gateway_visit_lines"
        " WHERE fixmedins_code = $1 AND created_msgid = $2",
        fixmedins_code,
        omsgid,
    )
    for row in line_visits:
        visit = await load_visit(conn, fixmedins_code, row["mdtrt_id"], lock=True)
        await lock_lines(conn, visit)
        await cancel_lines(conn, visit, msgid, created_msgid=omsgid)
    if opened is not None:
        visit = await load_visit(conn, fixmedins_code, opened.mdtrt_id, lock=True)
        by_lines = any(row["mdtrt_id"] == visit.mdtrt_id for row in line_visits)
        if visit.status != "cancelled":
            await lock_lines(conn, visit)
            if await has_settled_lines(conn, fixmedins_code, visit.mdtrt_id):
                if by_lines:
                    return True
                raise visit_has_settlement(visit.mdtrt_id)
            await cancel_lines(conn, visit, msgid)
            await close_visit(conn, visit, "cancelled", msgid)
    return opened is not None or bool(line_visits)
