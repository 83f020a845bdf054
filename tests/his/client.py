"""A hospital information system's client for the national interface, written from the
gateway's contract alone (the envelope, the TIF headers, msgid, units, 9101/9102 files), the
way an HIS vendor writes one: it knows nothing of cardsvc's code.

    his = His(http, base_url, GatewayClient(paasid, secret, fixmedins_code), "某某医院")
    await his.sign_in()                                  # 9001 → sign_no, kept
    answer = await his.call("2201", {"data": {...}})     # Answer: status, envelope, err_code
    output = await his.ok("2204", {"feedetail": [...]})  # infcode 0, or AssertionError

Amounts go out as JSON numbers or strings of exact decimals (``Decimal``, never float) and
answers are read with every non-integer number as ``Decimal``, so a figure is compared to the
fen. Every answer's envelope is checked against the contract (``envelope_problems``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import itertools
import re
import secrets
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import msgspec

PATH = "/fsi/api/rsfComIfsService/callService"
SHANGHAI = ZoneInfo("Asia/Shanghai")
REGION = "320200"

# Decimals out as JSON numbers; answers in with every fraction exact.
_encoder = msgspec.json.Encoder(decimal_format="number")
_decoder = msgspec.json.Decoder(float_hook=Decimal)

FEN = Decimal("0.01")


# ---------------------------------------------------------------------- units
def yuan(fen: int) -> Decimal:
    """Integer fen as yuan with 2 decimals (exact)."""
    return (Decimal(fen) / 100).quantize(FEN)


def to_fen(amount: Decimal | int) -> int:
    """A yuan figure of an answer in fen; refuses anything finer than a fen."""
    value = Decimal(amount) * 100
    assert value == value.to_integral_value(), f"{amount} is not a whole number of fen"
    return int(value)


def line_total(pric: Decimal, cnt: Decimal) -> Decimal:
    """``det_item_fee_sumamt`` of a line: pric × cnt rounded half up to the fen."""
    return (pric * cnt).quantize(FEN, rounding=ROUND_HALF_UP)


# ---------------------------------------------------------------------- TIF headers
def tif_signature(timestamp: str, secret: str, nonce: str) -> str:
    """Lowercase hex SHA-256 of timestamp ‖ secret ‖ nonce ‖ timestamp (ASCII)."""
    text = timestamp + secret + nonce + timestamp
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def tif_headers(
    paasid: str, secret: str, *, timestamp: int | None = None, nonce: str | None = None
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    return {
        "x-tif-paasid": paasid,
        "x-tif-timestamp": ts,
        "x-tif-nonce": nonce,
        "x-tif-signature": tif_signature(ts, secret, nonce),
    }


# ---------------------------------------------------------------------- envelopes
def shanghai_now() -> dt.datetime:
    return dt.datetime.now(SHANGHAI)


def business_date() -> str:
    return shanghai_now().strftime("%Y-%m-%d")


def local_time(at: dt.datetime | None = None) -> str:
    return (at or shanghai_now()).strftime("%Y-%m-%d %H:%M:%S")


_ERR = re.compile(r"\[(?P<code>[A-Z0-9_]+)\] \S")
_REFMSGID = re.compile(r"[0-9]{6}[0-9]{14}[0-9]{10}")
_STAMP = re.compile(r"[0-9]{17}")


def envelope_problems(body: Any) -> list[str]:
    """What in an answer's envelope is not as the contract says (empty: all as agreed)."""
    if not isinstance(body, dict):
        return [f"the answer is not a JSON object: {body!r}"]
    problems = []
    for name in ("infcode", "inf_refmsgid", "refmsg_time", "respond_time", "err_msg", "output"):
        if name not in body:
            problems.append(f"no {name}")
    infcode = body.get("infcode")
    if infcode not in (0, -1) or isinstance(infcode, bool):
        problems.append(f"infcode is {infcode!r}, not the number 0 or -1")
    ref = body.get("inf_refmsgid")
    if ref is not None and not (isinstance(ref, str) and _REFMSGID.fullmatch(ref)):
        problems.append(f"inf_refmsgid {ref!r} is not region(6)+yyyyMMddHHmmss+10 digits")
    for name in ("refmsg_time", "respond_time"):
        value = body.get(name)
        if value is not None and not (isinstance(value, str) and _STAMP.fullmatch(value)):
            problems.append(f"{name} {value!r} is not yyyyMMddHHmmssSSS")
    if infcode == 0 and body.get("err_msg") != "":
        problems.append(f"success with err_msg {body.get('err_msg')!r}")
    if infcode == -1:
        if not _ERR.match(str(body.get("err_msg", ""))):
            problems.append(f"err_msg {body.get('err_msg')!r} does not start with [CODE]")
        if body.get("output") != {}:
            problems.append(f"failure with output {body.get('output')!r}, not {{}}")
    return problems


