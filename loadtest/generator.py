"""The load generator: one OS process with its own event loop (uvloop) and HTTP pool.

The parent starts one or more of these (``--generators``), gives each a share of the
terminals and cards, and then orders steps over a pipe::

    parent                               generator
    Plan  ──(process argument)──▶        sign in its terminals
          ◀── Ready(prep figures)
    Step(rate, duration) ──▶             the step's open-loop schedule; for ``settle`` a
                                         card token per planned settlement (challenge/verify:
                                         one PIN entry pays for one settlement) and its
                                         request body, encoded; untimed
          ◀── Prepared(prep figures)
    Start(start) ──▶                     requests on the schedule, histograms
          ◀── Outcome(histograms, errors, acknowledged settlements, CPU)
    None ──▶                             exit

Latency is measured from each request's intended start (HDR histogram, microseconds), and
the send lag (how late the generator itself started a request) is kept apart, with the
process's CPU time, so a reader can tell when the generator was the limit.

The generator's CPU counts against the service's (they share the cores), so the timed phase
does as little per request as it can: requests go through ``loadtest.wire`` (the request's
bytes signed and written, the answer read back, no task per ``settle`` request), and a
timer releases the requests that are due rather than one timer each.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import hashlib
import random
import resource
import signal
import time
import traceback
import urllib.parse
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import msgspec
import uvloop
from hdrh.histogram import HdrHistogram

from cardcrypto import profile
from cardsvc.clock import business_date
from cardsvc.terminal_sdk.softcard import SoftCard
from loadtest import gateway, scenarios, schedule, wire
from loadtest.city import Item
from loadtest.sessions import GeneratorCache, ResumableClient
from loadtest.state import Facility, Terminal, WorkCard
from loadtest.workset import PIN

LOWEST_US, HIGHEST_US, DIGITS = 1, 3_600_000_000, 3
PREP_CONCURRENCY = 64
PREP_RETRIES = 30  # ``his``: card authentications refused by a terminal's rate limit
RELEASE_MOST = 32  # requests released per wake when behind, before answers are let in
TIMER_PAD_S = 0.0002  # the release timer is set this much after the due time (see _release)
# Refusals that a new session cures (as the terminal SDK's client): expired, or ended.
SIGN_IN_AGAIN = frozenset({"SESSION_EXPIRED", "SESSION_ENDED"})
SETTLEMENTS = b"/v1/settlements"


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
    # ``his``: the gateway clients of the pharmacies the load buys at.
    gateways: list[gateway.GatewayCred] = msgspec.field(default_factory=list)


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


class _Settled(msgspec.Struct):
    setl_id: str


class _ErrorCode(msgspec.Struct):
    code: str = "HTTP_ERROR"


class _ErrorBody(msgspec.Struct):
    error: _ErrorCode | None = None


_encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder().decode
_decode_settled = msgspec.json.Decoder(_Settled).decode
_decode_error = msgspec.json.Decoder(_ErrorBody).decode


class _Paid(msgspec.Struct, array_like=True):
    """A settlement ready to send: its token is made and its body encoded (untimed)."""

    terminal: int
    key: str  # Idempotency-Key
    fixmedins_code: str
    body: bytes
    digest: bytes  # hex SHA-256 of body, for the signature
    extra: bytes  # the Idempotency-Key header line


class _Release:
    """Where a step's schedule stands: the offsets, the next one to send, its start."""

    def __init__(
        self,
        due: list[float],
        start: float,
        rng: random.Random,
        rec: _Recorder,
        finished: asyncio.Future[None],
    ) -> None:
        self.due, self.start, self.rng, self.rec, self.finished = due, start, rng, rec, finished
        self.next = 0


