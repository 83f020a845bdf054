"""Reconciliation through the national interface: 3201 (totals), 9101 (upload a file), 3202
(detail, against an uploaded file) and 9102 (download a file).

3201 is the native reconciliation's statement (one query, one rule: every non-reversed
settlement of the facility and insutype whose business date is in the period), over a
longer period. Files belong to one facility, are made by one message each (a message run
twice finds the file it made) and are kept until their ``dld_endtime``; the file formats
and the comparison are ``cardsvc.national.stmtfiles``. Reading a file and building a result
run on the worker's files thread, one 9101/3202 of a facility at a time
(``cardsvc.national.filejobs``).

Refusals: ``INVALID_DATES`` (a period backwards or too long), ``FILE_NOT_FOUND`` (no such
file of this facility), ``FILE_EXPIRED``, ``FILE_QUOTA_EXCEEDED``, ``NOT_OWN_FACILITY``
(an input naming another facility), ``FILE_JOB_BUSY`` (retryable: another file message of
the facility is being worked on), and ``stmtfiles``' file refusals.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any

import msgspec

from cardsvc.audit.services import AuditLog
from cardsvc.clock import BUSINESS_TZ
from cardsvc.db import Connection, Pool, transaction
from cardsvc.errors import Conflict, Forbidden, InvalidRequest, NotFound
from cardsvc.national import stmtfiles
from cardsvc.national.filejobs import FileJobs
from cardsvc.national.units import fen, whole, yuan
from cardsvc.reconciliation.models import StatementRequest, StatementResult, Totals
from cardsvc.reconciliation.services import Reconciliation
from cardsvc.types import Insutype

MAX_STATEMENT_DAYS = 366  # 3201: up to a year
MAX_DETAIL_DAYS = 31  # 3202: every settlement of the period is compared one by one
FILE_TTL = dt.timedelta(days=7)
# Live files (uploads and results) a facility may keep at once, in bytes.
FACILITY_QUOTA_BYTES = 200 * 1024 * 1024

Short = Annotated[str, msgspec.Meta(max_length=30)]
FileQuryNo = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Byte = Annotated[int, msgspec.Meta(ge=0, le=255)]


class StatementIn(msgspec.Struct, kw_only=True):
    """3201 ``data``: the facility's totals of a period."""

    insutype: Insutype
    stmt_begndate: dt.date
    stmt_enddate: dt.date
    medfee_sumamt: Decimal
    fund_pay_sumamt: Decimal
    acct_pay: Decimal
    fixmedins_setl_cnt: Decimal  # a count: a number or a string holding a whole number
    clr_type: Short = ""
    setl_optins: Short = ""


class UploadIn(msgspec.Struct, kw_only=True):
    """9101 ``fsUploadIn``: the file as base64 text or as an array of byte values."""

    in_: bytes | list[Byte] = msgspec.field(name="in")
    filename: str
    fixmedins_code: str


class DetailIn(msgspec.Struct, kw_only=True):
    """3202 ``data``: the uploaded file to compare, the period and the facility's totals."""

    file_qury_no: FileQuryNo
    stmt_begndate: dt.date
    stmt_enddate: dt.date
    medfee_sumamt: Decimal
    fund_pay_sumamt: Decimal
    cash_payamt: Decimal
    fixmedins_setl_cnt: Decimal
    setl_optins: Short = ""


class DownloadIn(msgspec.Struct, kw_only=True):
    """9102 ``fsDownloadIn``."""

    file_qury_no: FileQuryNo
    filename: str
    fixmedins_code: str


