"""Input nodes and output rows of the visit transactions (2201-2205, 2401, 2301, 2302, 2402).

Field names are the interface's. The interface's nodes carry many more fields than cardsvc
uses (doctor, department, prescription details …): unknown fields are accepted and kept
with the visit or line as sent, never refused, so an existing HIS need not trim its
messages. Every field cardsvc reads is typed and bounded here; a wrong one is refused with
``INPUT_INVALID`` naming it. Money, prices and counts are ``Decimal`` (a JSON number or a
string, read exactly) and are converted by ``cardsvc.national.units``.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec

from cardsvc.clock import BUSINESS_TZ
from cardsvc.errors import InvalidRequest
from cardsvc.settlement.policy import LineSplit
from cardsvc.types import Insutype, PsnNo

# Free text of the interface: no control characters, bounded.
Text30 = Annotated[str, msgspec.Meta(max_length=30, pattern=r"^[^\x00-\x1f]*$")]
Text50 = Annotated[str, msgspec.Meta(max_length=50, pattern=r"^[^\x00-\x1f]*$")]
Text100 = Annotated[str, msgspec.Meta(max_length=100, pattern=r"^[^\x00-\x1f]*$")]
Text500 = Annotated[str, msgspec.Meta(max_length=500, pattern=r"^[^\x00-\x1f]*$")]
# Identifiers chosen by the facility (mdtrt_id of a pharmacy visit, feedetl_sn, batches).
Ident30 = Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,30}$")]
MedListCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,50}$")]
MedType = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{2}$")]
CertType = Literal["01", "02", "03"]
CertNo = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
# yyyy-MM-dd HH:mm:ss (Asia/Shanghai); a bare date is read as its midnight.
TimeText = Annotated[
    str, msgspec.Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}( [0-9]{2}:[0-9]{2}:[0-9]{2})?$")
]
# exp_content: a JSON text or an object.
ExpContentField = str | dict[str, Any] | None

MAX_LINES = 500  # fee lines per message
# Dates a visit may carry: nothing before the scheme's records, nothing far ahead.
EARLIEST = dt.date(2000, 1, 1)
LATEST_AHEAD = dt.timedelta(days=1)


class Node(msgspec.Struct, kw_only=True):
    """Base of the input nodes: unknown fields are accepted (see the module docstring)."""


class RegisterData(Node):
    """2201 ``data``."""

    psn_no: PsnNo
    insutype: Insutype
    begntime: TimeText
    mdtrt_cert_type: CertType
    mdtrt_cert_no: CertNo
    card_sn: Annotated[str, msgspec.Meta(max_length=64)] = ""
    ipt_otp_no: Text30 = ""
    atddr_no: Text30 = ""
    dr_name: Text50 = ""
    dept_code: Text30 = ""
    dept_name: Text100 = ""
    caty: Text30 = ""
    med_type: MedType | None = None  # not in the interface's 2201; accepted if sent
    exp_content: ExpContentField = None


class CancelRegistrationData(Node):
    """2202 ``data``."""

    psn_no: PsnNo
    mdtrt_id: Ident30
    ipt_otp_no: Text30 = ""


class VisitInfo(Node):
    """2203 ``mdtrtinfo``."""

    mdtrt_id: Ident30
    psn_no: PsnNo
    med_type: MedType
    begntime: TimeText | None = None
    main_cond_dscr: Text500 = ""
    dise_codg: Text30 = ""
    dise_name: Text100 = ""
    birctrl_type: Text30 = ""
    matn_type: Text30 = ""
    exp_content: ExpContentField = None


class Diagnosis(Node):
    """One ``diseinfo`` row, kept as sent (its own fields bounded as text)."""

    diag_type: Text30 = ""
    diag_srt_no: int | str = ""
    diag_code: Text30 = ""
    diag_name: Text100 = ""


Diagnoses = Annotated[list[Diagnosis], msgspec.Meta(max_length=100)]


class FeeDetail(Node):
    """One 2204/2301 ``feedetail`` row."""

    feedetl_sn: Ident30
    mdtrt_id: Ident30
    psn_no: PsnNo
    med_list_codg: MedListCode
    det_item_fee_sumamt: Decimal
    cnt: Decimal
    pric: Decimal
    chrg_bchno: Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{0,30}$")] = ""
    init_feedetl_sn: Ident30 | None = None
    medins_list_codg: Text50 = ""
    rxno: Text30 = ""
    rx_circ_flag: Text30 = ""
    fee_ocur_time: TimeText | None = None
    med_type: MedType | None = None
    # Not in the interface's 2204: names the scheme of a pharmacy visit this 2204 opens.
    insutype: Insutype | None = None
    exp_content: ExpContentField = None


FeeDetails = Annotated[list[FeeDetail], msgspec.Meta(min_length=1, max_length=MAX_LINES)]


class CancelFeesData(Node):
    """2205 ``data``."""

    mdtrt_id: Ident30
    psn_no: PsnNo
    chrg_bchno: Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,30}$")]


class CancelInpatientFeesData(Node):
    """2302 ``data`` (``feedetl_sn`` ``"0000"``: every unsettled line)."""

    mdtrt_id: Ident30
    psn_no: PsnNo
    feedetl_sn: Ident30


class AdmissionInfo(Node):
    """2401 ``mdtrtinfo``."""

    psn_no: PsnNo
    insutype: Insutype
    begntime: TimeText
    mdtrt_cert_type: CertType
    mdtrt_cert_no: CertNo
    med_type: MedType
    card_sn: Annotated[str, msgspec.Meta(max_length=64)] = ""
    ipt_no: Text30 = ""
    medrcdno: Text30 = ""
    atddr_no: Text30 = ""
    chfpdr_name: Text50 = ""
    adm_diag_dscr: Text500 = ""
    adm_dept_codg: Text30 = ""
    adm_dept_name: Text100 = ""
    adm_bed: Text30 = ""
    dscg_maindiag_code: Text30 = ""
    dscg_maindiag_name: Text100 = ""
    main_cond_dscr: Text500 = ""
    dise_codg: Text30 = ""
    dise_name: Text100 = ""
    exp_content: ExpContentField = None


class DischargeInfo(Node):
    """2402 ``dscginfo``."""

    mdtrt_id: Ident30
    psn_no: PsnNo
    endtime: TimeText
    insutype: Insutype | None = None
    dscg_way: Text30 = ""
    dscg_dept_codg: Text30 = ""
    dscg_dept_name: Text100 = ""
    dscg_maindiag_code: Text30 = ""
    dscg_maindiag_name: Text100 = ""


class ExpContent(msgspec.Struct, kw_only=True):
    """What cardsvc reads of ``exp_content`` (other keys are ignored)."""

    injury_case_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9]{1,32}$")] | None = None
    delivery_type: Literal["normal", "cesarean"] | None = None


_exp_decoder = msgspec.json.Decoder(ExpContent)
_exp_node = msgspec.json.Decoder(ExpContentField)


def exp_content_node(raw: msgspec.Raw) -> ExpContentField:
    """An ``exp_content`` input node (a JSON text or an object)."""
    try:
        return _exp_node.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidRequest(f"input.exp_content: {exc}", code="INPUT_INVALID") from None


def exp_content(value: ExpContentField, where: str) -> ExpContent:
    """``exp_content`` read from a JSON text or an object (None or ``""``: empty)."""
    if value is None or value == "":
        return ExpContent()
    try:
        if isinstance(value, str):
            return _exp_decoder.decode(value)
        return msgspec.convert(value, ExpContent)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidRequest(f"{where}.exp_content: {exc}", code="INPUT_INVALID") from None


def parse_time(text: str, field: str, now: dt.datetime) -> dt.datetime:
    """``yyyy-MM-dd HH:mm:ss`` in Asia/Shanghai (or a bare date, its midnight), refused if
    not a real time or outside [2000-01-01, tomorrow]."""
    try:
        naive = (
            dt.datetime.strptime(text, "%Y-%m-%d")
            if len(text) == 10
            else dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
        )
    except ValueError:
        raise InvalidRequest(f"{field} {text!r} is not a real time", code="INPUT_INVALID") from None
    at = naive.replace(tzinfo=BUSINESS_TZ)
    latest = now.astimezone(BUSINESS_TZ).date() + LATEST_AHEAD
    if not EARLIEST <= at.date() <= latest:
        raise InvalidRequest(f"{field} {text} is out of range", code="INPUT_INVALID")
    return at


def format_time(at: dt.datetime) -> str:
    return at.astimezone(BUSINESS_TZ).strftime("%Y-%m-%d %H:%M:%S")


_as_sent = msgspec.json.Decoder(dict[str, Any], float_hook=Decimal)
_rows_as_sent = msgspec.json.Decoder(list[dict[str, Any]], float_hook=Decimal)
# The certificate number holds a card token (a bearer secret) or an identity number:
# neither is stored with the visit.
_NOT_KEPT = ("mdtrt_cert_no", "card_sn", "certno")


def _storable(value: Any, where: str) -> None:
    """Kept text holds no NUL character (PostgreSQL cannot store one)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidRequest(f"{where} holds a NUL character", code="INPUT_INVALID")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key, where)
            _storable(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _storable(item, where)


def as_sent(raw: msgspec.Raw, where: str) -> dict[str, Any]:
    """A node (already decoded and checked as its struct) as sent, every field, known or
    not (numbers exact), minus the certificate: what is kept with the visit."""
    sent = _as_sent.decode(raw)
    for name in _NOT_KEPT:
        sent.pop(name, None)
    _storable(sent, where)
    return sent


def rows_as_sent(raw: msgspec.Raw, where: str) -> list[dict[str, Any]]:
    """An array node (already checked) as sent, row by row."""
    rows = _rows_as_sent.decode(raw)
    _storable(rows, where)
    return rows


# --- output ----------------------------------------------------------------------------


class RegisterOut(msgspec.Struct, kw_only=True):
    """2201 ``data``."""

    mdtrt_id: str
    psn_no: str
    ipt_otp_no: str


class AdmissionOut(msgspec.Struct, kw_only=True):
    """2401 ``result``."""

    mdtrt_id: str


class FeeResult(msgspec.Struct, kw_only=True):
    """One 2204/2301 ``result`` row: the line's Step-1 split (yuan; ``selfpay_prop`` a
    fraction)."""

    feedetl_sn: str
    mdtrt_id: str
    det_item_fee_sumamt: Decimal
    cnt: Decimal
    pric: Decimal
    pric_uplmt_amt: Decimal
    selfpay_prop: Decimal
    fulamt_ownpay_amt: Decimal
    overlmt_amt: Decimal
    preselfpay_amt: Decimal
    inscp_scp_amt: Decimal
    chrgitm_lv: str


# --- stored visits and lines (cardsvc.national.visits reads and writes them) ----------

VisitKind = Literal["outpatient", "inpatient", "pharmacy"]
VisitStatus = Literal["open", "cancelled", "discharged"]
LineStatus = Literal["active", "cancelled", "refunded", "refund"]


class Visit(msgspec.Struct, frozen=True, kw_only=True):
    fixmedins_code: str
    mdtrt_id: str
    psn_no: str
    insutype: str
    med_type: str
    kind: VisitKind
    status: VisitStatus
    card_no: str | None
    ipt_otp_no: str
    injury_case_id: str | None
    delivery_type: Literal["normal", "cesarean"] | None
    begntime: dt.datetime
    endtime: dt.datetime | None
    created_msgid: str
    closed_msgid: str | None


class VisitLine(msgspec.Struct, frozen=True, kw_only=True):
    feedetl_sn: str
    chrg_bchno: str
    code: str  # med_list_codg, the catalog code
    price_e4: int  # 10^-4 fen
    count_e4: int  # 10^-4 units; negative for a refund line
    total: int  # fen; negative for a refund line
    setl_id: str | None
    status: LineStatus
    init_feedetl_sn: str | None
    created_msgid: str
    result: LineSplit


class NewLine(msgspec.Struct, frozen=True, kw_only=True):
    """A line to store (its Step-1 result already computed)."""

    feedetl_sn: str
    chrg_bchno: str
    code: str
    price_e4: int
    count_e4: int
    total: int
    init_feedetl_sn: str | None
    result: LineSplit
    details: dict[str, Any]

    def same_content(self, line: VisitLine) -> bool:
        """Whether ``line`` (stored) is this line: what a re-upload must not change."""
        return (
            self.chrg_bchno,
            self.code,
            self.price_e4,
            self.count_e4,
            self.total,
            self.init_feedetl_sn,
        ) == (
            line.chrg_bchno,
            line.code,
            line.price_e4,
            line.count_e4,
            line.total,
            line.init_feedetl_sn,
        )