class _Recorder:
    """A step's figures. Latency is recorded once, per operation; the step's overall
    histogram is their sum."""

    def __init__(self, start: float, duration: float) -> None:
        self.per_op: dict[str, HdrHistogram] = {}
        self.service: dict[str, HdrHistogram] = {}
        self.send_lag = histogram()
        self.ok = 0
        self.ok_by_op: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.settlements: list[tuple[str, str, str]] = []
        self.reversals: list[str] = []
        self.started = 0
        self.start = start
        self.last_end = start
        self.timeline = [0.0] * (int(duration) + 2)
        self.outstanding = 0  # operations started and not yet ended
        self.closed = False  # the step is over: late answers are not counted
        self.drained: asyncio.Future[None] | None = None

    @staticmethod
    def _us(seconds: float) -> int:
        return min(HIGHEST_US, max(LOWEST_US, int(seconds * 1e6)))

    def latency(self) -> HdrHistogram:
        total = histogram()
        for h in self.per_op.values():
            total.add(h)
        return total

    def done(self, op: str, intended: float, end: float) -> None:
        """An operation ended well, ``end - intended`` after it was meant to start."""
        seconds = end - intended
        second = min(len(self.timeline) - 1, max(0, int(intended - self.start)))
        if seconds * 1000 > self.timeline[second]:
            self.timeline[second] = seconds * 1000
        hist = self.per_op.get(op)
        if hist is None:
            hist = self.per_op[op] = histogram()
        hist.record_value(self._us(seconds))
        if end > self.last_end:
            self.last_end = end
        self.ok += 1
        self.ok_by_op[op] += 1

    def service_time(self, kind: str, seconds: float) -> None:
        hist = self.service.get(kind)
        if hist is None:
            hist = self.service[kind] = histogram()
        hist.record_value(self._us(seconds))

    def ended(self) -> None:
        """An operation ended, well or not."""
        self.outstanding -= 1
        if self.outstanding == 0 and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