@dataclass(frozen=True, slots=True)
class Message:
    """Who sends which message: what a file and an audit entry record (``operator``: the
    HIS operator and the message, ``cardsvc.national.operator``)."""

    fixmedins_code: str
    msgid: str
    actor: str
    opter: str
    opter_name: str
    now: dt.datetime
    operator: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a detail reconciliation found, as 3202 answers it beside its file."""

    stmt_rslt: str
    stmt_rslt_dscr: str


@dataclass(frozen=True, slots=True)
class StoredFile:
    file_qury_no: str
    filename: str
    dld_endtime: dt.datetime
    outcome: Outcome | None = None  # a result's

    def fileinfo(self) -> dict[str, str]:
        info = {
            "file_qury_no": self.file_qury_no,
            "filename": self.filename,
            "dld_endtime": f"{self.dld_endtime.astimezone(BUSINESS_TZ):%Y-%m-%d %H:%M:%S}",
        }
        if self.outcome is not None:
            info |= {
                "stmt_rslt": self.outcome.stmt_rslt,
                "stmt_rslt_dscr": self.outcome.stmt_rslt_dscr,
            }
        return info


def _period(begin: dt.date, end: dt.date, max_days: int) -> None:
    if not 0 <= (end - begin).days < max_days:
        raise InvalidRequest(
            f"the period must run forwards and span at most {max_days} days",
            code="INVALID_DATES",
        )


def _own(fixmedins_code: str, named: str) -> None:
    if named != fixmedins_code:
        raise Forbidden(
            "fixmedins_code of the input is not the facility of the message",
            code="NOT_OWN_FACILITY",
        )


def _totals_text(totals: Totals) -> str:
    return (
        f"{totals.fixmedins_setl_cnt} settlements, medfee_sumamt {yuan(totals.medfee_sumamt)},"
        f" fund_pay_sumamt {yuan(totals.fund_pay_sumamt)}, acct_pay {yuan(totals.acct_pay)}"
    )


def statement_description(result: StatementResult) -> str:
    """3201's ``stmt_rslt_dscr``: cardsvc's figures in yuan, and what differs."""
    ours, theirs = result.service, result.facility
    text = f"cardsvc: {_totals_text(ours)}"
    differing = [
        name
        for name in ("fixmedins_setl_cnt", "medfee_sumamt", "fund_pay_sumamt", "acct_pay")
        if getattr(ours, name) != getattr(theirs, name)
    ]
    if differing:
        text += f"; differs: {', '.join(differing)}"
    if result.out_of_limits:
        named = ", ".join(result.out_of_limits[:5])
        more = ", …" if len(result.out_of_limits) > 5 else ""
        text += f"; settlements above the amount limits are in no total: {named}{more}"
    return text if result.stmt_rslt == "1" else text + "; balanced"


_SETTLED_COLUMNS = """setl_id, mdtrt_id, psn_no, idempotency_key, setl_date, medfee_sumamt,
    fund_pay_sumamt, acct_pay, psn_cash_pay, status"""
_IN_PERIOD = f"""SELECT {_SETTLED_COLUMNS} FROM settlements
    WHERE fixmedins_code = $1 AND setl_date BETWEEN $2 AND $3"""  # noqa: S608 - constants
_LISTED_ELSEWHERE = f"""SELECT {_SETTLED_COLUMNS} FROM settlements
    WHERE fixmedins_code = $1 AND setl_id = ANY($2::text[])
    AND NOT setl_date BETWEEN $3 AND $4"""  # noqa: S608 - constants
_FILE_COLUMNS = "file_qury_no, filename, dld_endtime, stmt_rslt, stmt_rslt_dscr"


def _settled(row: Any) -> stmtfiles.Settled:
    return stmtfiles.Settled(
        setl_id=row["setl_id"],
        mdtrt_id=row["mdtrt_id"],
        psn_no=row["psn_no"],
        msgid=stmtfiles.gateway_msgid(row["idempotency_key"]),
        setl_date=row["setl_date"],
        medfee_sumamt=row["medfee_sumamt"],
        fund_pay_sumamt=row["fund_pay_sumamt"],
        acct_pay=row["acct_pay"],
        psn_cash_pay=row["psn_cash_pay"],
        reversed=row["status"] == "reversed",
    )


def _read_upload(sent: bytes | list[int]) -> tuple[bytes, int]:
    """(files thread) The uploaded zip and the number of settlements it lists, checked."""
    content = sent if isinstance(sent, bytes) else bytes(sent)
    return content, len(stmtfiles.read_upload(content))


def _ours_and_others(
    found: list[Any], rows: list[stmtfiles.FileRow]
) -> tuple[list[stmtfiles.Settled], list[str]]:
    """(files thread) cardsvc's settlements of the period, and the setl_ids the file lists
    that are not among them."""
    in_period = [_settled(r) for r in found]
    known = {s.setl_id for s in in_period}
    return in_period, [r.setl_id for r in rows if r.setl_id not in known]


@dataclass(frozen=True, slots=True)
class _Result:
    content: bytes  # the result zip
    outcome: Outcome
    lines: int
    disagreeing: int


def _result(
    rows: list[stmtfiles.FileRow],
    in_period: list[stmtfiles.Settled],
    found_elsewhere: list[Any],
    declared: stmtfiles.HeaderTotals,
) -> _Result:
    """(files thread) The comparison, the header's totals checked, the result zip."""
    elsewhere = {s.setl_id: s for s in map(_settled, found_elsewhere)}
    lines = stmtfiles.compare(rows, in_period, elsewhere)
    differences = stmtfiles.header_differences(declared, stmtfiles.service_totals(in_period))
    disagreeing = sum(line.stmt_rslt != "0" for line in lines)
    dscr = f"{len(lines)} settlements compared, {disagreeing} disagree"
    if differences:
        dscr += "; header totals differ: " + "; ".join(differences)
    outcome = Outcome("1" if differences or disagreeing else "0", dscr)
    return _Result(stmtfiles.result_zip(lines), outcome, len(lines), disagreeing)


