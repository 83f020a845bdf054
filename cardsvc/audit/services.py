"""Appending to, anchoring and verifying the audit log.

``append`` runs inside the caller's transaction, so an entry exists exactly when the
state change it records was committed. Entries carry ids and masked values only.

``AuditAnchors`` has the chain heads MACed by the HSM (see ``anchors``), appends each anchor
to a file outside the database and to ``audit_anchors``, and verifies the log against every
anchor it can find in both (each one's MAC checked by the HSM first, so a row or line someone
forged counts as a bad anchor, never as evidence).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import asyncpg
import msgspec
import structlog

from cardsvc import clock
from cardsvc.audit.anchors import (
    Anchor,
    AnchoredHeads,
    AnchorUnreadable,
    ChainHead,
    first_anchor_mismatch,
    message,
    parse_line,
)
from cardsvc.audit.chain import (
    CHAINS,
    AuditEntry,
    ChainBreak,
    body_digest,
    canonical_data,
    chain_of,
    verify_chain,
)
from cardsvc.audit.export import append_line, iter_lines
from cardsvc.db import Connection, Pool, as_service_error, extend_bounds
from cardsvc.errors import CardsvcError, Conflict, ServiceUnavailable
from cardsvc.hsm.client import HsmClient
from cardsvc.ops.metrics import AUDIT_ANCHORS, AUDIT_LAST_ANCHOR_AGE
from cardsvc.web.caller import Caller

log = structlog.get_logger(__name__)

# Serialises anchoring across worker processes and hosts (any fixed number: "audi").
_ANCHOR_LOCK = 0x61756469
# How long an anchoring asked for by hand waits for one in progress elsewhere (which takes
# milliseconds: a MAC and a file append); past it, somebody is holding the lock.
_ANCHOR_LOCK_WAIT_MS = 2000
# Anchors whose MACs are checked concurrently, and read from a file or the table at a time.
_BATCH = 256


class NewEntry(msgspec.Struct, frozen=True):
    """An entry to append: its content, and where in the chains it goes."""

    chain: int
    digest: bytes
    at: dt.datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    data: str

    def params(self) -> tuple[Any, ...]:
        """The parameters of ``append_cte``, in its order."""
        return (
            self.chain,
            self.digest,
            self.at,
            self.actor,
            self.action,
            self.object_type,
            self.object_id,
            self.data,
        )


def new_entry(
    actor: str, action: str, object_type: str, object_id: str, data: dict[str, Any] | None
) -> NewEntry:
    chain, at, text = (
        chain_of(object_type, object_id),
        dt.datetime.now(dt.UTC),
        canonical_data(data or {}),
    )
    return NewEntry(
        chain=chain,
        digest=body_digest(chain, at, actor, action, object_type, object_id, text),
        at=at,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        data=text,
    )


def append_cte(first: int, *, after: str | None = None) -> str:
    """SQL of two CTEs (``audit_head``, ``audit_entry``) that append one entry, its eight
    parameters numbered from ``first`` in ``NewEntry.params`` order. Advancing the head locks
    it until commit, so one chain's entries are strictly ordered; callers take it last.
    With ``after`` (an earlier CTE's name) the entry is written only if that CTE returned
    a row: the change it records happened."""
    c, d, at, actor, action, otype, oid, data = (f"${first + i}" for i in range(8))
    guard = f" AND EXISTS (SELECT 1 FROM {after})" if after else ""  # noqa: S608 - a CTE name
    return f"""
    audit_head AS (
        UPDATE audit_chains
        SET seq = seq + 1, prev_head = head, head = sha256(head || int8send(seq + 1) || {d})
        WHERE chain = {c}{guard} RETURNING seq, prev_head, head
    ),
    audit_entry AS (
        INSERT INTO audit_log
            (chain, seq, at, actor, action, object_type, object_id, data, prev_hash, hash)
        SELECT {c}, seq, {at}, {actor}, {action}, {otype}, {oid}, {data}, prev_head, head
        FROM audit_head
    )"""  # noqa: S608 - placeholders only


class AnchorExportUnavailable(ServiceUnavailable):
    """The anchor export folder cannot be written or read (missing rights, full disk)."""

    default_code = "AUDIT_ANCHOR_EXPORT_UNAVAILABLE"


class AnchorBusy(Conflict):
    """The anchoring lock is held (by another anchoring, or by a database session that
    should not hold it)."""

    default_code = "AUDIT_ANCHOR_BUSY"


class BadAnchor(msgspec.Struct, frozen=True):
    """An anchor that is not evidence: unreadable, or its MAC is not the HSM's."""

    source: str  # "<file name>:<line>" or "database"
    at: dt.datetime | None
    reason: str


class ChangedSettlement(msgspec.Struct, frozen=True):
    """A settlement whose row no longer says what its audit entry recorded when it was
    written (or that is gone): ``fields`` names the columns that differ."""

    setl_id: str
    chain: int  # the audit entry that recorded it
    seq: int
    fields: list[str]


class VerifyResult(msgspec.Struct, frozen=True):
    ok: bool
    entries: int
    first_bad: ChainBreak | None
    anchors_checked: int = 0  # genuine anchors the chains were checked against
    last_anchor_at: dt.datetime | None = None
    bad_anchors: int = 0
    first_bad_anchor: BadAnchor | None = None
    settlements_checked: int = 0  # settlement rows compared with their audit entries
    first_changed_settlement: ChangedSettlement | None = None


# What every settlement's audit entry records (a pipeline batch's entry lists its
# settlements; one written before the pipeline is the settlement's own entry), compared
# with the settlement's row: a row changed or deleted behind the service's back is named.
_AUDITED_SETTLEMENT_FIELDS = ("psn_no", "fixmedins_code", "medfee_sumamt", "fund_pay_sumamt",
                              "acct_pay", "psn_cash_pay", "card_no")  # fmt: skip
# A field is compared where the entry recorded it (older entries recorded fewer).
_FIELD_CHECKS = ", ".join(
    [
        f"CASE WHEN a.doc ? '{f}' AND s.{f}::text IS DISTINCT FROM a.doc ->> '{f}' THEN '{f}' END"
        for f in _AUDITED_SETTLEMENT_FIELDS
    ]
    + [
        "CASE WHEN a.doc ? 'setldetail' AND s.setldetail IS DISTINCT FROM a.doc -> 'setldetail'"
        " THEN 'setldetail' END"
    ]
)
_CHANGED_SETTLEMENTS = f"""
WITH audited AS (
    SELECT l.chain, l.seq, x.doc ->> 'setl_id' AS setl_id, x.doc
    FROM audit_log l, jsonb_array_elements(l.data::jsonb -> 'settlements') AS x(doc)
    WHERE l.object_type = 'settlement_batch' AND l.action = 'settlement.settled'
    UNION ALL
    SELECT chain, seq, object_id, data::jsonb FROM audit_log
    WHERE object_type = 'settlement' AND action = 'settlement.settled'
),
compared AS (
    SELECT a.chain, a.seq, a.setl_id,
           CASE WHEN s.setl_id IS NULL THEN ARRAY['(row missing)'] ELSE array_remove(ARRAY[
               {_FIELD_CHECKS}
           ], NULL) END AS fields
    FROM audited a LEFT JOIN settlements s ON s.setl_id = a.setl_id
)
SELECT (SELECT count(*) FROM compared) AS checked,
       (SELECT row_to_json(c) FROM (
            SELECT setl_id, chain, seq, fields FROM compared
            WHERE cardinality(fields) > 0 ORDER BY chain, seq, setl_id LIMIT 1) c) AS first
"""  # noqa: S608 - constant column names
_changed = msgspec.json.Decoder(ChangedSettlement)


class AnchorWritten(msgspec.Struct, frozen=True):
    at: dt.datetime
    entries: int  # entries the anchor covers, all chains
    file: str  # the export file's name, in CARDSVC_AUDIT_ANCHOR_DIR


class AuditLog:
    def __init__(self, pool: Pool, *, timeout: float | None = None) -> None:
        """``timeout`` bounds each statement of the verification (None: the pool's bound):
        comparing every settlement with its audit entry reads them all."""
        self._pool, self._timeout = pool, timeout

    async def append(
        self,
        conn: Connection,
        *,
        actor: str,
        action: str,
        object_type: str,
        object_id: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        entry = new_entry(actor, action, object_type, object_id, data)
        await conn.execute(f"WITH {append_cte(1)} SELECT 1", *entry.params())

    async def record(
        self,
        conn: Connection,
        caller: Caller,
        *,
        action: str,
        object_type: str,
        object_id: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        """``append`` for what ``caller`` did: an operator is named inside the chained entry
        (``Caller.audited``), any other caller by its actor alone."""
        await self.append(
            conn,
            actor=caller.actor,
            action=action,
            object_type=object_type,
            object_id=object_id,
            data=caller.audited(data),
        )

    async def verify(self, anchored: AnchoredHeads | None = None) -> VerifyResult:
        """Walk every chain in one snapshot, and check it against ``anchored`` heads (from
        genuine anchors, read before this snapshot so that it holds everything they saw)."""
        anchored = anchored or AnchoredHeads()
        total = 0
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            if self._timeout is not None:
                await extend_bounds(conn, self._timeout)
            heads = {
                r["chain"]: (r["seq"], r["head"])
                for r in await conn.fetch("SELECT chain, seq, head FROM audit_chains")
            }
            for chain in range(CHAINS):
                rows = [
                    (
                        AuditEntry(
                            chain=r["chain"],
                            seq=r["seq"],
                            at=r["at"],
                            actor=r["actor"],
                            action=r["action"],
                            object_type=r["object_type"],
                            object_id=r["object_id"],
                            data=r["data"],
                        ),
                        bytes(r["prev_hash"]),
                        bytes(r["hash"]),
                    )
                    async for r in conn.cursor(
                        "SELECT * FROM audit_log WHERE chain = $1 ORDER BY seq", chain
                    )
                ]
                head_seq, head_hash = heads.get(chain, (0, b""))
                count, broken = verify_chain(chain, rows, head_seq, bytes(head_hash))
                total += count
                broken = _earliest(broken, _anchor_break(chain, rows, broken, anchored))
                if broken is not None:
                    return VerifyResult(False, total, broken)
            settlements = await conn.fetchrow(_CHANGED_SETTLEMENTS)
        changed = _changed.decode(settlements["first"]) if settlements["first"] else None
        return VerifyResult(
            changed is None,
            total,
            None,
            settlements_checked=settlements["checked"],
            first_changed_settlement=changed,
        )


def _anchor_break(
    chain: int,
    rows: Sequence[tuple[AuditEntry, bytes, bytes]],
    broken: ChainBreak | None,
    anchored: AnchoredHeads,
) -> ChainBreak | None:
    """The first anchored head missing from the chain's consistent prefix (before ``broken``)."""
    heads = anchored.of_chain(chain)
    valid = len(rows) if broken is None else broken.seq - 1
    if broken is not None:
        heads = [head for head in heads if head.seq < broken.seq]
    wanted = {head.seq for head in heads}
    hashes = {seq: rows[seq - 1][2] for seq in wanted if 0 < seq <= valid}
    return first_anchor_mismatch(chain, valid, hashes, heads)


def _earliest(internal: ChainBreak | None, anchored: ChainBreak | None) -> ChainBreak | None:
    if internal is None or (anchored is not None and anchored.seq < internal.seq):
        return anchored
    return internal


class AuditAnchors:
    """Anchoring the audit chains in the HSM and outside the database, and verifying them."""

    def __init__(
        self,
        pool: Pool,
        hsm: HsmClient,
        audit: AuditLog,
        directory: Path,
        *,
        interval: float = 60.0,
    ) -> None:
        self._pool, self._hsm, self._audit = pool, hsm, audit
        self._directory, self._interval = directory, interval
        self._started = clock.now()
        self._last_genuine: dt.datetime | None = None  # newest anchor known to be genuine

    async def anchor(self, caller: Caller | None = None) -> AnchorWritten:
        """Anchor now, after any anchoring in progress elsewhere; ``AnchorBusy`` (409) if
        the lock is still held after ``_ANCHOR_LOCK_WAIT_MS``. Anchoring asked for by
        ``caller`` is audited naming it, in an entry of its own after the anchor (inside
        the anchor's transaction it would hold a chain's lock across the HSM call and the
        fsync); the next anchor covers that entry."""
        written = await self._write(only_if_due=False)
        assert isinstance(written, AnchorWritten)
        if caller is not None:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._audit.record(
                    conn,
                    caller,
                    action="audit.anchored",
                    object_type="audit_anchor",
                    object_id=written.at.isoformat(),
                    data={"entries": written.entries, "file": written.file},
                )
        return written

    async def _write(self, *, only_if_due: bool) -> AnchorWritten | Literal["busy", "fresh"]:
        """MAC every chain head now, export the anchor, store it. One anchorer at a time:
        ``only_if_due`` gives up if another holds the lock ("busy") or a genuine anchor is
        younger than half an interval ("fresh"); otherwise it waits a moment for the
        other, then refuses (``AnchorBusy``)."""
        async with self._pool.acquire() as conn, conn.transaction():
            if only_if_due:
                due = await self._due(conn)
                if due != "due":
                    return due
            else:
                await conn.execute(f"SET LOCAL lock_timeout = {_ANCHOR_LOCK_WAIT_MS}")
                try:
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _ANCHOR_LOCK)
                except asyncpg.LockNotAvailableError:
                    raise AnchorBusy(
                        "another anchoring holds the audit anchor lock: try again in a"
                        " moment; if this persists, a database session is holding it"
                        " (pg_locks, advisory lock)"
                    ) from None
            rows = await conn.fetch("SELECT chain, seq, head FROM audit_chains ORDER BY chain")
            heads = tuple(ChainHead(r["chain"], r["seq"], bytes(r["head"])) for r in rows)
            at = clock.now()
            anchor = Anchor(at, heads, await self._hsm.audit_anchor_mac(message(at, heads)))
            line = anchor.line()
            # Outside the database first: an anchor the table lost is still evidence.
            try:
                file = await asyncio.to_thread(append_line, self._directory, at, line)
            except OSError as exc:
                raise AnchorExportUnavailable(
                    f"the audit anchor could not be written to its export folder"
                    f" ({type(exc).__name__})"
                ) from None
            await conn.execute("INSERT INTO audit_anchors (at, line) VALUES ($1, $2)", at, line)
        self._seen(at)
        log.info("audit.anchored", at=at.isoformat(), entries=anchor.entries(), file=file.name)
        return AnchorWritten(at, anchor.entries(), file.name)

    async def _due(self, conn: Connection) -> Literal["due", "busy", "fresh"]:
        """Whether no genuine anchor is younger than half the interval ("fresh" if one
        is), or another holds the lock ("busy"). The newest row's own (MACed) time counts,
        and only if the HSM confirms it: a row someone wrote into the table must not be
        able to silence anchoring."""
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _ANCHOR_LOCK):
            return "busy"
        last = await self._newest(conn)
        if last is None:
            return "due"
        if clock.now() - last.at >= dt.timedelta(seconds=self._interval / 2):
            return "due"
        if not await self._genuine(last):
            log.warning("audit.anchor_row_forged", at=last.at.isoformat())
            return "due"
        return "fresh"

    async def _newest(self, conn: Pool | Connection) -> Anchor | None:
        """The newest anchor row, parsed (its MAC not checked); None if none, or if it
        cannot be read (which is logged)."""
        line: str | None = await conn.fetchval(
            "SELECT line FROM audit_anchors WHERE at <= now() ORDER BY at DESC LIMIT 1"
        )
        if line is None:
            return None
        try:
            return parse_line(line)[0]
        except AnchorUnreadable:
            log.warning("audit.anchor_row_unreadable")
            return None

    async def _genuine(self, anchor: Anchor) -> bool:
        """Whether the HSM confirms ``anchor``'s MAC; a genuine one is remembered as seen."""
        if not await self._hsm.verify_audit_anchor(message(anchor.at, anchor.heads), anchor.mac):
            return False
        self._seen(anchor.at)
        return True

    def _seen(self, at: dt.datetime) -> None:
        """``at`` is the time of a genuine anchor (written here, or verified by the HSM)."""
        if self._last_genuine is None or at > self._last_genuine:
            self._last_genuine = at

    async def _look_again(self) -> None:
        """After a turn that wrote nothing and looked at nothing: the newest row, if the
        HSM confirms it (another worker may have anchored). Failures keep what was known."""
        try:
            last = await self._newest(self._pool)
            if last is not None:
                await self._genuine(last)
        except Exception as exc:  # the turn's own failure is what is reported
            log.info("audit.anchor_age_unknown", error=type(exc).__name__)

    def _report_age(self) -> None:
        """Set the age gauge; warn when no genuine anchor is younger than two intervals
        (counted from the start of this process while none has been seen)."""
        since = self._last_genuine or self._started
        age = max(0.0, (clock.now() - since).total_seconds())
        AUDIT_LAST_ANCHOR_AGE.set(age)
        if self._interval > 0 and age > 2 * self._interval:
            log.warning(
                "audit.anchor_stale",
                age_seconds=round(age),
                interval_seconds=self._interval,
                last_anchor=self._last_genuine.isoformat() if self._last_genuine else None,
            )

    async def anchor_when_due(self) -> bool:
        """One turn of the background task: anchor if due; a failure (HSM or database
        down, export folder not writable) or a lock held elsewhere is logged and counted,
        and retried next turn. Then the age of the newest genuine anchor is reported."""
        try:
            written = await self._write(only_if_due=True)
        except Exception as exc:
            mapped = exc if isinstance(exc, CardsvcError) else as_service_error(exc)
            if mapped is not None:
                outcome = mapped.code.lower()
                log.warning("audit.anchor_delayed", code=mapped.code, reason=mapped.message)
            else:
                outcome = "failed"
                log.exception("audit.anchor_failed")
            AUDIT_ANCHORS.labels(outcome).inc()
            await self._look_again()
            self._report_age()
            return False
        if written == "busy":
            # Another worker anchoring right now, or a session holding the lock: the age
            # gauge and its warning tell the two apart over a few turns.
            AUDIT_ANCHORS.labels("busy").inc()
            log.info("audit.anchor_busy")
            await self._look_again()
        elif isinstance(written, AnchorWritten):
            AUDIT_ANCHORS.labels("written").inc()
        self._report_age()
        return isinstance(written, AnchorWritten)

    async def run_periodically(self) -> None:
        """Anchor every ``interval`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            await self.anchor_when_due()

    async def verify(self, anchors: Path | None = None) -> VerifyResult:
        """Verify the chains against every genuine anchor in the export at ``anchors``
        (default: this service's folder) and in the table; name any bad anchor."""
        anchored, bad = AnchoredHeads(), _Checked()
        lines = iter_lines(anchors or self._directory)
        try:
            while batch := await asyncio.to_thread(_take, lines):
                await self._check(batch, anchored, bad)
        except OSError as exc:
            raise AnchorExportUnavailable(
                f"the exported audit anchors could not be read ({type(exc).__name__})"
            ) from None
        async for batch in self._table_lines():
            await self._check(batch, anchored, bad)
        result = await self._audit.verify(anchored)
        return msgspec.structs.replace(
            result,
            ok=result.ok and bad.count == 0,
            anchors_checked=anchored.anchors,
            last_anchor_at=anchored.last_at,
            bad_anchors=bad.count,
            first_bad_anchor=bad.first,
        )

    async def _table_lines(self) -> AsyncIterator[list[tuple[str, str]]]:
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            rows = conn.cursor("SELECT line FROM audit_anchors ORDER BY at")
            batch: list[tuple[str, str]] = []
            async for row in rows:
                batch.append(("database", row["line"]))
                if len(batch) == _BATCH:
                    yield batch
                    batch = []
            if batch:
                yield batch

    async def _check(
        self, batch: Iterable[tuple[str, str]], anchored: AnchoredHeads, bad: _Checked
    ) -> None:
        parsed: list[tuple[str, Anchor, bytes]] = []
        for source, text in batch:
            try:
                anchor, signed = parse_line(text)
            except AnchorUnreadable as exc:
                bad.add(BadAnchor(source, None, str(exc)))
                continue
            if bad.first_sight(signed, anchor.mac):  # the export's and the table's copy
                parsed.append((source, anchor, signed))
        verdicts = await asyncio.gather(
            *(self._hsm.verify_audit_anchor(signed, anchor.mac) for _, anchor, signed in parsed)
        )
        for (source, anchor, _), genuine in zip(parsed, verdicts, strict=True):
            if genuine:
                anchored.add(anchor)
            else:
                bad.add(BadAnchor(source, anchor.at, "MAC does not verify: not the HSM's anchor"))


class _Checked:
    """The bad anchors found so far, and which anchors were already seen."""

    def __init__(self) -> None:
        self.count = 0
        self.first: BadAnchor | None = None
        self._seen: set[bytes] = set()

    def first_sight(self, signed: bytes, mac: bytes) -> bool:
        digest = hashlib.sha256(signed + mac).digest()
        if digest in self._seen:
            return False
        self._seen.add(digest)
        return True

    def add(self, anchor: BadAnchor) -> None:
        self.count += 1
        self.first = self.first or anchor


def _take(lines: Iterator[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(itertools.islice(lines, _BATCH))
