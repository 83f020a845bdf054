"""1101 person information, from an identity number (``02``) or the card (``03``).

The identity number is answered masked, as everywhere in cardsvc, and nothing else in the
answer rebuilds it: ``brdy`` carries the birth year alone (``yyyy``) and ``age`` the age
reached in the current calendar year, which follows from that year.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from cardsvc import clock
from cardsvc.national import certs
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


def _output(summary: PersonSummary, year: int) -> dict[str, Any]:
    base = summary.baseinfo
    return {
        "baseinfo": {
            "psn_no": base.psn_no,
            "psn_cert_type": RESIDENT_ID_CARD,
            "certno": base.certno,  # masked
            "psn_name": base.psn_name,
            "gend": base.gend,
            "naty": "",  # cardsvc does not record it
            "brdy": f"{base.birth_year:04d}",
            "age": year - base.birth_year,
        },
        "insuinfo": [
            {
                "balc": yuan(i.balc),
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


@transaction("1101")
async def person_information(call: Call, inputs: dict[str, msgspec.Raw]) -> dict[str, Any]:
    query = node(inputs, "data", PersonQuery)
    cert_no = query.mdtrt_cert_no
    if not cert_no and query.mdtrt_cert_type == certs.IDENTITY_NUMBER:
        cert_no = query.certno  # some systems send the number only in certno
    who = await certs.resolve(call, query.mdtrt_cert_type, cert_no, query.card_sn, settling=False)
    today = clock.business_date(call.now)
    summary = await person_summary(call.pool, who.psn_no, today)
    return _output(summary, today.year)
