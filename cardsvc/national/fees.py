"""Fee lines of a 2204/2301 upload, without IO: exact units, checks, and each line's
Step-1 answer.

A line's ``pric``, ``cnt`` and ``det_item_fee_sumamt`` become integers (``units``); its
Step 1 is the policy engine's (``policy.line_result``: the amount must be price x count
rounded to the fen, else ``FEE_AMOUNT_MISMATCH``). A refund line (inpatient, negative
``cnt`` with ``init_feedetl_sn``) cancels the whole named line: it must repeat that line's
item and price with the opposite count and amount, and its answer is that line's split with
the signs turned. ``plan_upload`` decides, against the lines already stored under the same
``feedetl_sn``, what an upload stores and answers, so that the same message again (or the
same line again) changes nothing and answers the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from cardsvc.errors import BusinessRuleViolation, Conflict, InvalidRequest, NotFound
from cardsvc.national import units
from cardsvc.national.visit_models import FeeDetail, FeeResult, NewLine, VisitLine
from cardsvc.settlement import policy
from cardsvc.settlement.params import PolicyParams

# Fields of a line read into columns; the others are kept as sent (``details``).
_COLUMN_FIELDS = frozenset(
    {"feedetl_sn", "mdtrt_id", "psn_no", "chrg_bchno", "med_list_codg", "pric", "cnt",
     "det_item_fee_sumamt", "init_feedetl_sn"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PricedLine:
    """A line in exact integers, before its Step 1."""

    feedetl_sn: str
    chrg_bchno: str
    code: str
    price_e4: int
    count_e4: int  # negative: a refund line
    total: int
    init_feedetl_sn: str | None
    details: dict[str, Any]

    def as_policy_line(self) -> policy.DecimalLine:
        """The line as the engine reads it (a refund line by its magnitude)."""
        return policy.DecimalLine(
            code=self.code,
            price_e4=self.price_e4,
            count_e4=abs(self.count_e4),
            total=abs(self.total),
        )


def priced(detail: FeeDetail, sent: Mapping[str, Any], *, refunds_allowed: bool) -> PricedLine:
    """``detail`` in exact integers (``AMOUNT_INVALID``: too many decimals or out of
    range), its signs checked: a negative count is a refund, only with ``init_feedetl_sn``
    (and only where ``refunds_allowed``, i.e. 2301), with a negative amount."""
    where = f"feedetail {detail.feedetl_sn}"
    price_e4 = units.price_e4(detail.pric, f"{where}: pric")
    count_e4 = units.count_e4(detail.cnt, f"{where}: cnt")
    total = units.fen(detail.det_item_fee_sumamt, f"{where}: det_item_fee_sumamt")
    if price_e4 < 0:
        raise InvalidRequest(f"{where}: pric must not be negative", code="AMOUNT_INVALID")
    if count_e4 == 0:
        raise InvalidRequest(f"{where}: cnt must not be 0", code="AMOUNT_INVALID")
    refund = count_e4 < 0
    if refund and not refunds_allowed:
        raise InvalidRequest(
            f"{where}: a negative cnt (a refund) is for inpatient fee details (2301)",
            code="INPUT_INVALID",
        )
    if refund != (detail.init_feedetl_sn is not None):
        raise InvalidRequest(
            f"{where}: a refund line has a negative cnt and names init_feedetl_sn; "
            "any other line has neither",
            code="INPUT_INVALID",
        )
    if total > 0 if refund else total < 0:
        raise InvalidRequest(
            f"{where}: det_item_fee_sumamt must have the sign of cnt", code="AMOUNT_INVALID"
        )
    return PricedLine(
        feedetl_sn=detail.feedetl_sn,
        chrg_bchno=detail.chrg_bchno,
        code=detail.med_list_codg,
        price_e4=price_e4,
        count_e4=count_e4,
        total=total,
        init_feedetl_sn=detail.init_feedetl_sn,
        details={k: v for k, v in sent.items() if k not in _COLUMN_FIELDS},
    )


def check_message(details: Sequence[FeeDetail]) -> tuple[str, str]:
    """One upload is for one visit and person, and names each ``feedetl_sn`` once;
    returns (mdtrt_id, psn_no)."""
    first = details[0]
    for detail in details:
        if (detail.mdtrt_id, detail.psn_no) != (first.mdtrt_id, first.psn_no):
            raise InvalidRequest(
                "every feedetail of one message must name the same mdtrt_id and psn_no",
                code="INPUT_INVALID",
            )
    sns = [detail.feedetl_sn for detail in details]
    if len(set(sns)) != len(sns):
        twice = sorted({sn for sn in sns if sns.count(sn) > 1})
        raise InvalidRequest(
            f"feedetl_sn {', '.join(twice)} appears twice in the message", code="INPUT_INVALID"
        )
    return first.mdtrt_id, first.psn_no


@dataclass(slots=True)
class UploadPlan:
    """What an upload stores, which lines its refunds cancel, and its answer per line."""

    store: list[NewLine] = field(default_factory=list)
    refunded: list[str] = field(default_factory=list)
    results: list[tuple[PricedLine, policy.LineSplit]] = field(default_factory=list)


def _new_line(line: PricedLine, split: policy.LineSplit) -> NewLine:
    return NewLine(
        feedetl_sn=line.feedetl_sn,
        chrg_bchno=line.chrg_bchno,
        code=line.code,
        price_e4=line.price_e4,
        count_e4=line.count_e4,
        total=line.total,
        init_feedetl_sn=line.init_feedetl_sn,
        result=split,
        details=line.details,
    )


def _conflict(sn: str) -> Conflict:
    return Conflict(
        f"feedetl_sn {sn} was uploaded before with other content: cancel it first"
        " (2205/2302) or give the line a new feedetl_sn",
        code="FEEDETL_SN_CONFLICT",
        details={"feedetl_sn": sn},
    )


def line_not_found(feedetl_sn: str) -> NotFound:
    return NotFound(
        f"no fee line {feedetl_sn} in this visit",
        code="FEE_LINE_NOT_FOUND",
        details={"feedetl_sn": feedetl_sn},
    )


def line_settled(feedetl_sn: str) -> Conflict:
    return Conflict(
        f"fee line {feedetl_sn} is settled: cancel its settlement first",
        code="FEE_LINE_SETTLED",
        details={"feedetl_sn": feedetl_sn},
    )


def _negated(split: policy.LineSplit) -> policy.LineSplit:
    return msgspec.structs.replace(
        split,
        total=-split.total,
        over=-split.over,
        fulamt_ownpay=-split.fulamt_ownpay,
        preselfpay=-split.preselfpay,
        inscp=-split.inscp,
    )


def _refund_split(line: PricedLine, stored: Mapping[str, VisitLine]) -> policy.LineSplit:
    """The split of a refund line: the named line's, with the signs turned. The named line
    must be stored, unsettled and not cancelled, of the same item and price, and the refund
    must take back all of it."""
    sn = line.init_feedetl_sn
    where = f"feedetail {line.feedetl_sn}"
    target = stored.get(sn or "")
    if target is None or target.init_feedetl_sn is not None:
        raise line_not_found(sn or "")
    if target.setl_id is not None:
        raise line_settled(target.feedetl_sn)
    if target.status != "active":
        raise Conflict(f"{where}: line {sn} is already {target.status}", code="FEE_LINE_CLOSED")
    same = (line.code, line.price_e4, line.count_e4, line.total) == (
        target.code,
        target.price_e4,
        -target.count_e4,
        -target.total,
    )
    if not same:
        raise BusinessRuleViolation(
            f"{where}: a refund takes back the whole line {sn}: the same med_list_codg and"
            " pric, with cnt and det_item_fee_sumamt negated",
            code="REFUND_MISMATCH",
        )
    return _negated(target.result)


def plan_upload(
    params: PolicyParams,
    insutype: str,
    med_type: str,
    lines: Sequence[PricedLine],
    stored: Mapping[str, VisitLine],
    catalog: Mapping[str, policy.CatalogItem],
) -> UploadPlan:
    """The upload's plan. ``stored``: the visit's lines named by a ``feedetl_sn`` or an
    ``init_feedetl_sn`` of the upload. A line stored before with the same content (not
    cancelled) is answered as it was; with other content it is refused
    (``FEEDETL_SN_CONFLICT``); a cancelled one is replaced."""
    unknown = sorted({line.code for line in lines if line.code not in catalog})
    if unknown:
        raise policy.PolicyRefusal(
            "UNKNOWN_ITEM", f"not in the catalog: {', '.join(unknown)}", {"codes": unknown}
        )
    plan = UploadPlan()
    for line in lines:
        before = stored.get(line.feedetl_sn)
        if before is not None and before.status != "cancelled":
            if not _new_line(line, before.result).same_content(before):
                raise _conflict(line.feedetl_sn)
            plan.results.append((line, before.result))
            continue
        if line.init_feedetl_sn is not None:
            split = _refund_split(line, stored)
            plan.refunded.append(line.init_feedetl_sn)
        else:
            split = policy.line_result(
                params, insutype, med_type, line.as_policy_line(), catalog[line.code]
            )
        new = _new_line(line, split)
        plan.store.append(new)
        plan.results.append((line, split))
    if len(set(plan.refunded)) != len(plan.refunded):
        raise InvalidRequest("two refund lines name the same line", code="INPUT_INVALID")
    return plan


def _fraction(percent: int) -> Decimal:
    return (Decimal(percent) / 100).normalize()


def fee_result(mdtrt_id: str, line: PricedLine, split: policy.LineSplit) -> FeeResult:
    """A line's ``result`` row, in yuan (``selfpay_prop`` a fraction, ``pric_uplmt_amt``
    the item's price ceiling, 0 if it has none)."""
    return FeeResult(
        feedetl_sn=line.feedetl_sn,
        mdtrt_id=mdtrt_id,
        det_item_fee_sumamt=units.yuan(split.total),
        cnt=units.count(line.count_e4),
        pric=units.price_yuan(line.price_e4),
        pric_uplmt_amt=units.yuan(split.max_price or 0),
        selfpay_prop=_fraction(split.selfpay_prop),
        fulamt_ownpay_amt=units.yuan(split.fulamt_ownpay),
        overlmt_amt=units.yuan(split.over),
        preselfpay_amt=units.yuan(split.preselfpay),
        inscp_scp_amt=units.yuan(split.inscp),
        chrgitm_lv=split.chrgitm_lv,
    )
