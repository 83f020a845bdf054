"""Test-side helpers for the national gateway: register a client, sign TIF headers, build
envelopes, send messages (``POST /fsi/api/rsfComIfsService/callService``)."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from tests.support.api import REGION, Service

PATH = "/fsi/api/rsfComIfsService/callService"
SHANGHAI = ZoneInfo("Asia/Shanghai")
_sequence = itertools.count(1)
# Decimal figures of answers stay exact (a JSON number with a fraction → Decimal).
_decoder = msgspec.json.Decoder(float_hook=Decimal)


def tif_signature(timestamp: str, secret: str, nonce: str) -> str:
    """The contract's x-tif-signature: SHA-256(timestamp ‖ secret ‖ nonce ‖ timestamp)."""
    return hashlib.sha256(f"{timestamp}{secret}{nonce}{timestamp}".encode()).hexdigest()


def tif_headers(
    paasid: str,
    secret: str,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    return {
        "x-tif-paasid": paasid,
        "x-tif-timestamp": ts,
        "x-tif-nonce": nonce,
        "x-tif-signature": tif_signature(ts, secret, nonce),
        "Content-Type": "application/json",
    }


def new_msgid(fixmedins_code: str) -> str:
    """fixmedins_code + yyyyMMddHHmmss + 4 digits (unique within this test process)."""
    now = dt.datetime.now(SHANGHAI)
    return f"{fixmedins_code}{now:%Y%m%d%H%M%S}{next(_sequence) % 10_000:04d}"[:30]


@dataclass
class Answer:
    status: int
    body: Any  # the decoded envelope (dict), or the raw bytes of a file answer
    raw: bytes
    content_type: str

    @property
    def infcode(self) -> int:
        return int(self.body["infcode"])

    @property
    def code(self) -> str | None:
        """The stable error code of ``err_msg`` ("[CODE] message"), None on success."""
        err = self.body.get("err_msg") or ""
        return err[1 : err.index("]")] if err.startswith("[") else None


@dataclass
class GatewayClient:
    service: Service
    paasid: str
    secret: str
    fixmedins_code: str
    sign_no: str = ""

    def headers(self, **kwargs: Any) -> dict[str, str]:
        return tif_headers(self.paasid, self.secret, **kwargs)

    def envelope(
        self, infno: str, inputs: dict[str, Any], *, msgid: Any = None, **fields: Any
    ) -> dict[str, Any]:
        env: dict[str, Any] = {
            "infno": infno,
            "msgid": new_msgid(self.fixmedins_code) if msgid is None else msgid,
            "mdtrtarea_admvs": REGION,
            "insuplc_admdvs": REGION,
            "recer_sys_code": "YBXT",
            "dev_no": "",
            "dev_safe_info": "",
            "cainfo": "",
            "signtype": "",
            "infver": "V1.0",
            "opter_type": "1",
            "opter": "OP001",
            "opter_name": "测试操作员",
            "inf_time": dt.datetime.now(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S"),
            "fixmedins_code": self.fixmedins_code,
            "fixmedins_name": "测试医院",
            "sign_no": self.sign_no,
            "input": inputs,
        }
        env.update(fields)
        return env

    async def post(
        self, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
    ) -> Answer:
        raw_body = body if isinstance(body, bytes) else msgspec.json.encode(body)
        async with self.service.http.post(
            self.service.base_url + PATH, data=raw_body, headers=headers or self.headers()
        ) as resp:
            raw = await resp.read()
            content_type = resp.content_type
            decoded = _decoder.decode(raw) if content_type == "application/json" else raw
            return Answer(resp.status, decoded, raw, content_type)

    async def call(self, infno: str, inputs: dict[str, Any], **fields: Any) -> Answer:
        return await self.post(self.envelope(infno, inputs, **fields))

    async def ok(self, infno: str, inputs: dict[str, Any], **fields: Any) -> Any:
        """The ``output`` of a successful message (asserted)."""
        answer = await self.call(infno, inputs, **fields)
        assert answer.status == 200, (answer.status, answer.body)
        if not isinstance(answer.body, dict):
            return answer.body
        assert answer.body["infcode"] == 0, answer.body
        return answer.body["output"]

    async def sign_in(self) -> str:
        out = await self.ok("9001", {"signIn": {"opter_no": "OP001", "mac": "", "ip": ""}})
        self.sign_no = str(out["signinoutb"]["sign_no"])
        return self.sign_no


async def register_client(service: Service, fixmedins_code: str) -> GatewayClient:
    created = await service.admin_ok(
        "POST", "/v1/gateway-clients", {"fixmedins_code": fixmedins_code}
    )
    return GatewayClient(service, created["paasid"], created["secret"], fixmedins_code)


async def gateway_client(service: Service, fixmedins_code: str | None = None) -> GatewayClient:
    """A registered, signed-in client (of a new facility unless one is named)."""
    if fixmedins_code is None:
        fixmedins_code = (await service.facility())["fixmedins_code"]
    client = await register_client(service, fixmedins_code)
    await client.sign_in()
    return client


def card_cert(card_no: str, card_token: str) -> str:
    """mdtrt_cert_no of a card (03): card_no|busi_card_info."""
    return f"{card_no}|{card_token}"
