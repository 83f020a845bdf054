"""Card authentication: a challenge for the card, its cryptogram checked by hsm_stub.

Purpose ``identify`` uses K_auth (key reference 01, no PIN); ``transaction`` uses K_txn
(02), which the card only uses after a successful VERIFY, so a valid cryptogram proves the
PIN was entered on the card. Each challenge is single use, bound to the terminal session
that asked for it, and short-lived.

Both writes are group-committed per worker: the challenges that gathered while the previous
statement was in flight are stored in one statement (``_store_challenges``), the verifies
consume theirs in one (``_consume_challenges``); each request still gets its own answer.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import asyncpg
import structlog

from cardcrypto.profile import KEY_REF_AUTH, KEY_REF_TXN
from cardsvc import clock
from cardsvc.batching import Batcher
from cardsvc.cardauth import tokens
from cardsvc.cardauth.models import CardAuthenticated, Challenge, ChallengeRequest, VerifyRequest
from cardsvc.cards.lifecycle import CardStatus, check_not_expired
from cardsvc.config import Settings
from cardsvc.db import Pool
from cardsvc.errors import BusinessRuleViolation, Conflict, Forbidden, NotFound, Unauthenticated
from cardsvc.hsm.client import HsmClient
from cardsvc.persons.services import card_holder_summary
from cardsvc.privacy import derive_key
from cardsvc.web.caller import Caller

log = structlog.get_logger(__name__)

# Which card states may authenticate for each purpose.
_ALLOWED = {
    "identify": {CardStatus.ACTIVE, CardStatus.LOSS_REPORTED},
    "transaction": {CardStatus.ACTIVE},
}
_KEY_REF = {"identify": KEY_REF_AUTH, "transaction": KEY_REF_TXN}
TOKEN_KEY_LABEL = b"cardsvc card token"


def _check_status(status: str, purpose: str) -> None:
    if status not in _ALLOWED[purpose]:
        raise BusinessRuleViolation(
            f"card is {status}: it cannot authenticate for {purpose}",
            code="CARD_NOT_ACTIVE",
            details={"status": status},
        )


# Requests a worker stores (or consumes) the challenges of at most in one statement.
CARD_AUTH_BATCH_MAX = 64

# The (purpose, status) pairs ``_ALLOWED`` allows, as the batch statement takes them.
_ALLOWED_PAIRS = sorted((p, str(s)) for p, states in _ALLOWED.items() for s in states)


@dataclass(frozen=True, slots=True)
class _NewChallenge:
    auth_id: str
    session_id: str
    card_no: str
    purpose: str
    challenge: bytes
    expires_at: dt.datetime
    today: dt.date


@dataclass(frozen=True, slots=True)
class _Consume:
    auth_id: str
    session_id: str


# Each challenge of the batch is stored only for a card whose state allows its purpose and
# that has not expired (``lifecycle.expired``: valid through its date); each request's row
# says whether it was stored and, from the same read, the card's status and expiry (NULL:
# no such card), so a refusal needs no second read.
_STORE_CHALLENGES = """
WITH request AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bpchar[], $4::text[], $5::bytea[],
                         $6::timestamptz[], $7::date[]) WITH ORDINALITY
        AS r(auth_id, session_id, card_no, purpose, challenge, expires_at, today, i)
), card AS (
    SELECT r.i, c.card_no, c.status, c.expiry_date,
           c.expiry_date >= r.today AND EXISTS (
               SELECT 1 FROM unnest($8::text[], $9::text[]) AS ok(purpose, status)
               WHERE ok.purpose = r.purpose AND ok.status = c.status
           ) AS allowed
    FROM request r JOIN cards c ON c.card_no = r.card_no
), stored AS (
    INSERT INTO card_auth_challenges
        (auth_id, session_id, card_no, purpose, challenge, expires_at)
    SELECT r.auth_id, r.session_id, c.card_no, r.purpose, r.challenge, r.expires_at
    FROM request r JOIN card c USING (i) WHERE c.allowed
    RETURNING auth_id
)
SELECT c.status, c.expiry_date, s.auth_id IS NOT NULL AS stored
FROM request r LEFT JOIN card c USING (i) LEFT JOIN stored s USING (auth_id)
ORDER BY r.i
"""

# The same for a lone challenge (an idle worker), as one statement that costs the server
# less to plan and run: one row, the card's status and expiry NULL if there is no card.
_STORE_CHALLENGE = """
WITH card AS (
    SELECT card_no, status, expiry_date,
           status = ANY($7::text[]) AND expiry_date >= $8 AS allowed
    FROM cards WHERE card_no = $3
), stored AS (
    INSERT INTO card_auth_challenges
        (auth_id, session_id, card_no, purpose, challenge, expires_at)
    SELECT $1, $2, card_no, $4, $5, $6 FROM card WHERE allowed
    RETURNING 1
)
SELECT c.status, c.expiry_date, EXISTS (SELECT 1 FROM stored) AS stored
FROM (SELECT) AS one LEFT JOIN card c ON true
"""

# Consumes each unused, unexpired challenge of the batch asked for by its own session; a
# row per request, all NULL when there was nothing to consume. A wrong cryptogram uses the
# challenge up too (it is consumed before the HSM check). No auth_id twice in a batch
# (the batcher's keys): the second would read the first one's consumption as its own.
# The rows are found by key only: the expiry is written so that no plan reads the expiry
# index, which holds every live challenge (thousands under load) and would be read whole.
_CONSUME_CHALLENGES = """
WITH request AS (
    SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(auth_id, session_id, i)
), used AS (
    UPDATE card_auth_challenges a SET used_at = now()
    FROM request r, cards c
    WHERE a.auth_id = ANY($1::text[]) AND a.auth_id = r.auth_id
      AND a.session_id = r.session_id AND a.used_at IS NULL
      AND a.expires_at - now() > interval '0' AND c.card_no = a.card_no
    RETURNING a.auth_id, a.card_no, a.purpose, a.challenge, c.card_sn, c.admdvs, c.psn_no,
              c.expiry_date
)
SELECT u.card_no, u.purpose, u.challenge, u.card_sn, u.admdvs, u.psn_no, u.expiry_date
FROM request r LEFT JOIN used u USING (auth_id)
ORDER BY r.i
"""

# The same for a lone verify: the consumed challenge's row, or none.
_CONSUME_CHALLENGE = """
UPDATE card_auth_challenges a SET used_at = now()
FROM cards c
WHERE a.auth_id = $1 AND a.session_id = $2 AND a.used_at IS NULL
  AND a.expires_at > now() AND c.card_no = a.card_no
