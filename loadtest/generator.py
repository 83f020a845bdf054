"""The load generator: one OS process with its own event loop (uvloop) and HTTP pool.

The parent starts one or more of these (``--generators``), gives each a share of the
terminals and cards, and then orders steps over a pipe::

    parent                               generator
    Plan  ──(process argument)──▶        sign in its terminals
          ◀── Ready(prep figures)
    Step(rate, duration) ──▶             the step's open-loop schedule; for ``settle`` a
                                         card token per planned settlement (challenge/verify:
                                         one PIN entry pays for one settlement), untimed
          ◀── Prepared(prep figures)
    Start(start) ──▶                     requests on the schedule, histograms
          ◀── Outcome(histograms, errors, acknowledged settlements, CPU)
    None ──▶                             exit

Latency is measured from each request's intended start (HDR histogram, microseconds), and
the send lag (how late the generator itself started a request) is kept apart, with the
process's CPU time, so a reader can tell when the generator was the limit.
"""

from __future__ import annotations

import asyncio
import collections
import random
import resource
import signal
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import msgspec
import uvloop
from hdrh.histogram import HdrHistogram

from cardcrypto import profile
from cardsvc.clock import business_date
from cardsvc.terminal_sdk.softcard import SoftCard
from loadtest import scenarios, schedule
from loadtest.city import Item
from loadtest.sessions import GeneratorCache, ResumableClient
from loadtest.state import Facility, Terminal, WorkCard
from loadtest.workset import PIN

LOWEST_US, HIGHEST_US, DIGITS = 1, 3_600_000_000, 3
PREP_CONCURRENCY = 64


def histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


class Plan(msgspec.Struct, kw_only=True):
    index: int
    base_url: str
    scenario: str
    seed: int
    run_tag: str
    terminals: list[Terminal]
    facilities: list[Facility]
    cards: list[WorkCard]
    items: list[Item]
    deliverable: list[str]  # psn_no of women who may still have a 52 delivery this year
    request_timeout: float
    max_in_flight: int
    connections: int
    cache: GeneratorCache  # sessions of earlier runs, checked before use
    session_ttl: float


class Ready(msgspec.Struct, kw_only=True):
    terminals_signed_in: int
    sessions_resumed: int
    prep_seconds: float
    cache: GeneratorCache


class Step(msgspec.Struct, kw_only=True):
    number: int
    rate: float  # this generator's share
    duration: float
    arrival: str
    max_requests: int


class Prepared(msgspec.Struct, kw_only=True):
    """A step's untimed preparation: card tokens made for its planned settlements."""

    tokens: int
    seconds: float
    errors: dict[str, int]


class Start(msgspec.Struct, kw_only=True):
    start_wall: float  # when the prepared step's schedule begins (unix seconds)


class Outcome(msgspec.Struct, kw_only=True):
    latency: bytes  # encoded HDR histogram, from intended start, microseconds
    per_op: dict[str, bytes]  # the same, per operation
    service: dict[str, bytes]  # per request kind, from actual send: the service's time
    send_lag: bytes
    scheduled: int
    started: int
    ok: int
    ok_by_op: dict[str, int]
    errors: dict[str, int]
    settlements: list[tuple[str, str, str]]  # setl_id, idempotency key, fixmedins_code
    reversals: list[str]
    last_end: float  # seconds after the step's start when the last operation ended
    # Per second of the step (by intended start): the slowest operation, milliseconds.
    # Periodic stalls (housekeeping, checkpoints) show here as regular peaks.
    timeline_max_ms: list[float]
    cpu_seconds: float
    wall_seconds: float


