"""Properties of the engine over random valid settlements and sequences of them.

Run under the real parameters and under a copy with small annual caps, so random
sequences reach the caps often.
"""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardsvc.settlement.params import PolicyParams
from cardsvc.settlement.policy import (
    CatalogItem,
    FeeLine,
    PolicyRefusal,
    SettlementRequest,
    Snapshot,
    Split,
    YearState,
    apply_delta,
    settle,
)
from tests.unit.settlement import (
    INJURY_CASE,
    PARAMS,
    assert_step3_identities,
    enrolled,
    hospital,
    pharmacy,
)

replace = msgspec.structs.replace

TIGHT = replace(
    PARAMS,
    employee=replace(PARAMS.employee, annual_cap=300_000),
    resident=replace(PARAMS.resident, annual_cap=200_000),
)
PARAMS_UNDER_TEST = st.sampled_from([PARAMS, TIGHT])
LEVELS = ("community", "1", "2", "3")
Branch = tuple[str, str | None]  # (insutype, med_type)
BRANCHES = [(row.insutype, row.med_type) for row in PARAMS.allowed_med_types]
SCHEMES = sorted(PARAMS.person_types)

FAST = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

amounts = st.one_of(
    st.integers(0, 5_000),
    st.integers(20_000, 3_000_000),
    st.sampled_from([100_000, 500_000, 2_000_000]),
)
# Empty, modest, or more than any settlement here can draw.
balances = st.one_of(st.just(0), amounts, st.just(100_000_000))


def up_to(limit: int) -> st.SearchStrategy[int]:
    """Anything in [0, limit], with both ends often."""
    near = st.integers(max(0, limit - 100_000), limit)
    return st.one_of(st.just(0), st.just(limit), near, st.integers(0, limit))


@st.composite
def catalogs(draw: st.DrawFn) -> dict[str, CatalogItem]:
    items = {}
    for i in range(draw(st.integers(1, 4))):
        code = f"I{i}"
        items[code] = CatalogItem(
            code=code,
            chrgitm_lv=draw(st.sampled_from(["A", "B", "C"])),
            selfpay_prop=draw(st.none() | st.integers(0, 100)),
            # Mostly no maximum price, so that in-scope amounts reach deductibles and caps.
            max_price=draw(st.sampled_from([None, None, None, 1_000, 50_000, 1_000_000])),
            work_injury=draw(st.booleans()),
        )
    return items


@st.composite
def fee_lines(draw: st.DrawFn, codes: list[str]) -> tuple[FeeLine, ...]:
    count = draw(st.integers(1, 4))
    return tuple(
        FeeLine(
            code=draw(st.sampled_from(codes)),
            unit_price=draw(amounts),
            quantity=draw(st.integers(1, 5)),
        )
        for _ in range(count)
    )


def years(params: PolicyParams, psn_type: str) -> st.SearchStrategy[YearState]:
    return st.just(YearState()) | used_years(params, psn_type)


@st.composite
def used_years(draw: st.DrawFn, params: PolicyParams, psn_type: str) -> YearState:
    """A year state a person could have reached: within every limit, no delivery yet."""
    threshold = params.employee.outpatient.segment_threshold.get(psn_type, 0)
    return YearState(
        hifp_310=draw(up_to(params.employee.annual_cap)),
        seg_310=draw(up_to(threshold)),
        inpatient_310=draw(st.integers(0, 3)),
        hifp_390=draw(up_to(params.resident.annual_cap)),
        outpatient_fund_390=draw(up_to(params.resident.outpatient.annual_fund_limit)),
        prenatal_510=draw(up_to(params.maternity.prenatal_annual_limit)),
        deliveries_510=0,
    )


@st.composite
def settlements(
    draw: st.DrawFn,
    params: PolicyParams,
    branch: Branch,
    psn_type: str,
    year: YearState,
    balance: int,
) -> tuple[Snapshot, SettlementRequest]:
    """An eligible settlement in ``branch`` (a med_type of None: any of the scheme's)."""
    insutype, med_type = branch
    rows = [r for r in params.allowed_med_types if r.insutype == insutype]
    row = draw(st.sampled_from([r for r in rows if med_type in (None, r.med_type)]))
    rating = draw(st.sampled_from(["A", "B", "C"]))
    if row.facility_type == "pharmacy":
        facility = pharmacy(credit_rating=rating)
    else:
        facility = hospital(draw(st.sampled_from(LEVELS)), credit_rating=rating)
    catalog = draw(catalogs())
    snap = Snapshot(
        psn_no=INJURY_CASE.psn_no,
        psn_type=psn_type,
        card_status="active",
        settle_date=dt.date(2026, 6, 1),
        balance=balance,
        year=year,
        enrolments=enrolled(*params.person_types),
        facility=facility,
        catalog=catalog,
        injury_case=INJURY_CASE,
    )
    req = SettlementRequest(
        insutype=row.insutype,
        med_type=row.med_type,
        acct_used_flag=draw(st.booleans()),
        injury_case_id=INJURY_CASE.case_id,
        delivery_type=draw(st.sampled_from(["normal", "cesarean"])),
        lines=draw(fee_lines(sorted(catalog))),
    )
    return snap, req


