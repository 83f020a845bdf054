"""The gateway settlement's pure parts: the order checked against the visit, the engine's
request from the visit's lines, the answer's units; and the native API's stored lines and
request hash, unchanged by the settlement job's generalisation."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import msgspec
import pytest

from cardsvc.errors import CardsvcError
from cardsvc.national import visits
from cardsvc.national.certs import Certified
from cardsvc.national.settle import (
    KEY_PREFIX,
    Order,
    check_visit,
    engine_request,
    request_digest,
    stay_key,
)
from cardsvc.national.settle_output import NO_SCHEME, setldetail, setlinfo
from cardsvc.settlement import policy
from cardsvc.settlement.models import MAX_SETTLEMENT_LINES, FundPayment, SetlInfo, SettleRequest
from cardsvc.settlement.plan import policy_request, request_hash
from cardsvc.settlement.snapshot import StayKey
from cardsvc.settlement.store import lines_column

NOW = dt.datetime(2026, 6, 1, 2, 30, tzinfo=dt.UTC)


def _visit(**changes: object) -> visits.Visit:
    fields: dict[str, object] = {
        "fixmedins_code": "H1",
        "mdtrt_id": "M1",
        "psn_no": "P1",
        "insutype": "310",
        "med_type": "11",
        "kind": "outpatient",
        "status": "open",
        "card_no": "C00000001",
        "ipt_otp_no": "",
        "injury_case_id": None,
        "delivery_type": None,
        "begntime": NOW,
        "endtime": None,
        "created_msgid": "m0",
        "closed_msgid": None,
    }
    fields.update(changes)
    return visits.Visit(**fields)  # type: ignore[arg-type]


def _line(sn: str, code: str, price_e4: int, count_e4: int, total: int) -> visits.VisitLine:
    result = policy.LineSplit(
        code=code, chrgitm_lv="A", total=total, over=0, fulamt_ownpay=0, preselfpay=0, inscp=total
    )
    return visits.VisitLine(
        feedetl_sn=sn,
        chrg_bchno="B1",
        code=code,
        price_e4=price_e4,
        count_e4=count_e4,
        total=total,
        setl_id=None,
        status="active",
        init_feedetl_sn=None,
        created_msgid="m1",
        result=result,
    )


def _order(**changes: object) -> Order:
    fields: dict[str, object] = {
        "psn_no": "P1",
        "mdtrt_id": "M1",
        "insutype": "310",
        "med_type": "11",
        "medfee_sumamt": 3750,
        "chrg_bchno": None,
        "acct_used_flag": True,
        "inpatient": False,
    }
    fields.update(changes)
    return Order(**fields)  # type: ignore[arg-type]


CERT = Certified(psn_no="P1", card_no="C00000001", claims=None, card_token=None)
LINES = [_line("1", "A-AMOX", 12_500_000, 20_000, 2500), _line("2", "C-VIT", 2_500_000, 5000, 1250)]


def test_engine_request_takes_the_lines_exactly() -> None:
    request = engine_request(_visit(), _order(), LINES)
    assert request.lines == (
        policy.DecimalLine(code="A-AMOX", price_e4=12_500_000, count_e4=20_000, total=2500),
        policy.DecimalLine(code="C-VIT", price_e4=2_500_000, count_e4=5000, total=1250),
    )
    assert (request.insutype, request.med_type, request.acct_used_flag) == ("310", "11", True)


@pytest.mark.parametrize(
    ("order", "lines", "code"),
    [
        (_order(medfee_sumamt=3751), LINES, "FEE_SUM_MISMATCH"),
        (_order(medfee_sumamt=0), [], "NO_UNSETTLED_LINES"),
    ],
)
def test_engine_request_refusals(order: Order, lines: list[visits.VisitLine], code: str) -> None:
    with pytest.raises(CardsvcError) as caught:
        engine_request(_visit(), order, lines)
    assert caught.value.code == code


def test_a_settlement_takes_at_most_as_many_lines_as_the_native_api() -> None:
    """Like ``SettleRequest.feedetail``: 500 lines settle, 501 are TOO_MANY_LINES (before
    their sum is even looked at), saying to settle by charge batch."""
    line = _line("1", "C-VIT", 10_000, 10_000, 1)
    most = [msgspec.structs.replace(line, feedetl_sn=str(n)) for n in range(MAX_SETTLEMENT_LINES)]
    request = engine_request(_visit(), _order(medfee_sumamt=len(most)), most)
    assert len(request.lines) == MAX_SETTLEMENT_LINES
    with pytest.raises(CardsvcError) as caught:
        engine_request(_visit(), _order(medfee_sumamt=0), [*most, line])
    assert caught.value.code == "TOO_MANY_LINES"
    assert "chrg_bchno" in caught.value.message
    # The native request's bound is the same constant.
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(
            {
                "card_token": "t",
                "insutype": "310",
                "med_type": "11",
                "mdtrt_id": "M1",
                "feedetail": [{"code": "C-VIT", "unit_price": 1, "quantity": 1}]
                * (MAX_SETTLEMENT_LINES + 1),
            },
            SettleRequest,
        )


def test_a_stays_settlements_name_their_stay() -> None:
    """2303/2304 settle a part of the stay (its earlier gateway settlements count); an
    outpatient visit's settlements are each a settlement of their own."""
    assert stay_key(_order(inpatient=True, med_type=None)) == StayKey("M1", KEY_PREFIX)
    assert stay_key(_order()) is None


