"""schemathesis over schema/openapi.yaml against a running system of its own: generated
(valid and invalid) requests to every operation, signed as a terminal of an allowed kind
or sent with the admin token (the national gateway's go with the generated TIF headers, so
they are refused: its own tests cover the rest), must never give a 5xx, must match the
documented responses, and every error must carry the error body with a stable upper-case
code (the gateway's: its envelope with "[CODE] message")."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from cardcrypto import profile
from tests.support.operators import create_operator
from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
schema = schemathesis.openapi.from_path(
    ROOT / "schema" / "openapi.yaml",
    config=schemathesis.Config.from_path(Path(__file__).with_name("schemathesis.toml")),
)
CODE = re.compile(r"^[A-Z][A-Z0-9_]*$")
EXAMPLES = int(os.environ.get("CARDSVC_FUZZ_EXAMPLES", "12"))


@dataclass
class SignedTerminal:
    terminal_id: str
    session_id: str
    session_key: bytes

    def headers(self, method: str, path_qs: str, body: bytes) -> dict[str, str]:
        ts, nonce = str(int(time.time())), os.urandom(16).hex()
        return {
            "X-Terminal-Id": self.terminal_id,
            "X-Session-Id": self.session_id,
            "X-Timestamp": ts,
            "X-Nonce": nonce,
            "X-Signature": profile.request_signature(
                self.session_key, method, path_qs, ts, nonce, body
            ),
        }


@dataclass
class FuzzEnv:
    base_url: str
    admin_token: str
    terminals: dict[str, SignedTerminal]
    http: requests.Session


def _sign_in(http: requests.Session, base: str, terminal_id: str, key: bytes) -> SignedTerminal:
    rs = bytes.fromhex(
        http.post(f"{base}/v1/terminals/sign-in", json={"terminal_id": terminal_id}).json()[
            "challenge"
        ]
    )
    rt = os.urandom(16)
    opened = http.post(
        f"{base}/v1/terminals/sign-in/complete",
        json={
            "terminal_id": terminal_id,
            "challenge": rs.hex(),
            "terminal_random": rt.hex(),
            "cryptogram": profile.terminal_cryptogram(key, rs, rt).hex(),
        },
    ).json()
    return SignedTerminal(
        terminal_id, opened["session_id"], profile.derive_session_key(key, rs, rt)
    )


@pytest.fixture(scope="module")
def fuzz_env() -> Iterator[FuzzEnv]:
    stack = Stack(
        workers=1,
        env={
            "CARDSVC_TERMINAL_RATE": "100000",
            "CARDSVC_TERMINAL_BURST": "100000",
            "CARDSVC_SIGN_IN_ADDRESS_BURST": "100000",
            "CARDSVC_SIGN_IN_TERMINAL_BURST": "100000",
        },
    ).start()
    http = requests.Session()
    token = asyncio.run(create_operator(stack.database_url)).token
    admin = {"Authorization": f"Bearer {token}"}
    try:
        facility = http.post(
            f"{stack.base_url}/v1/facilities",
            headers=admin,
            json={
                "fixmedins_code": "FUZZ1",
                "fixmedins_name": "fuzz",
                "type": "hospital",
                "level": "1",
                "agreements": ["310"],
            },
        ).json()
        terminals = {}
        for kind in ("counter", "pos", "his", "kiosk"):
            payload: dict[str, Any] = {"kind": kind}
            if kind in ("pos", "his"):
                payload["fixmedins_code"] = facility["fixmedins_code"]
            reg = http.post(f"{stack.base_url}/v1/terminals", headers=admin, json=payload).json()
            terminals[kind] = _sign_in(
                http, stack.base_url, reg["terminal_id"], bytes.fromhex(reg["terminal_key"])
            )
        yield FuzzEnv(stack.base_url, token, terminals, http)
    finally:
        http.close()
        stack.close()


def _headers_are_negative(case: Any) -> bool:
    """A case generated to break its headers (missing or malformed credentials) must be
    sent as generated, not signed: the service has to refuse it."""
    component = case.meta.components.get(ParameterLocation.HEADER) if case.meta else None
    return component is not None and component.mode == GenerationMode.NEGATIVE


def _caller_headers(
    case: Any, env: FuzzEnv, method: str, path_qs: str, body: bytes
) -> dict[str, str]:
    if _headers_are_negative(case):
        return {}
    definition = case.operation.definition.raw
    security = definition.get("security", [])
    kinds = definition.get("x-terminal-kinds", [])
    # Operator routes: the token of an operator holding every role.
    if any("adminBearer" in s or "operatorBearer" in s for s in security):
        return {"Authorization": f"Bearer {env.admin_token}"}
    if kinds:
        return env.terminals[kinds[0]].headers(method, path_qs, body)
    return {}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_every_operation(case: Any, fuzz_env: FuzzEnv) -> None:
    kwargs = case.as_transport_kwargs(base_url=fuzz_env.base_url)
    method = kwargs.pop("method")
    url = kwargs.pop("url")
    headers = dict(kwargs.pop("headers", None) or {})
    params = kwargs.pop("params", None)
    if "json" in kwargs:
        body = json.dumps(kwargs.pop("json")).encode()
        headers.setdefault("Content-Type", "application/json")
    else:
        raw = kwargs.pop("data", None)
        body = raw.encode() if isinstance(raw, str) else (raw or b"")
    prepared = requests.Request(method, url, params=params, data=body, headers=headers).prepare()
    path_qs = prepared.path_url
    prepared.headers.update(_caller_headers(case, fuzz_env, method, path_qs, body))
    response = fuzz_env.http.send(prepared, timeout=10)
    assert response.status_code < 500, (method, path_qs, response.status_code, response.text[:500])
    if response.status_code >= 400 and method == "POST" and path_qs.startswith("/fsi/"):
        # The national gateway answers with its envelope's error body: "[CODE] message"
        # (another method is refused by the router: 405 with the usual error body).
        envelope = response.json()
        assert envelope.get("infcode") == -1, (method, response.status_code, response.text)
        assert envelope["output"] == {}
        assert CODE.match(envelope["err_msg"][1 : envelope["err_msg"].index("]")])
    elif response.status_code >= 400:
        error = response.json()["error"]
        assert CODE.match(error["code"]) and isinstance(error["message"], str)
        assert isinstance(error["details"], dict)
    # Schema-valid data may still break a business rule JSON Schema cannot state (a check
    # digit, a card's state): those 4xx answers are right, and their codes are checked
    # above. Whether wrong credentials are refused is for the authorisation matrix
    # (tests/integration/test_authorization.py): this test signs with valid ones.
    case.validate_response(response, excluded_checks=[positive_data_acceptance, ignored_auth])
