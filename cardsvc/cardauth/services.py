"""Card authentication: a challenge for the card, its cryptogram checked by hsm_stub.

Purpose ``identify`` uses K_auth (key reference 01, no PIN); ``transaction`` uses K_txn
(02), which the card only uses after a successful VERIFY, so a valid cryptogram proves the
PIN was entered on the card. Each challenge is single use, bound to the terminal session
that asked for it, and short-lived.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import time

import structlog

from cardcrypto.profile import KEY_REF_AUTH, KEY_REF_TXN
from cardsvc import clock
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


class CardAuthenticator:
    def __init__(self, pool: Pool, hsm: HsmClient, settings: Settings) -> None:
        self._pool, self._hsm, self._settings = pool, hsm, settings
        self._token_key = derive_key(settings.data_key, TOKEN_KEY_LABEL)

    async def challenge(self, caller: Caller, req: ChallengeRequest) -> Challenge:
        auth_id, challenge = secrets.token_hex(16), os.urandom(16)
        expires_at = clock.now() + dt.timedelta(seconds=self._settings.challenge_ttl)
        today = clock.business_date()
        # One statement: the challenge is stored only for a card whose state allows the
        # purpose and that has not expired (``lifecycle.expired``: valid through its date).
        stored = await self._pool.fetchval(
            """
            INSERT INTO card_auth_challenges
                (auth_id, session_id, card_no, purpose, challenge, expires_at)
            SELECT $1, $2, card_no, $4, $5, $6 FROM cards
            WHERE card_no = $3 AND status = ANY($7::text[]) AND expiry_date >= $8
            RETURNING 1
            """,
            auth_id,
            caller.session_id,
            req.card_no,
            req.purpose,
            challenge,
            expires_at,
            sorted(_ALLOWED[req.purpose]),
            today,
        )
        if not stored:  # why not, for the error
            card = await self._pool.fetchrow(
                "SELECT status, expiry_date FROM cards WHERE card_no = $1", req.card_no
            )
            if card is None:
                raise NotFound("no such card", code="CARD_NOT_FOUND")
            _check_status(card["status"], req.purpose)
            check_not_expired(card["expiry_date"], today)
            # The card changed between the two reads (reactivated, say): nothing is stored,
            # and asking again meets its new state.
            raise Conflict(
                "the card's status changed while it was being challenged: try again",
                code="CARD_CHANGED",
            )
        return Challenge(
            auth_id=auth_id,
            challenge=challenge.hex(),
            key_ref=f"{_KEY_REF[req.purpose]:02x}",
            expires_at=expires_at,
        )

    async def verify(self, caller: Caller, req: VerifyRequest) -> CardAuthenticated:
        # Consumed before the HSM check: a wrong cryptogram uses the challenge up too.
        row = await self._pool.fetchrow(
            """
            UPDATE card_auth_challenges a SET used_at = now()
            FROM cards c
            WHERE a.auth_id = $1 AND a.session_id = $2 AND a.used_at IS NULL
              AND a.expires_at > now() AND c.card_no = a.card_no
            RETURNING a.card_no, a.purpose, a.challenge, c.card_sn, c.admdvs, c.psn_no,
                      c.expiry_date
            """,
            req.auth_id,
            caller.session_id,
        )
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
    """Checks card tokens presented with settlement and kiosk requests, in process."""

    def __init__(self, settings: Settings) -> None:
        self._key = derive_key(settings.data_key, TOKEN_KEY_LABEL)

    def check(
        self, caller: Caller, token: str, purposes: frozenset[str] = frozenset({"transaction"})
    ) -> tokens.CardTokenClaims:
        try:
            claims = tokens.verify(self._key, token, time.time())
        except tokens.InvalidCardToken as exc:
            raise Unauthenticated(str(exc), code="CARD_TOKEN_INVALID") from None
        if claims.session_id != caller.session_id:
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