@pytest.mark.parametrize(
    ("visit", "order", "code"),
    [
        (_visit(psn_no="P2"), _order(), "VISIT_PERSON_MISMATCH"),
        (_visit(), _order(psn_no="P2"), "CERT_PERSON_MISMATCH"),
        (_visit(insutype="390"), _order(), "VISIT_MISMATCH"),
        (_visit(med_type="41"), _order(), "VISIT_MISMATCH"),
        (_visit(status="cancelled"), _order(), "VISIT_CLOSED"),
        (_visit(kind="inpatient", med_type="21"), _order(med_type="21"), "VISIT_KIND_MISMATCH"),
        (_visit(), _order(inpatient=True, med_type=None), "VISIT_KIND_MISMATCH"),
        (
            _visit(kind="inpatient", med_type="21"),
            _order(inpatient=True, med_type=None),
            "VISIT_NOT_DISCHARGED",
        ),
        (
            _visit(kind="inpatient", med_type="21", status="discharged"),
            _order(inpatient=True, med_type=None, mid_setl_flag=True),
            "VISIT_DISCHARGED",
        ),
    ],
)
def test_check_visit_refusals(visit: visits.Visit, order: Order, code: str) -> None:
    with pytest.raises(CardsvcError) as caught:
        check_visit(visit, order, CERT)
    assert caught.value.code == code


def test_check_visit_accepts_the_visits_own_settlements() -> None:
    check_visit(_visit(), _order(), CERT)
    check_visit(_visit(kind="pharmacy", med_type="41"), _order(med_type="41"), CERT)
    stay = _visit(kind="inpatient", med_type="21")
    check_visit(stay, _order(inpatient=True, med_type=None, mid_setl_flag=True), CERT)
    discharged = _visit(kind="inpatient", med_type="21", status="discharged")
    check_visit(discharged, _order(inpatient=True, med_type=None), CERT)


def test_digest_names_the_lines() -> None:
    request = engine_request(_visit(), _order(), LINES)
    one = request_digest("P1", "M1", ("1", "2"), request)
    assert one == request_digest("P1", "M1", ("1", "2"), request)
    assert one != request_digest("P1", "M1", ("1", "3"), request)
    assert one != request_digest("P2", "M1", ("1", "2"), request)