RETURNING a.card_no, a.purpose, a.challenge, c.card_sn, c.admdvs, c.psn_no, c.expiry_date
"""


def _session(caller: Caller) -> str:
    """The terminal session a card authentication is bound to (every caller of these
    routes has one): checked here, so no request can put a NULL in its batch's statement."""
    if caller.session_id is None:
        raise Unauthenticated(
            "card authentication needs a terminal session", code="SESSION_INVALID"
        )
    return caller.session_id


def _consume_keys(job: _Consume) -> tuple[Hashable, ...]:
    return (job.auth_id,)


class CardAuthenticator:
    def __init__(self, pool: Pool, hsm: HsmClient, settings: Settings) -> None:
        self._pool, self._hsm, self._settings = pool, hsm, settings
        self._token_key = derive_key(settings.data_key, TOKEN_KEY_LABEL)
        # The worker's challenge writes, group-committed; closed at shutdown
        # (``Services.batchers``).
        self.challenges: Batcher[_NewChallenge, asyncpg.Record] = Batcher(
            "card_auth_challenge", self._store_challenges, max_size=CARD_AUTH_BATCH_MAX
        )
        self.consumptions: Batcher[_Consume, asyncpg.Record | None] = Batcher(
            "card_auth_verify",
            self._consume_challenges,
            max_size=CARD_AUTH_BATCH_MAX,
            keys=_consume_keys,
        )

    async def challenge(self, caller: Caller, req: ChallengeRequest) -> Challenge:
        job = _NewChallenge(
            auth_id=secrets.token_hex(16),
            session_id=_session(caller),
            card_no=req.card_no,
            purpose=req.purpose,
            challenge=os.urandom(16),
            expires_at=clock.now() + dt.timedelta(seconds=self._settings.challenge_ttl),
            today=clock.business_date(),
        )
        row = await self.challenges.submit(job)
        if not row["stored"]:  # why not, from the same read
            if row["status"] is None:
                raise NotFound("no such card", code="CARD_NOT_FOUND")
            _check_status(row["status"], job.purpose)
            check_not_expired(row["expiry_date"], job.today)
            # Not reached while the statement and these checks agree: nothing is stored,
            # and asking again meets the card's state then.
            raise Conflict(
                "the card's status changed while it was being challenged: try again",
                code="CARD_CHANGED",
            )
        return Challenge(
            auth_id=job.auth_id,
            challenge=job.challenge.hex(),
            key_ref=f"{_KEY_REF[job.purpose]:02x}",
            expires_at=job.expires_at,
        )

    async def _store_challenges(self, jobs: Sequence[_NewChallenge]) -> list[asyncpg.Record]:
        """One statement and one commit for the batch's challenges: a row per job."""
        if len(jobs) == 1:
            j = jobs[0]
            row: asyncpg.Record = await self._pool.fetchrow(
                _STORE_CHALLENGE,
                j.auth_id,
                j.session_id,
                j.card_no,
                j.purpose,
                j.challenge,
                j.expires_at,
                sorted(_ALLOWED[j.purpose]),
                j.today,
            )
            return [row]
        rows: list[asyncpg.Record] = await self._pool.fetch(
            _STORE_CHALLENGES,
            [j.auth_id for j in jobs],
            [j.session_id for j in jobs],
            [j.card_no for j in jobs],
            [j.purpose for j in jobs],
            [j.challenge for j in jobs],
            [j.expires_at for j in jobs],
            [j.today for j in jobs],
            [p for p, _ in _ALLOWED_PAIRS],
            [s for _, s in _ALLOWED_PAIRS],
        )
        return rows

    async def verify(self, caller: Caller, req: VerifyRequest) -> CardAuthenticated:
        # Consumed before the HSM check: a wrong cryptogram uses the challenge up too.
        row = await self.consumptions.submit(_Consume(req.auth_id, _session(caller)))
        if row is None:
            raise Unauthenticated(
                "card challenge unknown, used, expired or of another session",
                code="CARD_CHALLENGE_INVALID",
            )
        if row["card_sn"] != req.card_sn.lower():
            raise Unauthenticated("card_sn is not the challenged card's", code="CARD_MISMATCH")
        ok = await self._hsm.verify_card_cryptogram(
            row["admdvs"],
            row["card_sn"],
            _KEY_REF[row["purpose"]],
            bytes(row["challenge"]),
            bytes.fromhex(req.cryptogram),
        )
        if not ok:
            log.warning("card_auth_refused", card_no=row["card_no"])
            raise Unauthenticated("card cryptogram is not valid", code="CARD_CRYPTOGRAM_INVALID")
        return await self._authenticated(
            caller, req.auth_id, row["card_no"], row["purpose"], row["expiry_date"]
        )

    async def _consume_challenges(self, jobs: Sequence[_Consume]) -> list[asyncpg.Record | None]:
        """One statement and one commit for the batch's verifies: a row per job (None:
        nothing consumed)."""
        if len(jobs) == 1:
            one: asyncpg.Record | None = await self._pool.fetchrow(
                _CONSUME_CHALLENGE, jobs[0].auth_id, jobs[0].session_id
            )
            return [one]
        rows: list[asyncpg.Record] = await self._pool.fetch(
            _CONSUME_CHALLENGES, [j.auth_id for j in jobs], [j.session_id for j in jobs]
        )
        return [None if row["card_no"] is None else row for row in rows]

    async def _authenticated(
        self, caller: Caller, auth_id: str, card_no: str, purpose: str, expiry_date: dt.date
    ) -> CardAuthenticated:
        now = clock.now()
        today = clock.business_date(now)
        expires_at = now + dt.timedelta(seconds=self._settings.card_token_ttl)
        found = await card_holder_summary(self._pool, card_no, today)
        if found is None:
            raise NotFound("no such card", code="CARD_NOT_FOUND")
        status, person = found
        _check_status(status, purpose)  # the card may have been reported lost meanwhile
        check_not_expired(expiry_date, today)  # or have expired since the challenge
        # Authentication changes no state (it is not in the audit log): it is logged.
        log.info("card_authenticated", card_no=card_no, purpose=purpose)
        claims = tokens.CardTokenClaims(
            card_no=card_no,
            psn_no=person.baseinfo.psn_no,
            session_id=caller.session_id or "",
            purpose=purpose,  # type: ignore[arg-type]
            expires_at=int(expires_at.timestamp()),
            auth_id=auth_id,
            fixmedins_code=caller.fixmedins_code or "",
        )
        # Only an active card shows its holder: a lost one (identify) shows its status alone.
        shown = person if status == CardStatus.ACTIVE else None
        return CardAuthenticated(
            card_token=tokens.issue(self._token_key, claims),
            expires_at=expires_at,
            purpose=purpose,
            card_no=card_no,
            card_status=status,
            baseinfo=None if shown is None else shown.baseinfo,
            insuinfo=None if shown is None else shown.insuinfo,
        )