class Load:
    def __init__(self, http: aiohttp.ClientSession, plan: Plan) -> None:
        self.plan = plan
        self.places = scenarios.Places(plan.terminals, plan.facilities)
        # Sign-in (untimed, once per session) goes through the terminal SDK's client; every
        # other request through ``wire`` with the session's signer.
        self.clients = [
            ResumableClient(http, plan.base_url, t.terminal_id, bytes.fromhex(t.key))
            for t in self.places.terminals
        ]
        self.signers: list[wire.Signer | None] = [None] * len(self.clients)
        self.signing_in: dict[int, asyncio.Task[None]] = {}
        url = urllib.parse.urlsplit(plan.base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.pool = wire.Pool(self.host, self.port, plan.connections, plan.request_timeout)
        self.cards = plan.cards
        self.softcards = {
            c.card_no: SoftCard(bytes.fromhex(c.k_auth), bytes.fromhex(c.k_txn), PIN)
            for c in plan.cards
        }
        self.catalog = scenarios.Catalog(plan.items)
        self.homes = {c.card_no: scenarios.home_terminal(c, self.places) for c in plan.cards}
        # ``settle``: a settlement ready to send per planned arrival (a token pays for one).
        self.paid: collections.deque[_Paid] = collections.deque()
        self.planned: tuple[Step, random.Random, list[float]] | None = None
        self.pools = scenarios.MixPools(plan.cards, self.places)
        self.deliverable = set(plan.deliverable)
        self.recent: collections.deque[tuple[str, int]] = collections.deque(maxlen=20_000)
        self.counter = 0
        self.tasks: set[asyncio.Task[None]] = set()
        # ``his``: a pharmacy purchase through the gateway per arrival (2204 + 2207), at a
        # pharmacy with a gateway client; the card authenticated at its pos (untimed).
        self.tif = {
            c.fixmedins_code: gateway.TifSigner(f"{self.host}:{self.port}", c)
            for c in plan.gateways
        }
        self.sign_no: dict[str, str] = {}
        self.his_terminals = [
            n
            for n in self.places.where("pharmacy", "310")
            if self.places.terminals[n].fixmedins_code in self.tif
        ]
        self.his_cards = [c for c in plan.cards if "310" in c.insutypes]
        self.purchases: collections.deque[gateway.Purchase] = collections.deque()

    # --- preparation (untimed) ----------------------------------------------------------

    async def prepare(self) -> Ready:
        started = time.perf_counter()
        gate = asyncio.Semaphore(PREP_CONCURRENCY)
        cache = self.plan.cache
        resumed = 0

        async def sign_in(n: int, client: ResumableClient) -> None:
            nonlocal resumed
            async with gate:
                cached = cache.sessions.get(client.terminal_id)
                if cached is not None and await client.resume(cached):
                    resumed += 1
                else:
                    await client.sign_in_for(self.plan.session_ttl)
            self._new_signer(n)

        await asyncio.gather(*(sign_in(n, c) for n, c in enumerate(self.clients)))
        for code in self.tif:
            await self._gateway_sign_in(code)
        sessions = {c.terminal_id: s for c in self.clients if (s := c.export()) is not None}
        return Ready(
            terminals_signed_in=len(self.clients),
            sessions_resumed=resumed,
            prep_seconds=time.perf_counter() - started,
            cache=GeneratorCache(sessions=sessions),
        )

    async def _gateway_sign_in(self, code: str) -> None:
        """9001 for a gateway client (untimed): its sign_no serves the whole run."""
        body = gateway.envelope(
            "9001",
            self._next_id(code),
            code,
            "",
            {"signIn": {"opter_no": "LT001", "mac": "00-00-00-00-00-00", "ip": "127.0.0.1"}},
        )
        status, payload, error = await self.pool.request(self.tif[code].post(body))
        ans = gateway.answer(payload) if error is None and status == 200 else None
        if ans is None or ans.infcode != 0 or ans.output is None or not ans.output.signinoutb:
            raise RuntimeError(f"gateway sign-in (9001) failed: {status} {error}")
        self.sign_no[code] = ans.output.signinoutb.sign_no

    def _new_signer(self, terminal: int) -> None:
        session = self.clients[terminal].export()
        if session is None:
            raise RuntimeError("a terminal is not signed in")
        self.signers[terminal] = wire.Signer(
            f"{self.host}:{self.port}",
            self.clients[terminal].terminal_id,
            session.session_id,
            bytes.fromhex(session.key),
        )

    async def _sign_in_again(self, terminal: int, stale: wire.Signer | None) -> None:
        """A new session for a terminal whose session expired or ended, once for all the
        requests that found out (``stale``: the signer they were signed with)."""
        if self.signers[terminal] is not stale:
            return  # another request has signed in again already
        task = self.signing_in.get(terminal)
        if task is None:
            task = asyncio.ensure_future(self.clients[terminal].sign_in_for(self.plan.session_ttl))
            self.signing_in[terminal] = task
        try:
            await task
        finally:
            self.signing_in.pop(terminal, None)
        if self.signers[terminal] is stale:
            self._new_signer(terminal)

    async def prepare_step(self, order: Step) -> Prepared:
        """The step's schedule and, for ``settle``, a card token for each planned settlement
        (at the card's home terminal) not covered by tokens left from earlier steps, with its
        request body encoded; then enough connections for the step's rate."""
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
            tokens: list[str | None] = [None] * len(picks)

            async def token(n: int, card: WorkCard) -> None:
                async with gate:
                    try:
                        tokens[n] = await self._card_auth(self.homes[card.card_no][0], card)
                    except _Failed as exc:
                        errors[exc.key] += 1

            await asyncio.gather(*(token(n, c) for n, c in enumerate(picks)))
            for card, auth in zip(picks, tokens, strict=True):
                if auth is not None:
                    self.paid.append(self._paid(card, auth, rng))
                    made += 1
        elif self.plan.scenario == "his":
            made = await self._prepare_purchases(len(due) - len(self.purchases), rng, errors)
        await self.pool.warm(PREP_CONCURRENCY)
        # What is made by now lives through the step: the collector need not scan it again.
        gc.collect()
        gc.freeze()
        return Prepared(tokens=made, seconds=time.perf_counter() - started, errors=dict(errors))

    async def _prepare_purchases(
        self, count: int, rng: random.Random, errors: collections.Counter[str]
    ) -> int:
        """``his``: ``count`` purchases ready to send (card token, both envelopes)."""
        if not self.his_terminals or not self.his_cards:
            raise RuntimeError("his: no pharmacy with a gateway client, or no 310 card")
        gate = asyncio.Semaphore(PREP_CONCURRENCY)
        picks = [(rng.choice(self.his_cards), rng.choice(self.his_terminals)) for _ in range(count)]
        made = 0

        async def prepare(card: WorkCard, terminal: int) -> None:
            nonlocal made
            async with gate:
                for attempt in range(PREP_RETRIES + 1):
                    try:
                        token = await self._card_auth(terminal, card)
                        break
                    except _Failed as exc:
                        # A pharmacy's one pos meets its rate limit: wait for it (untimed).
                        if ":429:" not in exc.key or attempt == PREP_RETRIES:
                            errors[exc.key] += 1
                            return
                        await asyncio.sleep(1.0)
            code = str(self.places.terminals[terminal].fixmedins_code)
            facility = self.places.facility[self.places.terminals[terminal].terminal_id]
            mdtrt_id = self._next_id("MD")
            body = scenarios.settlement("pharmacy", card, facility, self.catalog, rng, mdtrt_id)
            self.purchases.append(
                gateway.purchase(
                    fixmedins_code=code,
                    sign_no=self.sign_no[code],
                    msgids=(self._next_id(code), self._next_id(code)),
                    psn_no=card.psn_no,
                    card_no=card.card_no,
                    card_sn=card.card_sn,
                    card_token=token,
                    mdtrt_id=mdtrt_id,
                    lines=body["feedetail"],
                )
            )
            made += 1

        await asyncio.gather(*(prepare(c, t) for c, t in picks))
        return made

    async def _gateway(self, kind: str, code: str, envelope: bytes, rec: _Recorder) -> Any:
        """One gateway message of a timed ``his`` purchase; its answer (infcode 0)."""
        sent = time.perf_counter()
        status, payload, error = await self.pool.request(self.tif[code].post(envelope))
        rec.service_time(kind, time.perf_counter() - sent)
        if error is not None:
            raise _Failed(f"{kind}:{error}")
        if status != 200:
            raise _Failed(f"{kind}:{status}")
        ans = gateway.answer(payload)
        if ans.infcode != 0:
            raise _Failed(f"{kind}:{gateway.error_code(ans)}")
        return ans

    async def _his(self, rec: _Recorder) -> None:
        if not self.purchases:
            raise _Failed("his:no_card_token")
        p = self.purchases.popleft()  # prepared for this arrival alone
        await self._gateway("2204", p.fixmedins_code, p.fee_upload, rec)
        ans = await self._gateway("2207", p.fixmedins_code, p.settle, rec)
        if ans.output is None or ans.output.setlinfo is None:
            raise _Failed("2207:no_setlinfo")
        setl_id = ans.output.setlinfo.setl_id
        rec.settlements.append((setl_id, "gw:" + p.settle_msgid, p.fixmedins_code))

    def _paid(self, card: WorkCard, token: str, rng: random.Random) -> _Paid:
        """A ``settle`` arrival's request, but for its signature (made when it is sent)."""
        terminal, op = self.homes[card.card_no]
        facility = self.places.facility[self.places.terminals[terminal].terminal_id]
        body = scenarios.settlement(op, card, facility, self.catalog, rng, self._next_id("MD"))
        return self._paid_body(terminal, {**body, "card_token": token})

    # --- requests ---------------------------------------------------------------------

    async def _send(
        self,
        kind: str,
        terminal: int,
        target: bytes,
        body: bytes,
        digest: bytes | None = None,
        extra: bytes = b"",
    ) -> tuple[int, bytes]:
        """A signed request and its answer; signs in again (once) if the session expired or
        ended, as the terminal SDK's client does."""
        for again in (False, True):
            signer = self.signers[terminal]
            if signer is None:
                await self._sign_in_again(terminal, None)
                signer = self.signers[terminal]
                assert signer is not None
            data = signer.post(target, body, digest, extra)
            status, payload, error = await self.pool.request(data)
            if error is not None:
                raise _Failed(f"{kind}:{error}")
            if again or status != 401 or _code(payload) not in SIGN_IN_AGAIN:
                return status, payload
            await self._sign_in_again(terminal, signer)
        raise AssertionError("unreachable")

    async def _call(
        self,
        kind: str,
        terminal: int,
        path: str,
        body: dict[str, Any],
        rec: _Recorder | None = None,
    ) -> Any:
        sent = time.perf_counter()
        status, payload = await self._send(kind, terminal, path.encode("ascii"), _encode(body))
        if rec is not None:
            rec.service_time(kind, time.perf_counter() - sent)
        if status != 200:
            raise _Failed(f"{kind}:{status}:{_code(payload)}")
        return _decode_any(payload)

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

    # ``settle``, the hot path: no task or future per settlement, an answer calls back.

    def _send_settle(self, intended: float, rec: _Recorder) -> None:
        if not self.paid:
            rec.errors["settle:no_card_token"] += 1
            rec.ended()
            return
        paid = self.paid.popleft()  # prepared for this settlement alone
        signer = self.signers[paid.terminal]
        if signer is None:
            self._spawn(self._settle_again(paid, intended, rec, None))
            return
        data = signer.post(SETTLEMENTS, paid.body, paid.digest, paid.extra)
        done = functools.partial(self._settled, paid, intended, rec, signer, time.perf_counter())
        self.pool.send(data, done)

    def _settled(
        self,
        paid: _Paid,
        intended: float,
        rec: _Recorder,
        signer: wire.Signer,
        sent: float,
        status: int,
        body: bytes,
        error: str | None,
    ) -> None:
        end = time.perf_counter()
        if rec.closed:
            return
        if error is not None:
            rec.errors[f"settle:{error}"] += 1
        elif status == 401 and _code(body) in SIGN_IN_AGAIN:
            self._spawn(self._settle_again(paid, intended, rec, signer))
            return  # still outstanding
        else:
            rec.service_time("settle", end - sent)
            self._answered(paid, intended, rec, status, body, end)
        rec.ended()

    def _answered(
        self, paid: _Paid, intended: float, rec: _Recorder, status: int, body: bytes, end: float
    ) -> None:
        if status != 200:
            rec.errors[f"settle:{status}:{_code(body)}"] += 1
            return
        try:
            setl_id = _decode_settled(body).setl_id
        except msgspec.DecodeError as exc:  # a malformed answer: count it, keep going
            rec.errors[f"harness:{type(exc).__name__}"] += 1
            return
        rec.settlements.append((setl_id, paid.key, paid.fixmedins_code))
        self.recent.append((setl_id, paid.terminal))
        rec.done("settle", intended, end)

    async def _settle_again(
        self, paid: _Paid, intended: float, rec: _Recorder, stale: wire.Signer | None
    ) -> None:
        """A settlement whose session expired or ended: sign in again, send it again (the
        same key and token: it was not settled)."""
        try:
            await self._sign_in_again(paid.terminal, stale)
            sent = time.perf_counter()
            status, body = await self._send(
                "settle", paid.terminal, SETTLEMENTS, paid.body, paid.digest, paid.extra
            )
            end = time.perf_counter()
            if not rec.closed:
                rec.service_time("settle", end - sent)
                self._answered(paid, intended, rec, status, body, end)
        except _Failed as exc:
            if not rec.closed:
                rec.errors[exc.key] += 1
        except Exception as exc:  # signing in failed: count it, keep going
            if not rec.closed:
                rec.errors[f"settle:sign_in:{type(exc).__name__}"] += 1
        finally:
            if not rec.closed:
                rec.ended()

    def _release(self, r: _Release) -> None:
        try:
            self._release_due(r)
        except BaseException as exc:  # a bug: the step ends with it, not hangs
            if not r.finished.done():
                r.finished.set_exception(exc)

    def _release_due(self, r: _Release) -> None:
        clock, rec = time.perf_counter, r.rec
        upto = schedule.released(r.due, r.next, clock() - r.start, RELEASE_MOST)
        lag, us, limit = rec.send_lag.record_value, rec._us, self.plan.max_in_flight
        settle = self.plan.scenario == "settle"
        for offset in r.due[r.next : upto]:
            intended = r.start + offset
            if rec.outstanding >= limit:
                rec.errors["generator:in_flight_limit"] += 1
                continue
            lag(us(clock() - intended))
            rec.started += 1
            rec.outstanding += 1
            if settle:
                self._send_settle(intended, rec)
            else:
                self._spawn(self._timed(intended, r.rng, rec))
        r.next = upto
        loop = asyncio.get_running_loop()
        if upto >= len(r.due):
            r.finished.set_result(None)
        elif r.due[upto] <= clock() - r.start:
            loop.call_soon(self._release, r)  # behind schedule: answers first, then on
        else:
            # uvloop's clock is time.perf_counter's (CLOCK_MONOTONIC) in whole milliseconds,
            # and its timers fire on millisecond ticks: asked for exactly the due time they
            # often fire early and would spin; TIMER_PAD_S late they (nearly) never do.
            loop.call_at(r.start + r.due[upto] + TIMER_PAD_S, self._release, r)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ``visit`` and ``mix``: an operation of several requests, one task each.

    async def _settle(
        self, terminal: int, token: str, body: dict[str, Any], rec: _Recorder
    ) -> None:
        paid = self._paid_body(terminal, {**body, "card_token": token})
        sent = time.perf_counter()
        status, payload = await self._send(
            "settle", terminal, SETTLEMENTS, paid.body, paid.digest, paid.extra
        )
        rec.service_time("settle", time.perf_counter() - sent)
        if status != 200:
            raise _Failed(f"settle:{status}:{_code(payload)}")
        setl_id = _decode_settled(payload).setl_id
        rec.settlements.append((setl_id, paid.key, paid.fixmedins_code))
        self.recent.append((setl_id, terminal))

    def _paid_body(self, terminal: int, body: dict[str, Any]) -> _Paid:
        key = self._next_id("LK")
        encoded = _encode(body)
        return _Paid(
            terminal=terminal,
            key=key,
            fixmedins_code=str(self.places.terminals[terminal].fixmedins_code),
            body=encoded,
            digest=hashlib.sha256(encoded).hexdigest().encode("ascii"),
            extra=b"\r\nIdempotency-Key: " + key.encode("ascii"),
        )

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
        """One ``visit`` or ``mix`` arrival's work; returns the operation's name."""
        if self.plan.scenario == "his":
            await self._his(rec)
            return "his"
        if self.plan.scenario == "visit":
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
            if not rec.closed:
                rec.errors[exc.key] += 1
            return
        except Exception as exc:  # a bug or a malformed answer: count it, keep going
            if not rec.closed:
                rec.errors[f"harness:{type(exc).__name__}"] += 1
            return
        else:
            if not rec.closed:
                rec.done(op, intended, time.perf_counter())
        finally:
            if not rec.closed:
                rec.ended()

    # --- a step -------------------------------------------------------------------------

    async def step(self, go: Start) -> Outcome:
        """The prepared step, from ``go.start_wall``."""
        if self.planned is None:
            raise RuntimeError("a step must be prepared before it starts")
        (order, rng, due), self.planned = self.planned, None
        # perf_counter, not loop.time(): uvloop's clock moves in whole milliseconds.
        clock = time.perf_counter
        start = clock() + max(0.0, go.start_wall - time.time())
        rec = _Recorder(start, order.duration)
        cpu_before = _cpu()
        wall_before = time.perf_counter()
        # A timer releases every request that is due (at most RELEASE_MOST per turn of the
        # loop), then sets itself for the next one: one timer per wake, no future or task
        # per request, and never a request before its intended time.
        released = asyncio.get_running_loop().create_future()
        self._release(_Release(due, start, rng, rec, released))
        await released
        if rec.outstanding > 0:
            rec.drained = asyncio.get_running_loop().create_future()
            # Each operation is bounded by its requests' timeouts (a visit makes three).
            try:
                await asyncio.wait_for(
                    asyncio.shield(rec.drained), 3 * self.plan.request_timeout + 5
                )
            except TimeoutError:
                rec.errors["generator:drain_timeout"] += rec.outstanding
                for task in list(self.tasks):
                    task.cancel()
        rec.closed = True
        return Outcome(
            latency=rec.latency().encode(),
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
            timeline_max_ms=[round(v, 1) for v in rec.timeline[: int(order.duration) + 1]],
            cpu_seconds=_cpu() - cpu_before,
            wall_seconds=time.perf_counter() - wall_before,
        )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _code(body: bytes) -> str:
    """The error code of an answer's body (``HTTP_ERROR`` if it has none)."""
    try:
        error = _decode_error(body).error
    except msgspec.DecodeError:
        return "HTTP_ERROR"
    return "HTTP_ERROR" if error is None else error.code


async def _serve(conn: Connection, plan: Plan) -> None:
    connector = aiohttp.TCPConnector(
        limit=plan.connections, limit_per_host=plan.connections, keepalive_timeout=60
    )
    timeout = aiohttp.ClientTimeout(total=plan.request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        load = Load(http, plan)
        try:
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
        finally:
            load.pool.close()


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