@st.composite
def single_settlements(
    draw: st.DrawFn, branch: Branch
) -> tuple[PolicyParams, Snapshot, SettlementRequest]:
    params = draw(PARAMS_UNDER_TEST)
    psn_type = draw(st.sampled_from(sorted(params.person_types[branch[0]])))
    year = draw(years(params, psn_type))
    snap, req = draw(settlements(params, branch, psn_type, year, draw(balances)))
    return params, snap, req


def assert_nothing_negative(split: Split) -> None:
    for name in Split.__struct_fields__:
        value = getattr(split, name)
        if isinstance(value, int) and not isinstance(value, bool):
            assert value >= 0, name
    for line in split.lines:
        assert min(line.total, line.over, line.fulamt_ownpay, line.preselfpay, line.inscp) >= 0
    assert all(p.fund_payamt > 0 for p in split.setldetail)  # only non-zero funds listed
    assert min(msgspec.structs.astuple(split.year_delta)) >= 0


def assert_pooled_fund_split(split: Split, insutype: str, med_type: str) -> None:
    """How hifp_pay, pool_prop_selfpay and act_pay_dedc share in-scope, branch by branch."""
    shared = split.hifp_pay + split.pool_prop_selfpay + split.act_pay_dedc
    if (insutype, med_type) in {("310", "21"), ("390", "21"), ("390", "11")}:
        assert shared == split.inscp_scp_amt
    elif (insutype, med_type) == ("310", "11"):
        # The account's first draw a1 = min(bal, S) comes out of in-scope before the segment.
        first_draw = min(split.acct_pay, split.inscp_scp_amt)
        assert shared + first_draw == split.inscp_scp_amt
    else:  # 310 41, 410, 510: no pooled fund, no deductible
        assert shared == 0


def assert_within_limits(params: PolicyParams, psn_type: str, year: YearState) -> None:
    assert year.seg_310 <= params.employee.outpatient.segment_threshold.get(psn_type, 0)
    assert year.hifp_310 <= params.employee.annual_cap
    assert year.hifp_390 <= params.resident.annual_cap
    assert year.outpatient_fund_390 <= params.resident.outpatient.annual_fund_limit
    assert year.prenatal_510 <= params.maternity.prenatal_annual_limit
    assert year.deliveries_510 <= params.maternity.deliveries_per_year


def expected_year_delta(split: Split, insutype: str, med_type: str) -> YearState:
    """What the policy's year-to-date totals count for each branch."""
    fund = split.fund_pay_sumamt
    return {
        ("310", "21"): YearState(hifp_310=split.hifp_pay, inpatient_310=1),
        ("310", "11"): YearState(hifp_310=split.hifp_pay, seg_310=split.act_pay_dedc),
        ("390", "21"): YearState(hifp_390=split.hifp_pay),
        ("390", "11"): YearState(hifp_390=split.hifp_pay, outpatient_fund_390=split.hifp_pay),
        ("510", "51"): YearState(prenatal_510=fund),
        ("510", "52"): YearState(deliveries_510=1),
    }.get((insutype, med_type), YearState())


@pytest.mark.parametrize("branch", BRANCHES, ids=["/".join(b) for b in BRANCHES])
@FAST
@given(data=st.data())
def test_a_settlement_keeps_every_identity(branch: tuple[str, str], data: st.DataObject) -> None:
    params, snap, req = data.draw(single_settlements(branch))
    split = settle(params, snap, req)
    assert_step3_identities(split, snap.balance)
    assert_nothing_negative(split)
    assert split.acct_pay <= snap.balance
    # The account pays only in-scope and pre-self-pay, never own-pay or over-limit ...
    assert split.acct_pay + split.fund_pay_sumamt <= split.inscp_scp_amt + split.preselfpay_amt
    # ... and only for 310 when the person asks for it.
    if req.insutype != "310" or not req.acct_used_flag:
        assert split.acct_pay == 0
    assert split.fund_pay_sumamt <= split.inscp_scp_amt
    assert_pooled_fund_split(split, req.insutype, req.med_type)
    assert split.year_delta == expected_year_delta(split, req.insutype, req.med_type)
    assert_within_limits(params, snap.psn_type, apply_delta(snap.year, split.year_delta))
    assert split.review_required == (snap.facility.credit_rating == "C")


@pytest.mark.parametrize("insutype", SCHEMES)
@FAST
@given(data=st.data(), params=PARAMS_UNDER_TEST, balance=balances)
def test_a_year_of_settlements_stays_within_limits_and_reverses_exactly(
    insutype: str, data: st.DataObject, params: PolicyParams, balance: int
) -> None:
    psn_type = data.draw(st.sampled_from(sorted(params.person_types[insutype])))
    start_year = data.draw(years(params, psn_type))
    year, left = start_year, balance
    taken: list[Split] = []
    for _ in range(data.draw(st.integers(1, 6))):
        snap, req = data.draw(settlements(params, (insutype, None), psn_type, year, left))
        try:
            split = settle(params, snap, req)
        except PolicyRefusal as refused:  # the only refusal an eligible request can meet
            assert refused.code == "MATERNITY_LIMIT"
            assert year.deliveries_510 >= params.maternity.deliveries_per_year
            continue
        year, left = apply_delta(year, split.year_delta), split.balc
        assert left >= 0
        assert_within_limits(params, psn_type, year)
        taken.append(split)
    for split in reversed(taken):
        year, left = apply_delta(year, split.year_delta, -1), left + split.acct_pay
    assert (year, left) == (start_year, balance)
