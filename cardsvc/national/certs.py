"""Certificates of treatment (``mdtrt_cert_type``): who a gateway message is about.

- ``01`` electronic voucher: not supported (CERT_TYPE_NOT_ALLOWED).
- ``02`` identity number: the person found through the keyed lookup hash (the number itself
  is stored only encrypted), within the client's daily limit of lookups that find nobody
  (``cardsvc.national.lookups``: CERTNO_LOOKUP_LIMIT). Not for a settlement
  (CERT_TYPE_NOT_ALLOWED).
- ``03`` social security card: ``mdtrt_cert_no`` is ``card_no|busi_card_info``, the second
  part the card token of a card authentication by a terminal of the caller's facility
  (``CardTokens.check``): any purpose, or for a settlement a ``transaction`` token (the PIN
  was entered on the card). ``card_sn``, when given, must be that card's. Outside a
  settlement the card must be active (CARD_NOT_ACTIVE): as card authentication shows the
  holder of an active card only, a lost card's ``identify`` token names nobody here
  either; a settlement reads the card's status with its own snapshot.

The token is a bearer secret and the identity number personal data: neither is logged nor
named in a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

from cardsvc.cardauth.tokens import CardTokenClaims
from cardsvc.cards.lifecycle import CardStatus
from cardsvc.errors import (
    BusinessRuleViolation,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthenticated,
)
from cardsvc.national.registry import Call

VOUCHER, IDENTITY_NUMBER, CARD = "01", "02", "03"
ANY_PURPOSE = frozenset({"identify", "transaction"})
TRANSACTION = frozenset({"transaction"})
_CARD_NO_LENGTH = 9


@dataclass(frozen=True, slots=True)
class Certified:
    """The person a certificate names; for a card, the card and its checked token."""

    psn_no: str
    card_no: str | None
    claims: CardTokenClaims | None
    card_token: str | None

    def require_person(self, psn_no: str) -> None:
        """Refuses a message whose ``psn_no`` is not the certificate's person."""
        if psn_no != self.psn_no:
            raise Forbidden(
                "psn_no is not the person of the certificate of treatment",
                code="CERT_PERSON_MISMATCH",
            )


def _not_allowed(message: str) -> Forbidden:
    return Forbidden(message, code="CERT_TYPE_NOT_ALLOWED")


async def resolve(
    call: Call, mdtrt_cert_type: str, mdtrt_cert_no: str, card_sn: str, *, settling: bool
) -> Certified:
    """The person (and card) that ``mdtrt_cert_type``/``mdtrt_cert_no`` name, checked."""
    if mdtrt_cert_type == VOUCHER:
        raise _not_allowed("mdtrt_cert_type 01 (electronic voucher) is not supported")
    if mdtrt_cert_type == IDENTITY_NUMBER:
        if settling:
            raise _not_allowed(
                "a settlement needs the card (mdtrt_cert_type 03) with the PIN entered on it"
            )
        psn_no = await call.services.certno_lookups.psn_no(call.paasid, mdtrt_cert_no, call.now)
        return Certified(psn_no=psn_no, card_no=None, claims=None, card_token=None)
    if mdtrt_cert_type == CARD:
        return await _card(call, mdtrt_cert_no, card_sn, settling=settling)
    raise _not_allowed("mdtrt_cert_type must be 02 (identity number) or 03 (card)")


def split_card_cert(mdtrt_cert_no: str) -> tuple[str, str]:
    """``card_no|busi_card_info`` → (card_no, card token)."""
    card_no, bar, token = mdtrt_cert_no.partition("|")
    if not bar or not token or "|" in token:
        raise InvalidRequest(
            "mdtrt_cert_no of a card (03) must be card_no|busi_card_info",
            code="INPUT_INVALID",
        )
    if len(card_no) != _CARD_NO_LENGTH or not card_no.isascii() or not card_no.isalnum():
        raise InvalidRequest(
            f"the card_no in mdtrt_cert_no must be {_CARD_NO_LENGTH} letters or digits",
            code="INPUT_INVALID",
        )
    return card_no, token


async def _card(call: Call, mdtrt_cert_no: str, card_sn: str, *, settling: bool) -> Certified:
    card_no, token = split_card_cert(mdtrt_cert_no)
    claims = call.services.card_tokens.check(
        call.caller, token, TRANSACTION if settling else ANY_PURPOSE
    )
    if claims.card_no != card_no:
        raise Unauthenticated(
            "busi_card_info was issued for another card than card_no", code="CARD_MISMATCH"
        )
    if card_sn or not settling:
        card = await call.pool.fetchrow(
            "SELECT card_sn, status FROM cards WHERE card_no = $1", card_no
        )
        if card is None:
            raise NotFound("no such card", code="CARD_NOT_FOUND")
        if card_sn and card["card_sn"].strip().lower() != card_sn.strip().lower():
            raise Unauthenticated("card_sn is not the card's", code="CARD_MISMATCH")
        if not settling and card["status"] != CardStatus.ACTIVE:
            raise BusinessRuleViolation(
                f"card is {card['status']}: it cannot be used",
                code="CARD_NOT_ACTIVE",
                details={"status": card["status"]},
            )
    return Certified(psn_no=claims.psn_no, card_no=card_no, claims=claims, card_token=token)