# The native API's request hash and stored lines, as computed before the gateway existed
# (main at "National gateway: one module that loads every transaction module").
NATIVE = msgspec.json.encode(
    {
        "card_token": "tok",
        "insutype": "310",
        "med_type": "11",
        "mdtrt_id": "MD1",
        "feedetail": [
            {"code": "A-AMOX", "unit_price": 1250, "quantity": 2},
            {"code": "B-CEF", "unit_price": 2500, "quantity": 3},
        ],
        "acct_used_flag": False,
    }
)
NATIVE_HASH = "6fb9a19227e413da1964d8415756888fcbe1a7eaa915a99ef8d46566c77a585e"
NATIVE_LINES = (
    b'[{"line_no":1,"code":"A-AMOX","chrgitm_lv":"A","unit_price":1250,"quantity":2,'
    b'"total":2500,"overlmt_selfpay":0,"fulamt_ownpay_amt":0,"preselfpay_amt":0,'
    b'"inscp_scp_amt":2500},{"line_no":2,"code":"B-CEF","chrgitm_lv":"B","unit_price":2500,'
    b'"quantity":3,"total":7500,"overlmt_selfpay":1500,"fulamt_ownpay_amt":0,'
    b'"preselfpay_amt":600,"inscp_scp_amt":5400}]'
)
SPLIT_LINES = (
    policy.LineSplit(
        code="A-AMOX", chrgitm_lv="A", total=2500, over=0, fulamt_ownpay=0, preselfpay=0, inscp=2500
    ),
    policy.LineSplit(
        code="B-CEF",
        chrgitm_lv="B",
        total=7500,
        over=1500,
        fulamt_ownpay=0,
        preselfpay=600,
        inscp=5400,
    ),
)


def _split(lines: tuple[policy.LineSplit, ...]) -> policy.Split:
    zero = dict.fromkeys(policy.STEP3_AMOUNTS, 0)
    return policy.Split(
        policy_version="t",
        **zero,
        setldetail=(),
        review_required=False,
        lines=lines,
        year_delta=policy.YearState(),
    )


def test_native_hash_and_lines_are_unchanged() -> None:
    req = msgspec.json.decode(NATIVE, type=SettleRequest)
    assert request_hash(req, "P0001").hex() == NATIVE_HASH
    column = lines_column(_split(SPLIT_LINES), policy_request(req).lines)
    assert msgspec.json.encode(column) == NATIVE_LINES


def test_gateway_lines_keep_their_feedetl_sn() -> None:
    request = engine_request(
        _visit(),
        _order(medfee_sumamt=10000),
        [
            _line("7", "A-AMOX", 12_500_000, 20_000, 2500),
            _line("8", "B-CEF", 25_000_000, 30_000, 7500),
        ],
    )
    column = lines_column(_split(SPLIT_LINES), request.lines, ("7", "8"))
    assert [(c["feedetl_sn"], c["price_e4"], c["count_e4"]) for c in column] == [
        ("7", 12_500_000, 20_000),
        ("8", 25_000_000, 30_000),
    ]
    assert "unit_price" not in column[0]


def test_setlinfo_in_yuan_with_the_schemes_cardsvc_lacks_at_zero() -> None:
    info = SetlInfo(
        setl_id="S1",
        setl_time=NOW,
        psn_no="P1",
        card_no="C00000001",
        fixmedins_code="H1",
        insutype="310",
        med_type="11",
        mdtrt_id="M1",
        policy_version="t",
        medfee_sumamt=10001,
        fulamt_ownpay_amt=1,
        overlmt_selfpay=0,
        preselfpay_amt=0,
        inscp_scp_amt=10000,
        act_pay_dedc=0,
        hifp_pay=7500,
        pool_prop_selfpay=2500,
        acct_pay=2501,
        fund_pay_sumamt=7500,
        psn_part_amt=2501,
        psn_cash_pay=0,
        balc=99,
        setldetail=[FundPayment(fund_pay_type="310100", fund_payamt=7500)],
        review_required=True,
        status="settled",
    )
    out = setlinfo(
        info, psn_type="in_service", medins_setl_id="m9", mdtrt_cert_type="03", clr_optins="440300"
    )
    assert out["medfee_sumamt"] == Decimal("100.01")
    assert out["balc"] == Decimal("0.99")
    assert out["setl_time"] == "2026-06-01 10:30:00"  # Asia/Shanghai
    assert (out["setl_id"], out["medins_setl_id"]) == ("S1", "m9")
    assert all(out[name] == 0 for name in NO_SCHEME)
    [fund] = setldetail(info)
    assert fund["fund_payamt"] == Decimal("75.00")
    assert fund["inscp_scp_amt"] == Decimal("100.00")
    assert fund["fund_pay_type_name"] == "职工基本医疗保险统筹基金"
    assert fund["setl_proc_info"]  # held for review, said so
