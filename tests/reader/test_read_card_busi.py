"""``python -m cardsvc.terminal_sdk read-card --busi [--pin P]``: the two strings a national
reader component gives an HIS, from a real process on the test pcscd and the running service."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from cardsvc.cardauth.tokens import CardTokenClaims
from cardsvc.terminal_sdk.failures import Exit
from tests.his.client import GatewayClient, His, Line, local_time
from tests.reader.conftest import PIN, Desk, Slot
from tests.reader.test_commands import terminal_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _claims(token: str) -> CardTokenClaims:
    """What the token says (read only, to check its purpose: clients treat it as opaque)."""
    payload = token.split(".")[0]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    return msgspec.msgpack.decode(raw, type=CardTokenClaims)


def _options(desk: Desk, slot: Slot, tmp_path: Path) -> list[str]:
    terminals = tmp_path / "terminals.json"
    pos = {"terminal_id": desk.pos.terminal_id, "terminal_key": desk.pos.terminal_key.hex()}
    terminals.write_text(json.dumps({"pos": {**pos, "kind": "pos"}}))
    return [
        *("--base-url", desk.service.base_url),
        *("--terminals", str(terminals)),
        *("--reader", slot.reader_name),
        *("--wait", "10"),
    ]


async def test_read_card_busi_prints_the_basic_info_and_card_no_with_the_card_token(
    desk: Desk, slot: Slot, tmp_path: Path
):
    person = await desk.holder(balance=0)
    issued = await desk.issue(slot, person["psn_no"])
    common = _options(desk, slot, tmp_path)

    code, plain, err = await terminal_cli("read-card", *common)
    assert code == 0, err

    code, out, err = await terminal_cli("read-card", "--busi", *common)
    assert code == 0, err
    basic, busi = out.split("\n")[:2]
    assert out == f"{basic}\n{busi}\n"  # exactly two lines: scriptable
    assert basic + "\n" == plain  # the same basic-info line as without --busi
    card_no, token = busi.split("|")
    assert card_no == issued.card_no and token
    claims = _claims(token)
    assert (claims.card_no, claims.purpose) == (issued.card_no, "identify")
    assert "card authenticated" in err and token not in err

    code, out, err = await terminal_cli("read-card", "--busi", "--pin", PIN, *common)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0] + "\n" == plain
    card_no, token = lines[1].split("|")
    assert card_no == issued.card_no
    assert _claims(token).purpose == "transaction"  # the PIN was verified on the card
    assert "PIN verified on the card" in err


async def test_read_card_busi_failures_print_nothing_on_stdout(
    desk: Desk, slot: Slot, tmp_path: Path
):
    person = await desk.holder(balance=0)
    await desk.issue(slot, person["psn_no"])
    common = _options(desk, slot, tmp_path)

    code, out, err = await terminal_cli("read-card", "--busi", "--pin", "000000", *common)
    assert code == Exit.WRONG_PIN and out == ""
    assert err.splitlines()[-1].startswith("wrong PIN: 2 tries left") and "Traceback" not in err

    code, out, err = await terminal_cli("read-card", "--pin", PIN, *common)
    assert code == Exit.USAGE and out == ""
    assert "--busi" in err.splitlines()[-1]

    missing = [*common[:2], "--terminals", str(tmp_path / "none.json"), *common[4:]]
    code, out, err = await terminal_cli("read-card", "--busi", *missing)
    assert code == Exit.USAGE and out == ""
    assert "no terminal keys" in err.splitlines()[-1]


async def test_read_card_busi_lines_are_what_the_national_gateway_takes(
    desk: Desk, slot: Slot, tmp_path: Path
):
    """The HIS takes the two lines as they are: card_sn from the first, mdtrt_cert_no the
    second; identify for 1101 and registration, transaction (--pin) for 2207."""
    service = desk.service
    person = await desk.holder(balance=5000)
    await desk.issue(slot, person["psn_no"])
    common = _options(desk, slot, tmp_path)
    status, reg = await service.admin(
        "POST", "/v1/gateway-clients", {"fixmedins_code": desk.fixmedins_code}
    )
    assert status == 201, reg
    client = GatewayClient(reg["paasid"], reg["secret"], desk.fixmedins_code)
    his = His(service.http, service.base_url, client)
    await his.sign_in()

    async def card(*pin: str) -> dict[str, str]:
        code, out, err = await terminal_cli("read-card", "--busi", *pin, *common)
        assert code == 0, err
        basic, busi = out.splitlines()
        card_sn = basic.split("|")[3]
        return {"mdtrt_cert_type": "03", "mdtrt_cert_no": busi, "card_sn": card_sn}

    info = await his.ok("1101", {"data": {**await card(), "begntime": local_time()}})
    psn_no = info["baseinfo"]["psn_no"]
    assert psn_no == person["psn_no"]
    registered = await his.ok(
        "2201",
        {"data": {"psn_no": psn_no, "insutype": "310", "begntime": local_time(), **await card()}},
    )
    mdtrt_id = registered["data"]["mdtrt_id"]
    visit = {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "med_type": "11", "begntime": local_time()}
    await his.ok("2203", {"mdtrtinfo": visit, "diseinfo": []})
    line = Line("A-AMOX", Decimal("12.00"), Decimal("1"))
    await his.ok("2204", {"feedetail": [line.node(mdtrt_id, psn_no, "B1")]})
    settle = {
        "psn_no": psn_no,
        "med_type": "11",
        "medfee_sumamt": Decimal("12.00"),
        "psn_setlway": "01",
        "mdtrt_id": mdtrt_id,
        "chrg_bchno": "B1",
        "acct_used_flag": "1",
        "insutype": "310",
    }
    refused = await his.call("2207", {"data": {**settle, **await card()}})
    assert refused.infcode == -1  # an identify token does not pay
    settled = await his.ok("2207", {"data": {**settle, **await card("--pin", PIN)}})
    assert settled["setlinfo"]["acct_pay"] == Decimal("12.00")
    assert await desk.balance(psn_no) == 3800
