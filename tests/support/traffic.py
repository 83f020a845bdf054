"""Steady settlement traffic for fault tests, and the checks that nothing was lost or doubled.

Requests start on a fixed schedule (not waiting for earlier answers), each with its own
Idempotency-Key and its own card token (one PIN entry pays for one settlement), prepared
ahead of the schedule (``prepare``) round robin over the patients. Every outcome is kept:
an acknowledgement (200 with a setl_id), an error answer (status and code), or no answer
(connection error, timeout). After the fault, ``retry_unanswered`` resends what was not
acknowledged with the same keys, as a terminal would, and ``check`` proves the guarantees.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from tests.support.api import Patient, Service, lines, unique_code

FEE = lines(("A-AMOX", 1000, 1))


@dataclass
class Attempt:
    key: str
    patient: Patient
    body: dict[str, Any]
    started: float = 0.0
    elapsed: float = 0.0
    status: int | None = None  # None: no answer at all
    code: str | None = None
    setl_id: str | None = None
    first: str | None = None  # the first outcome, kept when a retry overwrites the rest

    def outcome(self) -> str:
        if self.setl_id:
            return "acknowledged"
        if self.status is None:
            return "no answer"
        return f"{self.status} {self.code}"


@dataclass
class Traffic:
    patients: list[Patient]
    attempts: list[Attempt] = field(default_factory=list)
    tokens: list[tuple[Patient, str]] = field(default_factory=list)  # prepared, not yet sent

    async def prepare(self, count: int) -> None:
        """Card tokens for ``count`` more settlements (a card authentication each)."""
        first = len(self.attempts) + len(self.tokens)
        for n in range(first, first + count):
            patient = self.patients[n % len(self.patients)]
            self.tokens.append((patient, await patient.fresh_token()))

    def _attempt(self, patient: Patient, token: str) -> Attempt:
        body = {
            "card_token": token,
            "insutype": "310",
            "med_type": "11",
            "mdtrt_id": unique_code("MD"),
            "feedetail": FEE,
        }
        return Attempt(unique_code("IK-"), patient, body)

    async def _send(self, attempt: Attempt, timeout: float = 10.0) -> None:
        attempt.started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                resp = await attempt.patient.terminal.request(
                    "POST", "/v1/settlements", attempt.body, {"Idempotency-Key": attempt.key}
                )
        except (aiohttp.ClientError, TimeoutError, OSError):
            attempt.status = None
        else:
            attempt.status = resp.status
            body = resp.body if isinstance(resp.body, dict) else {}
            attempt.setl_id = body.get("setl_id") if resp.status == 200 else None
            attempt.code = body.get("error", {}).get("code") if resp.status != 200 else None
        attempt.elapsed = time.monotonic() - attempt.started
        if attempt.first is None:
            attempt.first = attempt.outcome()

    async def run(self, rate: float, seconds: float) -> list[Attempt]:
        """Send at ``rate`` a second for ``seconds``; returns this run's attempts."""
        count = int(rate * seconds)
        await self.prepare(max(0, count - len(self.tokens)))
        planned, self.tokens = self.tokens[:count], self.tokens[count:]
        interval, start = 1.0 / rate, time.monotonic()
        tasks, batch = [], []
        for n, (patient, token) in enumerate(planned):
            await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
            attempt = self._attempt(patient, token)
            batch.append(attempt)
            tasks.append(asyncio.create_task(self._send(attempt)))
        await asyncio.gather(*tasks)
        self.attempts += batch
        return batch

    async def retry_unanswered(self, rounds: int = 5) -> None:
        """Resend every attempt that got no acknowledgement, with its own key."""
        for _ in range(rounds):
            pending = [
                a for a in self.attempts if a.setl_id is None and a.code != "CARD_TOKEN_INVALID"
            ]
            if not pending:
                return
            first = {id(a): a.setl_id for a in pending}
            await asyncio.gather(*[self._send(a) for a in pending])
            assert all(first[id(a)] is None for a in pending)
            await asyncio.sleep(0.5)

    def summary(self) -> dict[str, int]:
        """How the first answers went (before any retry)."""
        return dict(Counter(a.first or "not sent" for a in self.attempts))

    async def check(self, service: Service) -> dict[str, int]:
        """Every acknowledged settlement exists exactly once; a retry of an acknowledged
        key gives the same settlement; no key settled twice; the ledger proves."""
        acked = [a for a in self.attempts if a.setl_id]
        assert len({a.setl_id for a in acked}) == len(acked)
        conn = await asyncpg.connect(service.database_url)
        try:
            rows = await conn.fetch(
                "SELECT setl_id, idempotency_key FROM settlements WHERE idempotency_key = ANY($1)",
                [a.key for a in self.attempts],
            )
            negative = await conn.fetchval("SELECT count(*) FROM psn_accounts WHERE balance < 0")
        finally:
            await conn.close()
        by_key = Counter(r["idempotency_key"] for r in rows)
        assert max(by_key.values(), default=1) == 1, "a key settled twice"
        stored = {r["idempotency_key"]: r["setl_id"] for r in rows}
        assert all(stored.get(a.key) == a.setl_id for a in acked), (
            "an acknowledged settlement is lost"
        )
        sample = acked[:: max(1, len(acked) // 20)]
        for a in sample:
            before = a.setl_id
            await self._send(a)
            assert a.setl_id == before, "a retry settled again"
        proof = await service.admin_ok("GET", "/v1/ledger/proof")
        assert proof["ok"], proof
        assert negative == 0
        return {
            "requests": len(self.attempts),
            "acknowledged": len(acked),
            "lost": 0,
            "duplicated": 0,
            "stored": len(rows),
        }
