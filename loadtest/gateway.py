"""The ``his`` scenario's side of the national gateway, lean: an HIS's pharmacy purchase as
two messages, 2204 (the fee lines, opening the visit) and 2207 (the settlement with the
card: ``card_no|card_token``), each an envelope with the TIF headers.

Written from the interface (the envelope, the TIF signature, the units), like any HIS. The
envelopes are encoded before the timed phase; sending one adds only the TIF headers
(timestamp, nonce, one SHA-256) to the prepared bytes, as ``wire.Signer`` does for a
terminal.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec

from cardsvc.clock import BUSINESS_TZ
from loadtest import wire

PATH = b"/fsi/api/rsfComIfsService/callService"
REGION = "320200"

_encode = msgspec.json.Encoder(decimal_format="number").encode


class GatewayCred(msgspec.Struct, kw_only=True, array_like=True):
    """A gateway client registered for a facility (its secret shown once at registration)."""

    fixmedins_code: str
    paasid: str
    secret: str


class TifSigner:
    """The TIF headers of one gateway client: ``x-tif-signature`` is hex
    SHA-256(timestamp ‖ secret ‖ nonce ‖ timestamp)."""

    def __init__(self, host: str, cred: GatewayCred) -> None:
        self._head = (
            f"POST {PATH.decode()} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
            f"\r\nx-tif-paasid: {cred.paasid}\r\nx-tif-timestamp: "
        ).encode("ascii")
        self._secret = cred.secret.encode("ascii")
        self._second = -1
        self._ts = b""

    def post(self, body: bytes) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second, self._ts = now, str(now).encode("ascii")
        nonce = _nonces.next()
        signature = hashlib.sha256(self._ts + self._secret + nonce + self._ts).hexdigest()
        return b"%s%s\r\nx-tif-nonce: %s\r\nx-tif-signature: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            self._head,
            self._ts,
            nonce,
            signature.encode("ascii"),
            len(body),
            body,
        )


_nonces = wire.Nonces()


def envelope(
    infno: str, msgid: str, fixmedins_code: str, sign_no: str, inputs: dict[str, Any]
) -> bytes:
    now = dt.datetime.now(BUSINESS_TZ)
    return _encode(
        {
            "infno": infno,
            "msgid": msgid,
            "mdtrtarea_admvs": REGION,
            "insuplc_admdvs": REGION,
            "recer_sys_code": "YBXT",
            "infver": "V1.0",
            "opter_type": "1",
            "opter": "LT001",
            "opter_name": "load",
            "inf_time": f"{now:%Y-%m-%d %H:%M:%S}",
            "fixmedins_code": fixmedins_code,
            "fixmedins_name": "load",
            "sign_no": sign_no,
            "input": inputs,
        }
    )


def _yuan(fen: int) -> Decimal:
    return Decimal(fen).scaleb(-2)


@dataclass(frozen=True, slots=True)
class Purchase:
    """One pharmacy purchase: the two envelopes, and the settling message's id."""

    fee_upload: bytes  # 2204
    settle: bytes  # 2207
    settle_msgid: str
    fixmedins_code: str


def purchase(
    *,
    fixmedins_code: str,
    sign_no: str,
    msgids: tuple[str, str],
    psn_no: str,
    card_no: str,
    card_sn: str,
    card_token: str,
    mdtrt_id: str,
    lines: list[dict[str, Any]],
) -> Purchase:
    """``lines``: the native API's (``code``, ``unit_price`` fen, ``quantity``)."""
    feedetail = [
        {
            "feedetl_sn": str(n),
            "mdtrt_id": mdtrt_id,
            "psn_no": psn_no,
            "chrg_bchno": "1",
            "med_list_codg": line["code"],
            "det_item_fee_sumamt": _yuan(line["unit_price"] * line["quantity"]),
            "cnt": line["quantity"],
            "pric": _yuan(line["unit_price"]),
            "med_type": "41",
            "insutype": "310",
        }
        for n, line in enumerate(lines, 1)
    ]
    total = sum(line["unit_price"] * line["quantity"] for line in lines)
    data = {
        "psn_no": psn_no,
        "mdtrt_cert_type": "03",
        "mdtrt_cert_no": f"{card_no}|{card_token}",
        "card_sn": card_sn,
        "med_type": "41",
        "medfee_sumamt": _yuan(total),
        "psn_setlway": "01",
        "mdtrt_id": mdtrt_id,
        "chrg_bchno": "1",
        "acct_used_flag": "1",
        "insutype": "310",
    }
    return Purchase(
        fee_upload=envelope("2204", msgids[0], fixmedins_code, sign_no, {"feedetail": feedetail}),
        settle=envelope("2207", msgids[1], fixmedins_code, sign_no, {"data": data}),
        settle_msgid=msgids[1],
        fixmedins_code=fixmedins_code,
    )


class _SetlInfo(msgspec.Struct):
    setl_id: str


class _SignIn(msgspec.Struct):
    sign_no: str


class _Output(msgspec.Struct):
    """The parts of an ``output`` the load reads (2207's setl_id, 9001's sign_no)."""

    setlinfo: _SetlInfo | None = None
    signinoutb: _SignIn | None = None


class Answer(msgspec.Struct):
    infcode: int
    err_msg: str | None = ""
    output: _Output | None = None


_decode_answer = msgspec.json.Decoder(Answer).decode


def answer(body: bytes) -> Answer:
    return _decode_answer(body)


def error_code(ans: Answer) -> str:
    """The stable code of a refusal (``err_msg`` "[CODE] …")."""
    err = ans.err_msg or ""
    return err[1 : err.index("]")] if err.startswith("[") and "]" in err else "GATEWAY_ERROR"