# The unique index that lets a transaction card token pay for one settlement only.
TOKEN_USE_INDEX = "settlements_card_auth_id_key"  # noqa: S105 - an index name


def card_token_used() -> Conflict:
    return Conflict(
        "this card token has already paid for a settlement: authenticate the card again"
        " (the holder enters the PIN) for another one",
        code="CARD_TOKEN_USED",
    )


def token_use_id(claims: tokens.CardTokenClaims) -> bytes:
    """What a settlement stores (``settlements.card_auth_id``) to spend its card token."""
    return bytes.fromhex(claims.auth_id)


class CardTokens:
    """Checks card tokens presented with settlement and kiosk requests, in process.

    A terminal may present only a token of its own session. A national gateway client has
    no session: it may present a token issued to a terminal of its own facility (the HIS
    workstation's card reader authenticated the card, the HIS sends the token on)."""

    def __init__(self, settings: Settings) -> None:
        self._key = derive_key(settings.data_key, TOKEN_KEY_LABEL)

    def check(
        self, caller: Caller, token: str, purposes: frozenset[str] = frozenset({"transaction"})
    ) -> tokens.CardTokenClaims:
        try:
            claims = tokens.verify(self._key, token, time.time())
        except tokens.InvalidCardToken as exc:
            raise Unauthenticated(str(exc), code="CARD_TOKEN_INVALID") from None
        if caller.kind == "gateway":
            if not caller.fixmedins_code or claims.fixmedins_code != caller.fixmedins_code:
                raise Unauthenticated(
                    "the card was authenticated at another facility", code="CARD_TOKEN_INVALID"
                )
        elif claims.session_id != caller.session_id:
            raise Unauthenticated(
                "card token belongs to another terminal session", code="CARD_TOKEN_INVALID"
            )
        if claims.purpose not in purposes:
            raise Forbidden(
                f"a card token for {claims.purpose} cannot do this",
                code="CARD_TOKEN_PURPOSE",
                details={"needed": sorted(purposes)},
            )
        return claims
