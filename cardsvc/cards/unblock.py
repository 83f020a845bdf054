"""PIN unblock with the card present at a counter (docs/protocol.md, PIN unblock).

The counter has just authenticated the card (card-auth, ``identify``: K_auth needs no PIN)
and read the card's own 8-byte challenge. Given that card token and challenge, hsm_stub
computes the issuer's MAC for RESET RETRY COUNTER under the card's K_unblock; the service
returns the command for the terminal to send. The new PIN is entered at the reader and goes
to the card in CHANGE REFERENCE DATA, which the card accepts only right after a valid reset:
the service never sees it.

Refused: a token of another terminal session (``CARD_TOKEN_INVALID``) or of another card
(``CARD_MISMATCH``), a card that is not active (``CARD_NOT_ACTIVE``: a card reported lost
must not get a new PIN) or has expired (``CARD_EXPIRED``), and a second command for the same
card authentication (``CARD_TOKEN_USED``). A card whose PIN is not blocked may be reset too:
that is the holder who forgot the PIN, authenticated the same way.
"""

from __future__ import annotations

import asyncpg
import structlog

from cardcrypto import profile
from cardsvc import clock
from cardsvc.audit.services import AuditLog
from cardsvc.cardauth.services import CardTokens
from cardsvc.cards.lifecycle import check_pin_unblockable
from cardsvc.cards.models import PinUnblockCommand, PinUnblockRequest
from cardsvc.db import Connection, Pool, transaction
from cardsvc.errors import Conflict, NotFound, Unauthenticated
from cardsvc.hsm.client import HsmClient
from cardsvc.web.caller import Caller

log = structlog.get_logger(__name__)

# Either purpose proves the card is the one in the reader; a blocked PIN allows identify only.
_PURPOSES = frozenset({"identify", "transaction"})

_CARD = """
SELECT c.card_sn, c.admdvs, c.status, c.expiry_date, t.key_under_lmk
FROM cards c, terminals t WHERE c.card_no = $1 AND t.terminal_id = $2
"""


class PinUnblocker:
    def __init__(self, pool: Pool, hsm: HsmClient, tokens: CardTokens, audit: AuditLog) -> None:
        self._pool, self._hsm, self._tokens, self._audit = pool, hsm, tokens, audit

    async def unblock(
        self, caller: Caller, card_no: str, req: PinUnblockRequest
    ) -> PinUnblockCommand:
        claims = self._tokens.check(caller, req.card_token, _PURPOSES)
        if claims.card_no != card_no:
            raise Unauthenticated(
                "the card token is of another card than this one", code="CARD_MISMATCH"
            )
        row = await self._pool.fetchrow(_CARD, card_no, caller.terminal_id)
        if row is None:
            raise NotFound("no such card", code="CARD_NOT_FOUND")
        check_pin_unblockable(row["status"], row["expiry_date"], clock.business_date())
        # HSM work before the transaction: no lock is held across HSM IO.
        mac = await self._hsm.pin_unblock_mac(
            row["admdvs"],
            row["card_sn"],
            row["key_under_lmk"],
            bytes.fromhex(req.card_challenge),
        )
        async with transaction(self._pool) as conn:
            await self._spend(conn, caller, card_no, claims.auth_id)
        log.info("pin_unblock_authorised", card_no=card_no, terminal_id=caller.terminal_id)
        return PinUnblockCommand(card_no=card_no, command=profile.pin_unblock_command(mac).hex())

    async def _spend(self, conn: Connection, caller: Caller, card_no: str, auth_id: str) -> None:
        """Record the unblock against its card authentication (once) and audit it, with the
        card's state checked again under its lock."""
        card = await conn.fetchrow(
            "SELECT status, expiry_date FROM cards WHERE card_no = $1 FOR UPDATE", card_no
        )
        check_pin_unblockable(card["status"], card["expiry_date"], clock.business_date())
        try:
            await conn.execute(
                "INSERT INTO card_pin_unblocks (auth_id, card_no, terminal_id) VALUES ($1, $2, $3)",
                auth_id,
                card_no,
                caller.terminal_id,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(
                "this card authentication already gave a PIN unblock: authenticate the card"
                " again for another one",
                code="CARD_TOKEN_USED",
            ) from None
        await self._audit.append(
            conn,
            actor=caller.actor,
            action="card.pin_unblocked",
            object_type="card",
            object_id=card_no,
            data={"terminal_id": caller.terminal_id, "auth_id": auth_id},
        )
