"""The worked examples E1–E6 of docs/policy.md and further hand-computed cases, as one table."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params
from cardsvc.settlement.policy import (
    CatalogItem,
    PolicyRefusal,
    SettlementRequest,
    Snapshot,
    YearState,
    apply_delta,
    pct,
    settle,
)
from tests.unit.settlement import (
    INJURY_CASE,
    PARAMS,
    assert_step3_identities,
    hospital,
    pharmacy,
    request,
    snapshot,
)

Case = tuple[str, Snapshot, SettlementRequest, dict[str, Any]]

E1_LINES = (("A-AMOX", 100000, 3), ("B-CEF", 2500, 4), ("C-VIT", 3000, 1))

CASES: list[Case] = [
    (
        "E1 310 inpatient level 3, first admission",
        snapshot("310", facility=hospital("3"), balance=50000),
        request("310", "21", *E1_LINES),
        {
            "medfee_sumamt": 313000,
            "fulamt_ownpay_amt": 3000,
            "overlmt_selfpay": 2000,
            "preselfpay_amt": 800,
            "inscp_scp_amt": 307200,
            "act_pay_dedc": 80000,
            "hifp_pay": 181760,
            "pool_prop_selfpay": 45440,
            "acct_pay": 50000,
            "fund_pay_sumamt": 181760,
            "psn_part_amt": 131240,
            "psn_cash_pay": 81240,
            "balc": 0,
            "setldetail": {"310100": 181760},
            "year_delta": {"hifp_310": 181760, "inpatient_310": 1},
        },
    ),
    (
        "E2 310 retired outpatient community, segment 65000 paid",
        snapshot(
            "310",
            psn_type="retired",
            facility=hospital("community"),
            balance=3000,
            year=YearState(seg_310=65000),
        ),
        request("310", "11", ("A-AMOX", 12000, 1), ("B-CEF", 1800, 2)),
        {
            "medfee_sumamt": 15600,
            "preselfpay_amt": 360,
            "inscp_scp_amt": 15240,
            "act_pay_dedc": 5000,
            "hifp_pay": 6516,
            "pool_prop_selfpay": 724,
            "acct_pay": 3000,
            "psn_cash_pay": 6084,
            "balc": 0,
            "setldetail": {"310100": 6516},
            "year_delta": {"hifp_310": 6516, "seg_310": 5000},
            "year_after": {"seg_310": 70000, "hifp_310": 6516},
        },
    ),
    (
        "E3 310 pharmacy purchase",
        snapshot("310", facility=pharmacy(), balance=10000),
        request("310", "41", ("B-CEF", 1800, 3), ("C-VIT", 2000, 1)),
        {
            "medfee_sumamt": 7400,
            "fulamt_ownpay_amt": 2000,
            "preselfpay_amt": 540,
            "inscp_scp_amt": 4860,
            "hifp_pay": 0,
            "act_pay_dedc": 0,
            "pool_prop_selfpay": 0,
            "acct_pay": 5400,
            "psn_cash_pay": 2000,
            "balc": 4600,
            "setldetail": {},
            "year_delta": {},
        },
    ),
    (
        "E4 410 inpatient level 2, approved case",
        snapshot("410", facility=hospital("2"), injury_case=INJURY_CASE, balance=7000),
        request("410", "21", ("W-SUT", 50000, 2), ("A-AMOX", 3000, 1), injury_case_id="IC-1"),
        {
            "medfee_sumamt": 103000,
            "fulamt_ownpay_amt": 3000,
            "inscp_scp_amt": 100000,
            "hifp_pay": 0,
            "fund_pay_sumamt": 100000,
            "acct_pay": 0,
            "psn_cash_pay": 3000,
            "balc": 7000,
            "setldetail": {"410100": 100000},
            "year_delta": {},
        },
    ),
    (
        "E5 390 outpatient level 1, outpatient fund 48000 paid",
        snapshot("390", facility=hospital("1"), year=YearState(outpatient_fund_390=48000)),
        request("390", "11", ("A-AMOX", 10000, 1)),
        {
            "inscp_scp_amt": 10000,
            "hifp_pay": 2000,
            "pool_prop_selfpay": 8000,
            "psn_cash_pay": 8000,
            "setldetail": {"390100": 2000},
            "year_delta": {"hifp_390": 2000, "outpatient_fund_390": 2000},
        },
    ),
    (
        "E6 510 cesarean delivery level 3",
        snapshot("510", facility=hospital("3")),
        request(
            "510",
            "52",
            ("A-AMOX", 400000, 1),
            ("B-STENT", 200000, 1),
            ("C-VIT", 5000, 1),
            delivery_type="cesarean",
        ),
        {
            "medfee_sumamt": 605000,
            "fulamt_ownpay_amt": 5000,
            "preselfpay_amt": 0,
            "inscp_scp_amt": 600000,
            "hifp_pay": 0,
            "fund_pay_sumamt": 500000,
            "psn_cash_pay": 105000,
            "setldetail": {"510100": 500000},
            "year_delta": {"deliveries_510": 1},
        },
    ),
    (
        # D = 50000 // 2; R = 35000; pct(35000, 85) = 29750.
        "310 second admission this year: deductible halved",
        snapshot("310", facility=hospital("2"), year=YearState(inpatient_310=1)),
        request("310", "21", ("A-AMOX", 60000, 1)),
        {
            "act_pay_dedc": 25000,
            "hifp_pay": 29750,
            "pool_prop_selfpay": 5250,
            "psn_cash_pay": 30250,
            "year_delta": {"hifp_310": 29750, "inpatient_310": 1},
        },
    ),
    (
        # pct(70000, 90) = 63000 but only 10000 of the 20000000 cap is left.
        "310 inpatient reaching the annual cap",
        snapshot("310", facility=hospital("1"), balance=20000, year=YearState(hifp_310=19990000)),
        request("310", "21", ("A-AMOX", 100000, 1)),
        {
            "act_pay_dedc": 30000,
            "hifp_pay": 10000,
            "pool_prop_selfpay": 60000,
            "acct_pay": 20000,
            "psn_cash_pay": 70000,
            "balc": 0,
            "year_after": {"hifp_310": 20000000, "inpatient_310": 1},
        },
    ),
    (
        # a1 = 1000; Q = 23000; seg = 100000 - 95000 = 5000; pct(18000, 70) = 12600.
        "310 in_service outpatient level 2 crossing the segment",
        snapshot("310", facility=hospital("2"), balance=1000, year=YearState(seg_310=95000)),
        request("310", "11", ("A-AMOX", 20000, 1), ("B-STENT", 5000, 1)),
        {
            "medfee_sumamt": 25000,
            "preselfpay_amt": 1000,
            "inscp_scp_amt": 24000,
            "act_pay_dedc": 5000,
            "hifp_pay": 12600,
            "pool_prop_selfpay": 5400,
            "acct_pay": 1000,
            "psn_cash_pay": 11400,
            "balc": 0,
            "year_after": {"seg_310": 100000, "hifp_310": 12600},
        },
    ),
    (
        # a1 = S = 24000, nothing left for the segment or the fund; a2 = pre = 1000.
        "310 outpatient paid wholly by the account",
        snapshot("310", facility=hospital("2"), balance=30000),
        request("310", "11", ("A-AMOX", 20000, 1), ("B-STENT", 5000, 1)),
        {
            "act_pay_dedc": 0,
            "hifp_pay": 0,
            "pool_prop_selfpay": 0,
            "acct_pay": 25000,
            "psn_cash_pay": 0,
            "balc": 5000,
            "setldetail": {},
            "year_delta": {},
        },
    ),
    (
        "390 outpatient at level 2: accepted, fund pays nothing",
        snapshot("390", facility=hospital("2")),
        request("390", "11", ("A-AMOX", 10000, 1)),
        {
            "hifp_pay": 0,
            "pool_prop_selfpay": 10000,
            "psn_cash_pay": 10000,
            "setldetail": {},
            "year_delta": {},
        },
    ),
    (
        # S = 200000 + 2700; D = 60000; pct(142700, 60) = 85620; the account is never used.
        "390 inpatient level 3",
        snapshot("390", facility=hospital("3"), balance=5000),
        request("390", "21", ("A-AMOX", 200000, 1), ("B-CEF", 1500, 2)),
        {
            "medfee_sumamt": 203000,
            "preselfpay_amt": 300,
            "inscp_scp_amt": 202700,
            "act_pay_dedc": 60000,
            "hifp_pay": 85620,
            "pool_prop_selfpay": 57080,
            "acct_pay": 0,
            "psn_cash_pay": 117380,
            "balc": 5000,
            "setldetail": {"390100": 85620},
            "year_delta": {"hifp_390": 85620},
        },
    ),
    (
        "51 prenatal reaching the 100000 limit",
        snapshot("510", facility=hospital("2"), year=YearState(prenatal_510=90000)),
        request("510", "51", ("A-AMOX", 15000, 1)),
        {
            "fund_pay_sumamt": 10000,
            "psn_cash_pay": 5000,
            "setldetail": {"510100": 10000},
            "year_after": {"prenatal_510": 100000},
        },
    ),
    (
        "51 prenatal with the limit used up",
        snapshot("510", facility=hospital("2"), year=YearState(prenatal_510=100000)),
        request("510", "51", ("A-AMOX", 15000, 1)),
        {"fund_pay_sumamt": 0, "psn_cash_pay": 15000, "setldetail": {}, "year_delta": {}},
    ),
    (
        # ratio min(90 + 5, 95) = 95: pct(100000, 95) = 95000.
        "310 retired inpatient at community level: ratio 95",
        snapshot("310", psn_type="retired", facility=hospital("community")),
        request("310", "21", ("A-AMOX", 130000, 1)),
        {"act_pay_dedc": 30000, "hifp_pay": 95000, "pool_prop_selfpay": 5000},
    ),
    (
        # B-CEF at 3000 > max 2000: over 5000; base 10000, pre 1000, in-scope 9000 < D.
        "over-limit line: the account pays in-scope and pre, never over-limit",
        snapshot("310", facility=hospital("1"), balance=100000),
        request("310", "21", ("B-CEF", 3000, 5)),
        {
            "medfee_sumamt": 15000,
            "overlmt_selfpay": 5000,
            "preselfpay_amt": 1000,
            "inscp_scp_amt": 9000,
            "act_pay_dedc": 9000,
            "hifp_pay": 0,
            "acct_pay": 10000,
            "psn_cash_pay": 5000,
            "balc": 90000,
            "setldetail": {},
            "year_delta": {"inpatient_310": 1},
        },
    ),
    (
        # The account pays deductible, co-pay and pre-self-pay: 80000 + 45440 + 800; the
        # cash left is exactly the own-pay 3000 and the over-limit 2000.
        "E1 with a rich account",
        snapshot("310", facility=hospital("3"), balance=1000000),
        request("310", "21", *E1_LINES),
        {"acct_pay": 126240, "psn_cash_pay": 5000, "balc": 873760},
    ),
    (
        "E1 with acct_used_flag false: all the person's part in cash",
        snapshot("310", facility=hospital("3"), balance=50000),
        request("310", "21", *E1_LINES, acct_used_flag=False),
        {"hifp_pay": 181760, "acct_pay": 0, "psn_cash_pay": 131240, "balc": 50000},
    ),
    (
        "510 normal delivery under the 300000 quota",
        snapshot("510", facility=hospital("1")),
        request("510", "52", ("A-AMOX", 250000, 1), delivery_type="normal"),
        {"fund_pay_sumamt": 250000, "psn_cash_pay": 0, "setldetail": {"510100": 250000}},
    ),
    (
        "410 purchase at a pharmacy",
        snapshot("410", facility=pharmacy(), injury_case=INJURY_CASE),
        request("410", "41", ("W-SUT", 1000, 3), ("B-CEF", 1800, 1), injury_case_id="IC-1"),
        {"inscp_scp_amt": 3000, "fulamt_ownpay_amt": 1800, "fund_pay_sumamt": 3000},
    ),
]


def _check(split: Any, expected: dict[str, Any], before: YearState) -> None:
    for field, value in expected.items():
        if field == "setldetail":
            assert {p.fund_pay_type: p.fund_payamt for p in split.setldetail} == value
        elif field == "year_delta":
            assert split.year_delta == YearState(**value)
        elif field == "year_after":
            assert apply_delta(before, split.year_delta) == YearState(**value)
        else:
            assert getattr(split, field) == value, field


@pytest.mark.parametrize(("name", "snap", "req", "expected"), CASES, ids=[c[0] for c in CASES])
def test_worked_example(
    name: str, snap: Snapshot, req: SettlementRequest, expected: dict[str, Any]
) -> None:
    split = settle(PARAMS, snap, req)
    _check(split, expected, snap.year)
    assert_step3_identities(split, snap.balance)
    assert split.policy_version == CURRENT_POLICY_VERSION
    assert not split.review_required


def test_second_delivery_in_a_year_is_refused() -> None:
    _, snap, req, _ = CASES[5]
    first = settle(PARAMS, snap, req)
    after = msgspec.structs.replace(snap, year=apply_delta(snap.year, first.year_delta))
    with pytest.raises(PolicyRefusal) as refused:
        settle(PARAMS, after, req)
    assert refused.value.code == "MATERNITY_LIMIT"
    # Once the first is reversed, a delivery is accepted again.
    reversed_year = apply_delta(after.year, first.year_delta, -1)
    assert settle(PARAMS, msgspec.structs.replace(snap, year=reversed_year), req) == first


def test_inpatient_ratio_max_binds() -> None:
    inpatient = msgspec.structs.replace(PARAMS.employee.inpatient, ratio_max=93)
    params = msgspec.structs.replace(
        PARAMS, employee=msgspec.structs.replace(PARAMS.employee, inpatient=inpatient)
    )
    snap = snapshot("310", psn_type="retired", facility=hospital("community"))
    split = settle(params, snap, request("310", "21", ("A-AMOX", 130000, 1)))
    assert split.hifp_pay == 93000


def test_line_split_shows_each_line() -> None:
    _, snap, req, _ = CASES[0]
    b_cef = settle(PARAMS, snap, req).lines[1]
    assert (b_cef.code, b_cef.chrgitm_lv, b_cef.total, b_cef.over) == ("B-CEF", "B", 10000, 2000)
    assert (b_cef.fulamt_ownpay, b_cef.preselfpay, b_cef.inscp) == (0, 800, 7200)


def test_class_b_without_selfpay_prop_takes_the_default() -> None:
    catalog = {"B-X": CatalogItem(code="B-X", chrgitm_lv="B")}
    snap = snapshot("310", facility=hospital("1"), catalog=catalog)
    split = settle(PARAMS, snap, request("310", "21", ("B-X", 1005, 1)))
    assert split.preselfpay_amt == pct(1005, PARAMS.default_selfpay_prop) == 101


@pytest.mark.parametrize(
    ("amount", "percent", "expected"),
    [(0, 50, 0), (1, 50, 1), (3, 50, 2), (7240, 90, 6516), (149, 1, 1), (150, 1, 2), (5, 0, 0)],
)
def test_pct_rounds_half_up(amount: int, percent: int, expected: int) -> None:
    assert pct(amount, percent) == expected


def test_params_carry_policy_md_figures() -> None:
    employee, resident = PARAMS.employee, PARAMS.resident
    assert employee.inpatient.deductible == {"community": 30000, "1": 30000, "2": 50000, "3": 80000}
    assert employee.inpatient.ratio == {"community": 90, "1": 90, "2": 85, "3": 80}
    assert employee.outpatient.ratio == {"community": 80, "1": 75, "2": 70, "3": 65}
    assert employee.outpatient.segment_threshold == {"in_service": 100000, "retired": 70000}
    assert (employee.annual_cap, resident.annual_cap) == (20000000, 15000000)
    assert resident.inpatient.deductible == {"community": 20000, "1": 20000, "2": 40000, "3": 60000}
    assert resident.inpatient.ratio == {"community": 80, "1": 80, "2": 70, "3": 60}
    assert resident.outpatient.paying_levels == frozenset({"community", "1"})
    assert PARAMS.maternity.delivery_quota == {"normal": 300000, "cesarean": 500000}
    assert PARAMS.fund_pay_types == {
        "310": "310100",
        "390": "390100",
        "410": "410100",
        "510": "510100",
    }


def test_load_params_is_cached_and_refuses_bad_versions() -> None:
    assert load_params(CURRENT_POLICY_VERSION) is PARAMS
    with pytest.raises(ValueError, match="not a policy version"):
        load_params("../secrets")
    with pytest.raises(FileNotFoundError):
        load_params("1999.1")


def test_apply_delta_refuses_to_go_negative_or_bad_sign() -> None:
    with pytest.raises(ValueError, match="sign"):
        apply_delta(YearState(), YearState(), 2)
    with pytest.raises(ValueError, match="give back"):
        apply_delta(YearState(), YearState(hifp_310=1), -1)
