"""A stay settled in parts through the gateway (2304 ``mid_setl_flag`` "1", then the final
2304), and the line limit of a gateway settlement, end to end on real PostgreSQL and
hsm_stub.

The deductible is per admission: a stay settled in two parts costs the person (and the
fund) exactly what one settlement of the same lines costs, to the fen. A settlement takes
at most as many lines as the native API's (500): a visit with more is settled by charge
batch, a stay too (its parts still take the deductible once)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from cardsvc.settlement.models import MAX_SETTLEMENT_LINES
from tests.integration.test_gateway_settle import (
    Holder,
    Site,
    _seq,
    fen,
    new_token,
    outpatient_visit,
    settle_data,
    site,
    upload,
)
from tests.support.api import authenticate_card, credit, issue_card

__all__ = ["site"]  # the module's fixture, shared

pytestmark = pytest.mark.asyncio(loop_scope="session")

# The figures that add up over the parts of a stay (balc is the balance after each).
ADDITIVE = (
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_selfpay",
    "preselfpay_amt",
    "inscp_scp_amt",
    "act_pay_dedc",
    "hifp_pay",
    "pool_prop_selfpay",
    "acct_pay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "psn_cash_pay",
)

# Day 1 of the stay (A-AMOX ¥1,000.00 × 3), then day 2 (B-CEF over its price ceiling, C-VIT
# full own-pay, B-STENT 20 % pre-self-pay, an odd A-AMOX to make the rounding count).
DAY1 = [("A-AMOX", "1000.00", "3", "3000.00")]
DAY2 = [
    ("B-CEF", "25.00", "4", "100.00"),
    ("C-VIT", "30.00", "1", "30.00"),
    ("B-STENT", "123.45", "1", "123.45"),
    ("A-AMOX", "0.01", "7", "0.07"),
]


def _sum(fees: list[tuple[str, str, str, str]]) -> Decimal:
    return sum((Decimal(total) for *_, total in fees), Decimal(0))


async def stay_holder(
    site: Site, *, balance: int, psn_type: str = "in_service", insutype: str = "310"
) -> Holder:
    person = await site.service.person(psn_type, (insutype,))
    if balance:
        await credit(site.service, person["psn_no"], balance)
    card = await issue_card(site.counter, person["psn_no"])
    auth = await authenticate_card(site.pos, card, "transaction")
    return Holder(person["psn_no"], f"{card.card_no}|{auth['card_token']}", card)


async def admit(site: Site, h: Holder, insutype: str) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    adm = await site.his.ok(
        "2401",
        {
            "mdtrtinfo": {
                "psn_no": h.psn_no,
                "insutype": insutype,
                "begntime": now,
                "mdtrt_cert_type": "03",
                "mdtrt_cert_no": h.cert_no,
                "med_type": "21",
                "ipt_no": f"IPT{next(_seq)}",
            },
            "diseinfo": [],
        },
    )
    return str(adm["result"]["mdtrt_id"])


async def discharge(site: Site, h: Holder, mdtrt_id: str, insutype: str) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    await site.his.ok(
        "2402",
        {
            "dscginfo": {
                "mdtrt_id": mdtrt_id,
                "psn_no": h.psn_no,
                "insutype": insutype,
                "endtime": now,
            }
        },
    )


def stay_data(
    h: Holder, mdtrt_id: str, medfee: Decimal, insutype: str, *, mid: bool, **extra: Any
) -> dict[str, Any]:
    data = settle_data(h, mdtrt_id, medfee, insutype=insutype, mid_setl_flag="1" if mid else "0")
    del data["data"]["med_type"], data["data"]["chrg_bchno"]
    data["data"].update(extra)
    return data


async def settle_stay(
    site: Site, h: Holder, mdtrt_id: str, medfee: Decimal, insutype: str, *, mid: bool, **extra: Any
) -> dict[str, Any]:
    """2303 then 2304 of the stay's unsettled lines; the preview must be the settlement."""
    his = site.his
    h.cert_no = await new_token(site, h)
    pre = await his.ok("2303", stay_data(h, mdtrt_id, medfee, insutype, mid=mid, **extra))
    done = await his.ok("2304", stay_data(h, mdtrt_id, medfee, insutype, mid=mid, **extra))
    setlinfo: dict[str, Any] = done["setlinfo"]
    assert {n: pre["setlinfo"][n] for n in ADDITIVE} == {n: setlinfo[n] for n in ADDITIVE}
    return setlinfo


def assert_parts_make_one(parts: list[dict[str, Any]], one: dict[str, Any]) -> None:
    for name in ADDITIVE:
        got = sum(fen(part[name]) for part in parts)
        assert got == fen(one[name]), (name, [part[name] for part in parts], one[name])
    assert parts[-1]["balc"] == one["balc"]