def numbers_only(value: Any, path: str = "output") -> list[str]:
    """Amount-like fields answered as strings (the contract answers numbers)."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in AMOUNT_FIELDS and isinstance(item, str):
                found.append(f"{path}.{key} = {item!r} is a string, not a number")
            found += numbers_only(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += numbers_only(item, f"{path}[{index}]")
    return found


# Amount fields of the contract's outputs (yuan, pric, cnt) and of POLICY's setlinfo.
SETL_FEN_FIELDS = (
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_selfpay",
    "preselfpay_amt",
    "inscp_scp_amt",
    "act_pay_dedc",
    "hifp_pay",
    "pool_prop_selfpay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "acct_pay",
    "psn_cash_pay",
    "balc",
)
AMOUNT_FIELDS = frozenset(
    {
        *SETL_FEN_FIELDS,
        "det_item_fee_sumamt",
        "cnt",
        "pric",
        "pric_uplmt_amt",
        "selfpay_prop",
        "overlmt_amt",
        "fund_payamt",
        "crt_payb_lmt_amt",
        "cvlserv_pay",
        "hifes_pay",
        "hifmi_pay",
        "hifob_pay",
        "maf_pay",
        "oth_pay",
        "hosp_part_amt",
        "acct_mulaid_pay",
    }
)


@dataclass
class Answer:
    """One HTTP answer: its status, raw body, and (when JSON) the decoded envelope."""

    status: int
    raw: bytes
    content_type: str
    msgid: str
    body: Any = None

    @property
    def infcode(self) -> Any:
        return self.body.get("infcode") if isinstance(self.body, dict) else None

    @property
    def err_code(self) -> str | None:
        """The stable code in brackets at the start of ``err_msg``."""
        if not isinstance(self.body, dict):
            return None
        match = _ERR.match(str(self.body.get("err_msg", "")))
        return match["code"] if match else None

    @property
    def output(self) -> dict[str, Any]:
        out = self.body.get("output") if isinstance(self.body, dict) else None
        return out if isinstance(out, dict) else {}

    def describe(self) -> str:
        return f"HTTP {self.status} {self.raw[:600]!r}"


@dataclass
class GatewayClient:
    """What the administrator hands the HIS: ``POST /v1/gateway-clients`` answer."""

    paasid: str
    secret: str
    fixmedins_code: str


# The facility's message serial, shared by all its workstations (msgid is unique per facility).
_SERIALS: dict[str, itertools.count[int]] = {}


@dataclass
class His:
    http: aiohttp.ClientSession
    base_url: str
    client: GatewayClient
    fixmedins_name: str = "测试医院"
    region: str = REGION
    opter: str = "D0001"
    opter_name: str = "李医生"
    sign_no: str | None = None

    @property
    def fixmedins_code(self) -> str:
        return self.client.fixmedins_code

    # ---- msgid: fixmedins_code + yyyyMMddHHmmss + 4 digits, unique per facility
    def mint_msgid(self) -> str:
        stamp = shanghai_now().strftime("%Y%m%d%H%M%S")
        serials = _SERIALS.setdefault(self.fixmedins_code, itertools.count(1))
        serial = next(serials) % 10000
        msgid = f"{self.fixmedins_code}{stamp}{serial:04d}"
        assert len(msgid) <= 30, msgid
        return msgid

    def envelope(
        self,
        infno: str,
        input: Mapping[str, Any],
        *,
        msgid: str | None = None,
        sign_no: str | None = None,
        fixmedins_code: str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "infno": infno,
            "msgid": msgid or self.mint_msgid(),
            "mdtrtarea_admvs": self.region,
            "insuplc_admdvs": self.region,
            "recer_sys_code": "YBXT",
            "dev_no": "",
            "dev_safe_info": "",
            "cainfo": "",
            "signtype": "",
            "infver": "V1.0",
            "opter_type": "1",
            "opter": self.opter,
            "opter_name": self.opter_name,
            "inf_time": local_time(),
            "fixmedins_code": fixmedins_code or self.fixmedins_code,
            "fixmedins_name": self.fixmedins_name,
            "sign_no": sign_no if sign_no is not None else (self.sign_no or ""),
            "input": dict(input),
        }
        body.update(overrides)
        return body

    async def post(
        self, body: bytes | Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> Answer:
        """Send one request as it is; the TIF headers are made fresh unless given."""
        raw = body if isinstance(body, bytes) else _encoder.encode(body)
        msgid = "" if isinstance(body, bytes) else str(body.get("msgid", ""))
        sent = dict(headers) if headers is not None else self.headers()
        sent.setdefault("Content-Type", "application/json")
        async with self.http.post(self.base_url + PATH, data=raw, headers=sent) as resp:
            data = await resp.read()
            answer = Answer(resp.status, data, resp.headers.get("Content-Type", ""), msgid)
        if answer.content_type.startswith("application/json"):
            try:
                answer.body = _decoder.decode(data)
            except msgspec.DecodeError:
                answer.body = None
        return answer

    def headers(self, **kw: Any) -> dict[str, str]:
        return tif_headers(self.client.paasid, self.client.secret, **kw)

    async def call(
        self,
        infno: str,
        input: Mapping[str, Any],
        **kw: Any,
    ) -> Answer:
        answer = await self.post(self.envelope(infno, input, **kw))
        assert answer.status < 500, answer.describe()
        return answer

    async def ok(self, infno: str, input: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
        answer = await self.call(infno, input, **kw)
        assert answer.status == 200 and answer.infcode == 0, f"{infno}: {answer.describe()}"
        check(answer)
        return answer.output

    async def refused(self, infno: str, input: Mapping[str, Any], code: str, **kw: Any) -> Answer:
        """The call must fail with ``infcode -1`` and ``[code]``."""
        answer = await self.call(infno, input, **kw)
        assert answer.infcode == -1 and answer.err_code == code, (
            f"{infno}: wanted [{code}], got {answer.describe()}"
        )
        check(answer)
        return answer

    # ---- 9001 / 9002
    async def sign_in(self) -> str:
        output = await self.ok(
            "9001",
            {"signIn": {"opter_no": self.opter, "mac": "00-16-3E-00-00-01", "ip": "10.0.0.8"}},
            sign_no="",
        )
        sign_no = output["signinoutb"]["sign_no"]
        assert re.fullmatch(
            r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}",
            output["signinoutb"]["sign_time"],
        )
        assert isinstance(sign_no, str) and sign_no
        self.sign_no = sign_no
        return sign_no

    async def sign_out(self) -> dict[str, Any]:
        assert self.sign_no is not None
        return await self.ok("9002", {"signOut": {"sign_no": self.sign_no, "opter_no": self.opter}})


def check(answer: Answer) -> None:
    """The envelope as agreed, and amounts as numbers."""
    problems = envelope_problems(answer.body) + numbers_only(answer.output)
    assert not problems, f"{problems}: {answer.describe()}"


# ---------------------------------------------------------------------- fee lines
@dataclass
class Line:
    """One fee detail line as the HIS has it: catalog code, price and count as decimals."""

    code: str
    pric: Decimal
    cnt: Decimal
    feedetl_sn: str = field(default_factory=lambda: "F" + secrets.token_hex(6))
    sumamt: Decimal | None = None  # det_item_fee_sumamt when not pric × cnt
    init_feedetl_sn: str | None = None

    @property
    def amount(self) -> Decimal:
        return self.sumamt if self.sumamt is not None else line_total(self.pric, self.cnt)

    def node(
        self, mdtrt_id: str, psn_no: str, chrg_bchno: str, *, as_strings: bool = False
    ) -> dict[str, Any]:
        def value(x: Decimal) -> Decimal | str:
            return str(x) if as_strings else x

        node: dict[str, Any] = {
            "feedetl_sn": self.feedetl_sn,
            "mdtrt_id": mdtrt_id,
            "psn_no": psn_no,
            "chrg_bchno": chrg_bchno,
            "rxno": "",
            "rx_circ_flag": "0",
            "fee_ocur_time": local_time(),
            "med_list_codg": self.code,
            "medins_list_codg": "H-" + self.code,
            "det_item_fee_sumamt": value(self.amount),
            "cnt": value(self.cnt),
            "pric": value(self.pric),
            "bilg_dept_codg": "D01",
            "bilg_dept_name": "内科",
            "bilg_dr_codg": "D0001",
            "bilg_dr_name": "李医生",
            "hosp_appr_flag": "1",
        }
        if self.init_feedetl_sn is not None:
            node["init_feedetl_sn"] = self.init_feedetl_sn
        return node


def fen_line(code: str, unit_price_fen: int, quantity: int) -> Line:
    """A line in whole fen and whole units, as the native API has it."""
    return Line(code, yuan(unit_price_fen), Decimal(quantity))


# ---------------------------------------------------------------------- 9101 / 9102 files
STMT_COLUMNS = (
    "setl_id",
    "mdtrt_id",
    "psn_no",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
    "refd_setl_flag",
)
RESULT_COLUMNS = (
    "psn_no",
    "mdtrt_id",
    "setl_id",
    "msgid",
    "stmt_rslt",
    "refd_setl_flag",
    "memo",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
)


def statement_zip(rows: list[dict[str, Any]], name: str = "stmt.txt") -> bytes:
    """One tab-separated text file, zipped, columns in ``STMT_COLUMNS`` order."""
    text = "".join("\t".join(str(row[c]) for c in STMT_COLUMNS) + "\n" for row in rows)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, text.encode("utf-8"))
    return buffer.getvalue()


def result_rows(zipped: bytes) -> list[dict[str, str]]:
    """``result.txt`` of a 9102 download, one dict per line."""
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        text = archive.read("result.txt").decode("utf-8")
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = line.split("\t")
        if tuple(cells) == RESULT_COLUMNS:  # a header line (the contract neither asks nor forbids)
            continue
        assert len(cells) == len(RESULT_COLUMNS), f"result.txt line {line!r}"
        rows.append(dict(zip(RESULT_COLUMNS, cells, strict=True)))
    return rows