def _new_file_qury_no() -> str:
    return "F" + secrets.token_hex(15)


def _stored(row: Any) -> StoredFile:
    outcome = None
    if row["stmt_rslt"] is not None:
        outcome = Outcome(row["stmt_rslt"], row["stmt_rslt_dscr"])
    return StoredFile(row["file_qury_no"], row["filename"], row["dld_endtime"], outcome)


class NationalReconciliation:
    def __init__(
        self, pool: Pool, audit: AuditLog, reconciliation: Reconciliation, jobs: FileJobs
    ) -> None:
        self._pool, self._audit, self._reconciliation = pool, audit, reconciliation
        self._jobs = jobs

    # -- 3201 ------------------------------------------------------------------------------

    async def statement(self, msg: Message, inp: StatementIn) -> dict[str, str]:
        result = await self._reconciliation.statement(
            msg.fixmedins_code,
            StatementRequest(
                insutype=inp.insutype,
                stmt_begndate=inp.stmt_begndate,
                stmt_enddate=inp.stmt_enddate,
                fixmedins_setl_cnt=whole(inp.fixmedins_setl_cnt, "fixmedins_setl_cnt"),
                medfee_sumamt=fen(inp.medfee_sumamt, "medfee_sumamt"),
                fund_pay_sumamt=fen(inp.fund_pay_sumamt, "fund_pay_sumamt"),
                acct_pay=fen(inp.acct_pay, "acct_pay"),
            ),
            max_days=MAX_STATEMENT_DAYS,
        )
        async with transaction(self._pool) as conn:
            await self._record(
                conn,
                msg,
                "national.statement",
                ("facility", msg.fixmedins_code),
                {
                    "clr_type": inp.clr_type,
                    "setl_optins": inp.setl_optins,
                    "insutype": inp.insutype,
                    "stmt_begndate": inp.stmt_begndate.isoformat(),
                    "stmt_enddate": inp.stmt_enddate.isoformat(),
                    "stmt_rslt": result.stmt_rslt,
                },
            )
        return {
            "setl_optins": inp.setl_optins,
            "stmt_rslt": result.stmt_rslt,
            "stmt_rslt_dscr": statement_description(result),
        }

    # -- 9101 ------------------------------------------------------------------------------

    async def upload(self, msg: Message, inp: UploadIn) -> StoredFile:
        _own(msg.fixmedins_code, inp.fixmedins_code)
        filename = stmtfiles.check_filename(inp.filename)
        async with self._jobs.job(msg.fixmedins_code) as job:
            content, rows = await job.run(_read_upload, inp.in_)
            return await self._store(
                msg, _new_file_qury_no(), "upload", filename, content, {"rows": rows}
            )

    # -- 3202 ------------------------------------------------------------------------------

    async def detail(self, msg: Message, inp: DetailIn) -> StoredFile:
        made = await self._made(self._pool, msg)
        if made is not None:  # the message ran before
            return made
        _period(inp.stmt_begndate, inp.stmt_enddate, MAX_DETAIL_DAYS)
        declared = stmtfiles.HeaderTotals(
            medfee_sumamt=fen(inp.medfee_sumamt, "medfee_sumamt"),
            fund_pay_sumamt=fen(inp.fund_pay_sumamt, "fund_pay_sumamt"),
            cash_payamt=fen(inp.cash_payamt, "cash_payamt"),
            fixmedins_setl_cnt=whole(inp.fixmedins_setl_cnt, "fixmedins_setl_cnt"),
        )
        async with self._jobs.job(msg.fixmedins_code) as job:
            kind, _, content = await self._load(msg.fixmedins_code, inp.file_qury_no, msg.now)
            if kind != "upload":
                raise InvalidRequest(
                    "file_qury_no names a result file, not an uploaded one", code="FILE_INVALID"
                )
            rows = await job.run(stmtfiles.read_upload, content)
            period = (inp.stmt_begndate, inp.stmt_enddate)
            found = await self._pool.fetch(_IN_PERIOD, msg.fixmedins_code, *period)
            in_period, others = await job.run(_ours_and_others, found, rows)
            elsewhere = await self._pool.fetch(
                _LISTED_ELSEWHERE, msg.fixmedins_code, others, *period
            )
            result = await job.run(_result, rows, in_period, elsewhere, declared)
            file_qury_no = _new_file_qury_no()
            return await self._store(
                msg,
                file_qury_no,
                "result",
                f"result_{inp.stmt_begndate:%Y%m%d}_{inp.stmt_enddate:%Y%m%d}_{file_qury_no}.zip",
                result.content,
                {
                    "upload": inp.file_qury_no,
                    "lines": result.lines,
                    "disagreeing": result.disagreeing,
                },
                result.outcome,
            )

    # -- 9102 ------------------------------------------------------------------------------

    async def download(self, msg: Message, inp: DownloadIn) -> bytes:
        _own(msg.fixmedins_code, inp.fixmedins_code)
        _, filename, content = await self._load(msg.fixmedins_code, inp.file_qury_no, msg.now)
        if inp.filename != filename:
            raise NotFound(
                "filename is not the name of that file (as 9101 or 3202 answered it)",
                code="FILE_NOT_FOUND",
            )
        await self._downloaded(msg, inp.file_qury_no, filename, content, again=False)
        return content

    async def download_again(self, msg: Message, file_qury_no: str) -> bytes:
        """The file a download message answered with, for the same message sent again:
        refused as a new download would be once the file has expired or is gone."""
        _, filename, content = await self._load(msg.fixmedins_code, file_qury_no, msg.now)
        await self._downloaded(msg, file_qury_no, filename, content, again=True)
        return content

    async def _downloaded(
        self, msg: Message, file_qury_no: str, filename: str, content: bytes, *, again: bool
    ) -> None:
        """Every time a file leaves cardsvc, an audit entry says who took it."""
        async with transaction(self._pool) as conn:
            await self._record(
                conn,
                msg,
                "national.file_downloaded",
                ("national_file", file_qury_no),
                {"filename": filename, "size": len(content), "again": again},
            )

    # -- storage ---------------------------------------------------------------------------

    async def _load(
        self, fixmedins_code: str, file_qury_no: str, now: dt.datetime
    ) -> tuple[str, str, bytes]:
        row = await self._pool.fetchrow(
            """SELECT kind, filename, content, dld_endtime FROM national_files
            WHERE file_qury_no = $1 AND fixmedins_code = $2""",
            file_qury_no,
            fixmedins_code,
        )
        if row is None:
            raise NotFound("no file of this facility has that file_qury_no", code="FILE_NOT_FOUND")
        if row["dld_endtime"] <= now:
            raise NotFound("the file has expired (dld_endtime has passed)", code="FILE_EXPIRED")
        return row["kind"], row["filename"], row["content"]

    async def _store(
        self,
        msg: Message,
        file_qury_no: str,
        kind: str,
        filename: str,
        content: bytes,
        data: dict[str, Any],
        outcome: Outcome | None = None,
    ) -> StoredFile:
        """Stores the file ``msg`` made, or finds it if ``msg`` made one already. The
        facility's stores run one at a time (its quota is checked exactly)."""
        async with transaction(self._pool) as conn:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                "national_files:" + msg.fixmedins_code,
            )
            made = await self._made(conn, msg)
            if made is not None:
                return made
            used = await conn.fetchval(
                """WITH expired AS (
                    DELETE FROM national_files WHERE fixmedins_code = $1 AND dld_endtime <= $2
                ) SELECT coalesce(sum(size), 0) FROM national_files
                WHERE fixmedins_code = $1 AND dld_endtime > $2""",
                msg.fixmedins_code,
                msg.now,
            )
            if used + len(content) > FACILITY_QUOTA_BYTES:
                raise Conflict(
                    f"the facility's files take over {FACILITY_QUOTA_BYTES // (1024 * 1024)} MB;"
                    " older ones expire after their dld_endtime",
                    code="FILE_QUOTA_EXCEEDED",
                )
            row = await conn.fetchrow(
                f"""INSERT INTO national_files (file_qury_no, fixmedins_code, msgid, kind,
                    filename, content, size, created_at, dld_endtime, stmt_rslt, stmt_rslt_dscr)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                RETURNING {_FILE_COLUMNS}""",  # noqa: S608 - constants
                file_qury_no,
                msg.fixmedins_code,
                msg.msgid,
                kind,
                filename,
                content,
                len(content),
                msg.now,
                msg.now + FILE_TTL,
                outcome.stmt_rslt if outcome else None,
                outcome.stmt_rslt_dscr if outcome else None,
            )
            stored = _stored(row)
            await self._record(
                conn,
                msg,
                f"national.file_{kind}",
                ("national_file", file_qury_no),
                {"filename": filename, "size": len(content), **data},
            )
            return stored

    async def _made(self, conn: Pool | Connection, msg: Message) -> StoredFile | None:
        """The file ``msg`` made, if it ran before."""
        row = await conn.fetchrow(
            f"SELECT {_FILE_COLUMNS} FROM national_files"  # noqa: S608 - constants
            " WHERE fixmedins_code = $1 AND msgid = $2",
            msg.fixmedins_code,
            msg.msgid,
        )
        return None if row is None else _stored(row)

    async def _record(
        self,
        conn: Connection,
        msg: Message,
        action: str,
        what: tuple[str, str],
        data: dict[str, Any],
    ) -> None:
        """An audit entry of ``action`` on ``what`` (object type and id) by ``msg``."""
        await self._audit.append(
            conn,
            actor=msg.actor,
            action=action,
            object_type=what[0],
            object_id=what[1],
            data={
                **data,
                "msgid": msg.msgid,
                "opter": msg.opter,
                "opter_name": msg.opter_name,
                **msg.operator,
            },
        )