@pytest.mark.parametrize(
    ("insutype", "psn_type", "balance"),
    [("310", "in_service", 150000), ("310", "retired", 0), ("390", "resident", 0)],
)
async def test_a_stay_in_two_parts_costs_what_one_settlement_costs(
    site: Site, insutype: str, psn_type: str, balance: int
):
    # The same lines for two people alike: one stay settled mid-stay and at discharge,
    # the other at discharge only.
    twice = await stay_holder(site, balance=balance, psn_type=psn_type, insutype=insutype)
    once = await stay_holder(site, balance=balance, psn_type=psn_type, insutype=insutype)
    stay_twice, stay_once = await admit(site, twice, insutype), await admit(site, once, insutype)

    await upload(site, twice, stay_twice, DAY1, infno="2301")
    mid = await settle_stay(site, twice, stay_twice, _sum(DAY1), insutype, mid=True)
    deductible = fen(mid["act_pay_dedc"])
    assert deductible > 0  # the stay's deductible (level 2), taken in its first part
    await upload(site, twice, stay_twice, DAY2, infno="2301")
    await discharge(site, twice, stay_twice, insutype)
    final = await settle_stay(site, twice, stay_twice, _sum(DAY2), insutype, mid=False)
    assert fen(final["act_pay_dedc"]) == 0  # not again, not half again

    await upload(site, once, stay_once, DAY1 + DAY2, infno="2301")
    await discharge(site, once, stay_once, insutype)
    one = await settle_stay(site, once, stay_once, _sum(DAY1 + DAY2), insutype, mid=False)
    assert fen(one["act_pay_dedc"]) == deductible

    # To the fen: the person pays, the fund and the account pay, what one settlement did.
    assert_parts_make_one([mid, final], one)


async def test_a_cancelled_part_gives_its_deductible_back_to_the_stay(site: Site):
    """2305 of the mid-stay settlement: the stay's deductible is no longer paid, so the
    next part (its lines released, settled again with the rest) takes it."""
    h = await stay_holder(site, balance=0)
    mdtrt_id = await admit(site, h, "310")
    await upload(site, h, mdtrt_id, DAY1, infno="2301")
    mid = await settle_stay(site, h, mdtrt_id, _sum(DAY1), "310", mid=True)
    await site.his.ok(
        "2305", {"data": {"mdtrt_id": mdtrt_id, "setl_id": mid["setl_id"], "psn_no": h.psn_no}}
    )
    await upload(site, h, mdtrt_id, DAY2, infno="2301")
    await discharge(site, h, mdtrt_id, "310")
    final = await settle_stay(site, h, mdtrt_id, _sum(DAY1 + DAY2), "310", mid=False)
    assert fen(final["act_pay_dedc"]) == fen(mid["act_pay_dedc"])  # the full deductible


def _fees(n: int, code: str = "C-VIT") -> list[tuple[str, str, str, str]]:
    return [(code, "0.01", "1", "0.01")] * n


async def test_a_settlement_takes_at_most_500_lines_settle_by_charge_batch(site: Site):
    his = site.his
    h = await stay_holder(site, balance=0)
    mdtrt_id = await outpatient_visit(site, h, _fees(MAX_SETTLEMENT_LINES))  # batch B1
    await upload(site, h, mdtrt_id, _fees(1), chrg_bchno="B2")
    every = Decimal(MAX_SETTLEMENT_LINES + 1) / 100
    for infno in ("2206", "2207"):
        message = await his.refused(infno, settle_data(h, mdtrt_id, every), "TOO_MANY_LINES")
        assert "chrg_bchno" in message and f"{MAX_SETTLEMENT_LINES + 1}" in message, infno
    b1 = await his.ok(
        "2207", settle_data(h, mdtrt_id, Decimal(MAX_SETTLEMENT_LINES) / 100, chrg_bchno="B1")
    )
    assert fen(b1["setlinfo"]["medfee_sumamt"]) == MAX_SETTLEMENT_LINES
    h.cert_no = await new_token(site, h)
    b2 = await his.ok("2207", settle_data(h, mdtrt_id, Decimal("0.01")))
    assert fen(b2["setlinfo"]["medfee_sumamt"]) == 1


async def test_a_stay_of_more_lines_is_settled_by_charge_batch(site: Site):
    """A stay of 501 lines: 2304 of every line is refused; by charge batch (cardsvc's
    chrg_bchno on 2303/2304) it is settled in two parts, the deductible taken once."""
    h = await stay_holder(site, balance=0)
    mdtrt_id = await admit(site, h, "310")
    await upload(site, h, mdtrt_id, DAY1, infno="2301", chrg_bchno="D1")
    await upload(site, h, mdtrt_id, _fees(MAX_SETTLEMENT_LINES, "A-AMOX"), infno="2301")
    await discharge(site, h, mdtrt_id, "310")
    every = _sum(DAY1) + Decimal(MAX_SETTLEMENT_LINES) / 100
    h.cert_no = await new_token(site, h)
    await site.his.refused(
        "2304", stay_data(h, mdtrt_id, every, "310", mid=False), "TOO_MANY_LINES"
    )
    d1 = await settle_stay(site, h, mdtrt_id, _sum(DAY1), "310", mid=False, chrg_bchno="D1")
    rest = await settle_stay(
        site, h, mdtrt_id, Decimal(MAX_SETTLEMENT_LINES) / 100, "310", mid=False
    )
    assert fen(d1["act_pay_dedc"]) == 50000  # level 2, the first admission this year
    assert fen(rest["act_pay_dedc"]) == 0
