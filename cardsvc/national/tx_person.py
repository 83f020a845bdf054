"""1101 person information, from an identity number (``02``) or the card (``03``).

The identity number is answered masked, as everywhere in cardsvc, and nothing else in the
answer rebuilds it: ``brdy`` carries the birth year alone (``yyyy``) and ``age`` the age
reached in the current calendar year, which follows from that year.

An identity number proves only that the sender knows it, not that the person is there: for
``02`` the answer carries what registering the person needs (``psn_no``, the schemes, the
region) but the name masked to its first character and no ``balc``; the card (``03``) gets
the whole answer. Every 1101 is in the audit log (``gateway.person_queried``) with the
operator, the certificate type and the outcome, never the number or the card token; the
lookups by identity number that find nobody are limited per client and day
(``cardsvc.national.lookups``).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from cardsvc import clock
from cardsvc.db import transaction as db_transaction
from cardsvc.errors import CardsvcError, ServiceUnavailable
from cardsvc.national import certs
from cardsvc.national.operator import operator
from cardsvc.national.registry import Call, node, transaction
from cardsvc.national.units import yuan
from cardsvc.persons.models import PersonSummary
from cardsvc.persons.services import person_summary

# The national code of a resident identity card (psn_cert_type): the only certificate
# cardsvc registers persons with.
RESIDENT_ID_CARD = "01"
INSURED = "1"  # psn_insu_stas: insured, contributions normal

Text = Annotated[str, msgspec.Meta(max_length=600)]


class PersonQuery(msgspec.Struct, kw_only=True):
    mdtrt_cert_type: Annotated[str, msgspec.Meta(min_length=1, max_length=3)]
    mdtrt_cert_no: Text = ""
    card_sn: Annotated[str, msgspec.Meta(max_length=64)] = ""
    begntime: str | None = None
    psn_cert_type: str | None = None
    certno: Annotated[str, msgspec.Meta(max_length=50)] = ""
    psn_name: str | None = None


def masked_name(name: str) -> str:
    """``张**``: the first character (the family name, mostly) and a star for each other."""
    return name[:1] + "*" * (len(name) - 1)


def _output(summary: PersonSummary, year: int, *, by_card: bool) -> dict[str, Any]:
    base = summary.baseinfo
    return {
        "baseinfo": {
            "psn_no": base.psn_no,
            "psn_cert_type": RESIDENT_ID_CARD,
            "certno": base.certno,  # masked
            "psn_name": base.psn_name if by_card else masked_name(base.psn_name),
            "gend": base.gend,
            "naty": "",  # cardsvc does not record it
            "brdy": f"{base.birth_year:04d}",
            "age": year - base.birth_year,
        },
        "insuinfo": [
            {
                **({"balc": yuan(i.balc)} if by_card else {}),
                "insutype": i.insutype,
                "psn_type": i.psn_type,
                "psn_insu_stas": INSURED,
                "psn_insu_date": i.begndate.isoformat(),
                "paus_insu_date": "" if i.enddate is None else i.enddate.isoformat(),
                "cvlserv_flag": "0",
                "insuplc_admdvs": base.admdvs,
                "emp_name": "",
            }
            for i in summary.insuinfo
        ],
        "idetinfo": [],
    }


async def _audit(call: Call, cert_type: str, who: certs.Certified | None, outcome: str) -> None:
    """One entry per 1101 handled: who asked (the client and its operator), by which kind
    of certificate, about whom (when found) and the answer's code (``ok`` on success)."""
    data: dict[str, Any] = {**operator(call), "mdtrt_cert_type": cert_type, "outcome": outcome}
    if who is not None:
        data.update(psn_no=who.psn_no, card_no=who.card_no)
    async with db_transaction(call.pool) as conn:
        await call.services.audit.append(
            conn,
            actor=call.caller.actor,
            action="gateway.person_queried",
            object_type="person" if who is not None else "gateway_client",
            object_id=who.psn_no if who is not None else call.paasid,
            data=data,
        )


@transaction("1101")
async def person_information(call: Call, inputs: dict[str, msgspec.Raw]) -> dict[str, Any]:
    cert_type = ""
    try:
        query = node(inputs, "data", PersonQuery)
        cert_type, cert_no = query.mdtrt_cert_type, query.mdtrt_cert_no
        if not cert_no and cert_type == certs.IDENTITY_NUMBER:
            cert_no = query.certno  # some systems send the number only in certno
        who = await certs.resolve(call, cert_type, cert_no, query.card_sn, settling=False)
        today = clock.business_date(call.now)
        summary = await person_summary(call.pool, who.psn_no, today)
    except ServiceUnavailable:
        raise  # not answered: the HIS sends it again
    except CardsvcError as exc:
        await _audit(call, cert_type, None, exc.code)
        raise
    await _audit(call, cert_type, who, "ok")
    return _output(summary, today.year, by_card=who.card_no is not None)
