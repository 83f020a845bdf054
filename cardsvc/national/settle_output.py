"""The national ``setlinfo`` and ``setldetail[]`` of a settlement, a pre-settlement or a
settlement's cancellation, in the interface's units (yuan as exact decimals).

cardsvc fills every field of the national 2207 ``setlinfo`` it has a figure for; the funds it
has no scheme for (``cvlserv_pay``, ``hifes_pay``, ``hifmi_pay``, ``hifob_pay``,
``maf_pay``, ``oth_pay``, ``hosp_part_amt``, ``acct_mulaid_pay``) are 0. The person's
identity fields (``psn_name``, ``certno``, ``gend``, ``naty``, ``brdy``, ``age``) are not
repeated here: 1101 answers them under the privacy rule, and a settlement's answer needs
none of them. docs/national-gateway.md lists each field.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, Final

from cardsvc import clock
from cardsvc.national.units import yuan
from cardsvc.settlement import policy
from cardsvc.settlement.models import FundPayment, SetlInfo

# The national names of the fund_pay_types the policy file pays from (``fund_pay_types``).
FUND_NAMES: Final = {
    "310100": "职工基本医疗保险统筹基金",
    "390100": "城乡居民基本医疗保险基金",
    "410100": "工伤保险基金",
    "510100": "生育保险基金",
}

# Funds cardsvc has no scheme for: always 0 in ``setlinfo``.
NO_SCHEME: Final = (
    "cvlserv_pay",
    "hifes_pay",
    "hifmi_pay",
    "hifob_pay",
    "maf_pay",
    "oth_pay",
    "hosp_part_amt",
    "acct_mulaid_pay",
)


REVIEW_PENDING: Final = "held for review by the fund's auditors (the payment stands)"


def time_text(at: dt.datetime) -> str:
    """``yyyy-MM-dd HH:mm:ss``, Asia/Shanghai."""
    return at.astimezone(clock.BUSINESS_TZ).strftime("%Y-%m-%d %H:%M:%S")


def setlinfo(
    info: SetlInfo,
    *,
    psn_type: str,
    medins_setl_id: str,
    mdtrt_cert_type: str,
    clr_optins: str,
    setl_id: str | None = None,
    setl_time: dt.datetime | None = None,
    balc: int | None = None,
) -> dict[str, Any]:
    """The ``setlinfo`` node; ``setl_id``/``setl_time``/``balc`` override the settlement's
    (a cancellation answers with its reversal's)."""
    out: dict[str, Any] = {
        "setl_id": setl_id if setl_id is not None else (info.setl_id or ""),
        "mdtrt_id": info.mdtrt_id,
        "psn_no": info.psn_no,
        "insutype": info.insutype,
        "psn_type": psn_type,
        "cvlserv_flag": "0",
        "setl_time": time_text(setl_time or info.setl_time),
        "mdtrt_cert_type": mdtrt_cert_type,
        "med_type": info.med_type,
    }
    figures = {name: getattr(info, name) for name in policy.STEP3_AMOUNTS}
    if balc is not None:
        figures["balc"] = balc
    out.update({name: yuan(amount) for name, amount in figures.items()})
    out.update({name: Decimal("0.00") for name in NO_SCHEME})
    out.update(
        {
            "medins_setl_id": medins_setl_id,
            "clr_optins": clr_optins,
            "clr_way": "1",  # by item (按项目)
            "clr_type": info.med_type,
        }
    )
    return out


def setldetail(info: SetlInfo) -> list[dict[str, Any]]:
    """One entry per fund that paid (the personal account is ``setlinfo.acct_pay``)."""
    proc = REVIEW_PENDING if info.review_required else ""
    return [_fund(info.inscp_scp_amt, fund, proc) for fund in info.setldetail]


def _fund(inscp_scp_amt: int, fund: FundPayment, proc: str) -> dict[str, Any]:
    return {
        "fund_pay_type": fund.fund_pay_type,
        "inscp_scp_amt": yuan(inscp_scp_amt),
        "crt_payb_lmt_amt": yuan(fund.fund_payamt),
        "fund_payamt": yuan(fund.fund_payamt),
        "fund_pay_type_name": FUND_NAMES.get(fund.fund_pay_type, fund.fund_pay_type),
        "setl_proc_info": proc,
    }