class _Failed(Exception):
    """One request of an operation failed; ``key`` is how errors are counted."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _Recorder:
    def __init__(self) -> None:
        self.latency = histogram()
        self.per_op: dict[str, HdrHistogram] = {}
        self.service: dict[str, HdrHistogram] = {}
        self.send_lag = histogram()
        self.ok = 0
        self.ok_by_op: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.settlements: list[tuple[str, str, str]] = []
        self.reversals: list[str] = []
        self.started = 0
        self.last_end = 0.0
        self.start = 0.0
        self.timeline: dict[int, float] = {}

    @staticmethod
    def _us(seconds: float) -> int:
        return min(HIGHEST_US, max(LOWEST_US, int(seconds * 1e6)))

    def done(self, op: str, intended: float, seconds: float) -> None:
        second = int(intended - self.start)
        self.timeline[second] = max(self.timeline.get(second, 0.0), seconds * 1000)
        value = self._us(seconds)
        self.latency.record_value(value)
        if op not in self.per_op:
            self.per_op[op] = histogram()
        self.per_op[op].record_value(value)

    def service_time(self, kind: str, seconds: float) -> None:
        if kind not in self.service:
            self.service[kind] = histogram()
        self.service[kind].record_value(self._us(seconds))


class Load:
    def __init__(self, http: aiohttp.ClientSession, plan: Plan) -> None:
        self.plan = plan
        self.places = scenarios.Places(plan.terminals, plan.facilities)
        self.clients = [
            ResumableClient(http, plan.base_url, t.terminal_id, bytes.fromhex(t.key))
            for t in self.places.terminals
        ]
        self.cards = plan.cards
        self.softcards = {
            c.card_no: SoftCard(bytes.fromhex(c.k_auth), bytes.fromhex(c.k_txn), PIN)
            for c in plan.cards
        }
        self.catalog = scenarios.Catalog(plan.items)
        self.homes = {c.card_no: scenarios.home_terminal(c, self.places) for c in plan.cards}
        # ``settle``: (card, token) per planned settlement; a token pays for one settlement.
        self.paid: collections.deque[tuple[WorkCard, str]] = collections.deque()
        self.planned: tuple[Step, random.Random, list[float]] | None = None
        self.pools = scenarios.MixPools(plan.cards, self.places)
        self.deliverable = set(plan.deliverable)
        self.recent: collections.deque[tuple[str, int]] = collections.deque(maxlen=20_000)
        self.counter = 0

    # --- preparation (untimed) ----------------------------------------------------------

    async def prepare(self) -> Ready:
        started = time.perf_counter()
        gate = asyncio.Semaphore(PREP_CONCURRENCY)
        cache = self.plan.cache
        resumed = 0

        async def sign_in(client: ResumableClient) -> None:
            nonlocal resumed
            async with gate:
                cached = cache.sessions.get(client.terminal_id)
                if cached is not None and await client.resume(cached):
                    resumed += 1
                else:
                    await client.sign_in_for(self.plan.session_ttl)

        await asyncio.gather(*(sign_in(c) for c in self.clients))
        sessions = {c.terminal_id: s for c in self.clients if (s := c.export()) is not None}
        return Ready(
            terminals_signed_in=len(self.clients),
            sessions_resumed=resumed,
            prep_seconds=time.perf_counter() - started,
            cache=GeneratorCache(sessions=sessions),
        )

    async def prepare_step(self, order: Step) -> Prepared:
        """The step's schedule and, for ``settle``, a card token for each planned settlement
        (at the card's home terminal) not covered by tokens left from earlier steps."""
        started = time.perf_counter()
        rng = random.Random(f"{self.plan.seed}:{self.plan.index}:{order.number}")
        arrival: schedule.Arrival = "fixed" if order.arrival == "fixed" else "poisson"
        due = schedule.offsets(order.rate, order.duration, arrival, rng, order.max_requests)
        self.planned = (order, rng, due)
        errors: collections.Counter[str] = collections.Counter()
        made = 0
        if self.plan.scenario == "settle":
            gate = asyncio.Semaphore(PREP_CONCURRENCY)
            picks = [rng.choice(self.cards) for _ in range(len(due) - len(self.paid))]

            async def token(card: WorkCard) -> None:
                nonlocal made
                async with gate:
                    try:
                        auth = await self._card_auth(self.homes[card.card_no][0], card)
                    except _Failed as exc:
                        errors[exc.key] += 1
                        return
                self.paid.append((card, auth))
                made += 1

            await asyncio.gather(*(token(c) for c in picks))
        return Prepared(tokens=made, seconds=time.perf_counter() - started, errors=dict(errors))

    # --- requests ---------------------------------------------------------------------

    async def _call(
        self,
        kind: str,
        terminal: int,
        path: str,
        body: dict[str, Any],
        rec: _Recorder | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        sent = time.perf_counter()
        try:
            resp = await self.clients[terminal].request("POST", path, body, headers)
        except TimeoutError:
            raise _Failed(f"{kind}:timeout") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _Failed(f"{kind}:{type(exc).__name__}") from None
        if rec is not None:
            rec.service_time(kind, time.perf_counter() - sent)
        if resp.status != 200:
            raise _Failed(f"{kind}:{resp.status}:{_code(resp.body)}")
        return resp.body

    async def _card_auth(self, terminal: int, card: WorkCard, rec: _Recorder | None = None) -> str:
        """Card-present authentication for a transaction: challenge, PIN, cryptogram, verify."""
        ch = await self._call(
            "challenge",
            terminal,
            "/v1/card-auth/challenge",
            {"card_no": card.card_no, "purpose": "transaction"},
            rec,
        )
        soft = self.softcards[card.card_no]
        soft.verify(PIN)
        cryptogram = soft.internal_authenticate(profile.KEY_REF_TXN, bytes.fromhex(ch["challenge"]))
        soft.power_cycle()
        verified = await self._call(
            "verify",
            terminal,
            "/v1/card-auth/verify",
            {"auth_id": ch["auth_id"], "card_sn": card.card_sn, "cryptogram": cryptogram.hex()},
            rec,
        )
        return str(verified["card_token"])

    def _next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.plan.run_tag}G{self.plan.index}N{self.counter:x}"

    async def _settle(
        self, terminal: int, token: str, body: dict[str, Any], rec: _Recorder
    ) -> None:
        key = self._next_id("LK")
        result = await self._call(
            "settle",
            terminal,
            "/v1/settlements",
            {**body, "card_token": token},
            rec,
            {"Idempotency-Key": key},
        )
        code = str(self.places.terminals[terminal].fixmedins_code)
        rec.settlements.append((result["setl_id"], key, code))
        self.recent.append((result["setl_id"], terminal))

    async def _visit(
        self,
        op: str,
        card: WorkCard,
        terminal: int,
        rng: random.Random,
        rec: _Recorder,
    ) -> None:
        deliver = False
        if op == "maternity" and card.psn_no in self.deliverable and rng.random() < 0.2:
            self.deliverable.discard(card.psn_no)  # one 52 per person and year
            deliver = True
        facility = self.places.facility[self.places.terminals[terminal].terminal_id]
        body = scenarios.settlement(
            op, card, facility, self.catalog, rng, self._next_id("MD"), deliver=deliver
        )
        token = await self._card_auth(terminal, card, rec)
        await self._settle(terminal, token, body, rec)

    async def _operation(self, rng: random.Random, rec: _Recorder) -> str:
        """One arrival's work; returns the operation's name."""
        scenario = self.plan.scenario
        if scenario in ("settle", "visit"):
            if scenario == "settle":
                if not self.paid:
                    raise _Failed("settle:no_card_token")
                card, token = self.paid.popleft()  # prepared for this settlement alone
                terminal, op = self.homes[card.card_no]
                facility = self.places.facility[self.places.terminals[terminal].terminal_id]
                body = scenarios.settlement(
                    op, card, facility, self.catalog, rng, self._next_id("MD")
                )
                await self._settle(terminal, token, body, rec)
                return "settle"
            card = rng.choice(self.cards)
            terminal, op = self.homes[card.card_no]
            await self._visit(op, card, terminal, rng, rec)
            return "visit"
        op = scenarios.choose_op(rng)
        if op == "reversal" and self.recent:
            setl_id, terminal = self.recent.popleft()
            await self._call(
                "reverse",
                terminal,
                f"/v1/settlements/{setl_id}/reverse",
                {"reason": "patient returned the goods"},
                rec,
            )
            rec.reversals.append(setl_id)
            return op
        if op == "reconciliation":
            today = business_date().isoformat()
            terminal = rng.randrange(len(self.clients))
            await self._call(
                "reconcile",
                terminal,
                "/v1/reconciliation",
                {
                    "insutype": "310",
                    "stmt_begndate": today,
                    "stmt_enddate": today,
                    "fixmedins_setl_cnt": 0,
                    "medfee_sumamt": 0,
                    "fund_pay_sumamt": 0,
                    "acct_pay": 0,
                },
                rec,
            )
            return op
        if op == "reversal" or not self.pools.usable(op):
            op = "pharmacy" if self.pools.usable("pharmacy") else "outpatient"
        card = rng.choice(self.pools.cards[op])
        terminal = rng.choice(self.pools.terminal_for(op, card))
        await self._visit(op, card, terminal, rng, rec)
        return op

    async def _timed(self, intended: float, rng: random.Random, rec: _Recorder) -> None:
        try:
            op = await self._operation(rng, rec)
        except _Failed as exc:
            rec.errors[exc.key] += 1
            return
        except Exception as exc:  # a bug or a malformed answer: count it, keep going
            rec.errors[f"harness:{type(exc).__name__}"] += 1
            return
        end = time.perf_counter()
        rec.last_end = max(rec.last_end, end)
        rec.done(op, intended, end - intended)
        rec.ok += 1
        rec.ok_by_op[op] += 1

    # --- a step -------------------------------------------------------------------------

    async def step(self, go: Start) -> Outcome:
        """The prepared step, from ``go.start_wall``."""
        if self.planned is None:
            raise RuntimeError("a step must be prepared before it starts")
        (order, rng, due), self.planned = self.planned, None
        # perf_counter, not loop.time(): uvloop's clock moves in whole milliseconds.
        clock = time.perf_counter
        start = clock() + max(0.0, go.start_wall - time.time())
        rec = _Recorder()
        rec.start = rec.last_end = start
        cpu_before = _cpu()
        wall_before = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        for n, offset in enumerate(due):
            intended = start + offset
            delay = intended - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            elif n % 32 == 0:
                await asyncio.sleep(0)  # behind schedule: still let responses in
            if len(tasks) >= self.plan.max_in_flight:
                rec.errors["generator:in_flight_limit"] += 1
                continue
            rec.send_lag.record_value(rec._us(clock() - intended))
            rec.started += 1
            task = asyncio.create_task(self._timed(intended, rng, rec))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            # Each operation is bounded by its requests' timeouts (a visit makes three).
            _, late = await asyncio.wait(tasks, timeout=3 * self.plan.request_timeout + 5)
            for task in late:
                task.cancel()
                rec.errors["generator:drain_timeout"] += 1
        return Outcome(
            latency=rec.latency.encode(),
            per_op={k: h.encode() for k, h in rec.per_op.items()},
            service={k: h.encode() for k, h in rec.service.items()},
            send_lag=rec.send_lag.encode(),
            scheduled=len(due),
            started=rec.started,
            ok=rec.ok,
            ok_by_op=dict(rec.ok_by_op),
            errors=dict(rec.errors),
            settlements=rec.settlements,
            reversals=rec.reversals,
            last_end=rec.last_end - start,
            timeline_max_ms=[
                round(rec.timeline.get(n, 0.0), 1) for n in range(int(order.duration) + 1)
            ],
            cpu_seconds=_cpu() - cpu_before,
            wall_seconds=time.perf_counter() - wall_before,
        )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _code(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code", "HTTP_ERROR"))
    return "HTTP_ERROR"


async def _serve(conn: Connection, plan: Plan) -> None:
    connector = aiohttp.TCPConnector(
        limit=plan.connections, limit_per_host=plan.connections, keepalive_timeout=60
    )
    timeout = aiohttp.ClientTimeout(total=plan.request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        load = Load(http, plan)
        conn.send(("ready", await load.prepare()))
        loop = asyncio.get_running_loop()
        while True:
            order = await loop.run_in_executor(None, conn.recv)
            if order is None:
                return
            conn.send(("prepared", await load.prepare_step(order)))
            go = await loop.run_in_executor(None, conn.recv)
            if go is None:
                return
            conn.send(("step", await load.step(go)))


def main(conn: Connection, plan: Plan) -> None:
    """The generator process's entry point (multiprocessing, spawn)."""
    # Ctrl-C reaches the whole process group: the parent stops the generators in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(conn, plan))
    except Exception as exc:
        # Only the exception's type and place: messages could carry request data.
        where = traceback.extract_tb(exc.__traceback__)[-1]
        conn.send(("error", f"{type(exc).__name__} at {where.filename}:{where.lineno}"))
    finally:
        conn.close()
