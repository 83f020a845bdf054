"""What a card holder may see and do at a kiosk once the card authenticated there."""

from __future__ import annotations

from cardsvc import clock
from cardsvc.cardauth.services import CardTokens
from cardsvc.cards.lifecycle import CardAction, CardStatus, check_not_expired
from cardsvc.cards.services import CardIssuer
from cardsvc.db import Pool
from cardsvc.kiosk.models import KioskSummary, RecentSettlement
from cardsvc.web.caller import Caller

RECENT = 10
ANY_PURPOSE = frozenset({"identify", "transaction"})


class Kiosk:
    def __init__(self, pool: Pool, tokens: CardTokens, cards: CardIssuer) -> None:
        self._pool, self._tokens, self._cards = pool, tokens, cards

    async def summary(self, caller: Caller, token: str) -> KioskSummary:
        claims = self._tokens.check(caller, token, ANY_PURPOSE)
        async with self._pool.acquire() as conn:
            head = await conn.fetchrow(
                """
                SELECT c.status, c.expiry_date, a.balance
                FROM cards c JOIN psn_accounts a USING (psn_no)
                WHERE c.card_no = $1
                """,
                claims.card_no,
            )
            if head["status"] != CardStatus.ACTIVE:  # a lost card shows its status only
                return KioskSummary(card_no=claims.card_no, card_status=head["status"])
            check_not_expired(head["expiry_date"], clock.business_date())
            rows = await conn.fetch(
                """
                SELECT setl_id, setl_time, fixmedins_code, insutype, med_type, medfee_sumamt,
                       fund_pay_sumamt, acct_pay, psn_cash_pay, status
                FROM settlements WHERE psn_no = $1 ORDER BY setl_time DESC LIMIT $2
                """,
                claims.psn_no,
                RECENT,
            )
        return KioskSummary(
            card_no=claims.card_no,
            card_status=head["status"],
            psn_no=claims.psn_no,
            balc=head["balance"],
            settlements=[RecentSettlement(**dict(r)) for r in rows],
        )

    async def report_loss(self, caller: Caller, token: str) -> KioskSummary:
        """The card's status after the report, and nothing else: it is now a lost card."""
        claims = self._tokens.check(caller, token, ANY_PURPOSE)
        card = await self._cards.transition(caller, claims.card_no, CardAction.REPORT_LOSS)
        return KioskSummary(card_no=card.card_no, card_status=card.status)
