"""hsm_stub as a real subprocess over mutual TLS, driven through cardsvc's HsmClient."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from cardcrypto import profile
from cardsvc.hsm import (
    HsmClient,
    HsmError,
    HsmKeyUsageRefused,
    HsmRegionNotProvisioned,
    HsmRejected,
    HsmUnavailable,
)
from hsm_stub.keystore import KeyType, unwrap_key
from hsmlink import protocol
from hsmlink.credentials import server_context
from hsmlink.protocol import TerminalKind
from tests.support.hsm import HsmProcess, HsmStartError

ADMDVS = "320200"
OTHER_ADMDVS = "320500"
COUNTER = TerminalKind.COUNTER
CARD_SN = "32020012345678900011223344556677"


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HsmProcess]:
    with HsmProcess(tmp_path_factory.mktemp("hsm"), regions=[ADMDVS, OTHER_ADMDVS]) as process:
        yield process


@pytest.fixture
async def client(hsm: HsmProcess) -> AsyncIterator[HsmClient]:
    async with HsmClient(hsm.host, hsm.port, tls=hsm.client_tls(), connections=2) as hsm_client:
        yield hsm_client


@pytest.fixture
def own_hsm(tmp_path: Path) -> Iterator[HsmProcess]:
    """A private hsm_stub for tests that stop, pause or kill it."""
    with HsmProcess(tmp_path / "hsm", regions=[ADMDVS]) as process:
        yield process


def random16() -> bytes:
    return os.urandom(16)


async def eventually_echo(client: HsmClient, within: float) -> bytes:
    deadline = time.monotonic() + within
    while True:
        try:
            return await client.echo(b"back")
        except HsmUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


# --- every command ---------------------------------------------------------------------------


async def test_echo(client: HsmClient) -> None:
    assert await client.echo(b"\x00ping\xff") == b"\x00ping\xff"


async def test_generate_terminal_key_and_its_check_value(client: HsmClient) -> None:
    generated = await client.generate_terminal_key(COUNTER)
    assert len(generated.clear_key) == 16 and len(generated.key_under_lmk) == 44
    assert generated.kcv == profile.key_check_value(generated.clear_key)
    assert await client.key_check_value(generated.key_under_lmk) == generated.kcv
    assert generated.clear_key.hex() not in repr(generated)


async def test_terminal_sign_in(client: HsmClient) -> None:
    terminal = await client.generate_terminal_key(COUNTER)
    rs, rt = random16(), random16()
    cryptogram = profile.terminal_cryptogram(terminal.clear_key, rs, rt)
    result = await client.verify_terminal_cryptogram(terminal.key_under_lmk, rs, rt, cryptogram)
    assert result.server_cryptogram == profile.server_cryptogram(terminal.clear_key, rs, rt)
    assert result.session_key == profile.derive_session_key(terminal.clear_key, rs, rt)


async def test_bad_terminal_cryptogram_is_rejected(client: HsmClient) -> None:
    terminal = await client.generate_terminal_key(COUNTER)
    rs, rt = random16(), random16()
    swapped = profile.server_cryptogram(terminal.clear_key, rs, rt)  # the wrong direction
    with pytest.raises(HsmRejected) as caught:
        await client.verify_terminal_cryptogram(terminal.key_under_lmk, rs, rt, swapped)
    assert caught.value.status is protocol.Status.VERIFICATION_FAILED


async def test_personalised_card_keys_verify_card_cryptograms(client: HsmClient) -> None:
    counter = await client.generate_terminal_key(COUNTER)
    blob = await client.build_personalization_blob(ADMDVS, CARD_SN, counter.key_under_lmk)
    k_auth, k_txn = profile.unseal_card_keys(counter.clear_key, CARD_SN, blob)
    challenge = random16()

    async def verify(key_ref: int, card_key: bytes) -> bool:
        cryptogram = profile.card_cryptogram(card_key, challenge)
        return await client.verify_card_cryptogram(ADMDVS, CARD_SN, key_ref, challenge, cryptogram)

    assert await verify(profile.KEY_REF_AUTH, k_auth)
    assert await verify(profile.KEY_REF_TXN, k_txn)
    assert not await verify(profile.KEY_REF_TXN, k_auth)
    assert not await verify(profile.KEY_REF_AUTH, random16())


async def test_pin_unblock_mac_is_the_cards_own_and_only_for_a_counter(client: HsmClient) -> None:
    counter = await client.generate_terminal_key(COUNTER)
    blob = await client.build_personalization_blob(ADMDVS, CARD_SN, counter.key_under_lmk)
    _, k_txn = profile.unseal_card_keys(counter.clear_key, CARD_SN, blob)
    challenge = os.urandom(profile.CARD_CHALLENGE_LEN)
    mac = await client.pin_unblock_mac(ADMDVS, CARD_SN, counter.key_under_lmk, challenge)
    # What the card computes with the keys it was personalised with.
    k_unblock = profile.pin_unblock_key(k_txn, CARD_SN)
    assert mac == profile.pin_unblock_mac(k_unblock, challenge)
    other_card = await client.pin_unblock_mac(ADMDVS, "ff" * 16, counter.key_under_lmk, challenge)
    assert other_card != mac
    fresh = os.urandom(profile.CARD_CHALLENGE_LEN)
    assert await client.pin_unblock_mac(ADMDVS, CARD_SN, counter.key_under_lmk, fresh) != mac
    # A POS's key never gets an unblock; nor does a region the HSM has no keys for.
    pos = await client.generate_terminal_key(TerminalKind.POS)
    with pytest.raises(HsmKeyUsageRefused):
        await client.pin_unblock_mac(ADMDVS, CARD_SN, pos.key_under_lmk, challenge)
    with pytest.raises(HsmRegionNotProvisioned):
        await client.pin_unblock_mac("999999", CARD_SN, counter.key_under_lmk, challenge)


async def test_card_keys_depend_on_card_and_region_only(client: HsmClient) -> None:
    counter = await client.generate_terminal_key(COUNTER)
    other_counter = await client.generate_terminal_key(COUNTER)

    async def card_keys(admdvs: str, card_sn: str, terminal_blob: bytes, k_term: bytes) -> bytes:
        blob = await client.build_personalization_blob(admdvs, card_sn, terminal_blob)
        return b"".join(profile.unseal_card_keys(k_term, card_sn, blob))

    keys = await card_keys(ADMDVS, CARD_SN, counter.key_under_lmk, counter.clear_key)
    other = other_counter.key_under_lmk, other_counter.clear_key
    assert await card_keys(ADMDVS, CARD_SN, *other) == keys
    assert await card_keys(ADMDVS, "ff" * 16, *other) != keys
    # Another provisioned region has its own issuer keys.
    assert await card_keys(OTHER_ADMDVS, CARD_SN, *other) != keys


@pytest.mark.parametrize(
    ("call", "status"),
    [
        pytest.param(lambda c: c.key_check_value(bytes(44)), "20", id="blob not under LMK"),
        pytest.param(
            lambda c: c.verify_card_cryptogram("999999", CARD_SN, 1, bytes(16), bytes(16)),
            "20",
            id="region without keys",
        ),
        pytest.param(
            lambda c: c.verify_terminal_cryptogram(bytes(44), bytes(8), bytes(16), bytes(16)),
            "15",
            id="short random",
        ),
        pytest.param(
            lambda c: c.build_personalization_blob("3202", CARD_SN, bytes(44)),
            "15",
            id="bad admdvs",
        ),
    ],
)
async def test_refusals_are_hsm_errors_with_the_status(
    client: HsmClient, call: Callable[[HsmClient], Awaitable[object]], status: str
) -> None:
    with pytest.raises(HsmError) as caught:
        await call(client)
    assert caught.value.code == "HSM_ERROR"
    assert caught.value.details == {"hsm_status": status}


async def test_key_ref_must_be_one_or_two(client: HsmClient) -> None:
    with pytest.raises(ValueError, match="key_ref"):
        await client.verify_card_cryptogram(ADMDVS, CARD_SN, 3, bytes(16), bytes(16))


async def test_audit_anchor_mac_verifies_only_its_own_message(client: HsmClient) -> None:
    message = b"cardsvc audit anchor " + os.urandom(64)
    mac = await client.audit_anchor_mac(message)
    assert len(mac) == 16
    assert await client.audit_anchor_mac(message) == mac  # a MAC, deterministic
    assert await client.verify_audit_anchor(message, mac)
    assert not await client.verify_audit_anchor(message + b"x", mac)
    assert not await client.verify_audit_anchor(message, bytes(a ^ 1 for a in mac))


async def test_audit_anchor_key_is_made_inside_and_survives_a_restart(
    own_hsm: HsmProcess,
) -> None:
    async with HsmClient(own_hsm.host, own_hsm.port, tls=own_hsm.client_tls()) as client:
        with pytest.raises(HsmError) as caught:  # no anchor key before the first anchor
            await client.verify_audit_anchor(b"anchor", bytes(16))
        assert caught.value.details == {"hsm_status": "20"}
        mac = await client.audit_anchor_mac(b"anchor")
        own_hsm.restart()
        await eventually_echo(client, within=5)
        assert await client.verify_audit_anchor(b"anchor", mac)
    # The key is only under the LMK in the keystore, and the MAC is SM4-CMAC under it.
    document = json.loads((own_hsm.keystore_dir / "keystore.json").read_text())
    blob = bytes.fromhex(document["audit_anchor"])
    key = unwrap_key(bytes.fromhex(own_hsm.lmk_hex), KeyType.AUDIT_ANCHOR, blob)
    assert profile.sm4_cmac(key, b"anchor") == mac
    assert key.hex() not in own_hsm.log_path.read_text()


# --- multiplexing ----------------------------------------------------------------------------


async def test_many_concurrent_requests_on_one_connection(hsm: HsmProcess) -> None:
    async with HsmClient(hsm.host, hsm.port, tls=hsm.client_tls(), connections=1) as single:
        payloads = [os.urandom(i % 64) + i.to_bytes(2, "big") for i in range(200)]
        answers = await asyncio.gather(*(single.echo(data) for data in payloads))
        assert answers == payloads
        terminal = await single.generate_terminal_key(COUNTER)
        kcvs = await asyncio.gather(
            *(single.key_check_value(terminal.key_under_lmk) for _ in range(50))
        )
        assert set(kcvs) == {terminal.kcv}


async def test_answers_out_of_order_reach_their_callers(hsm: HsmProcess) -> None:
    """hsm_stub answers in order, so a scripted server checks correlation by header alone."""
    count = 20

    async def reverse_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = protocol.FrameDecoder.for_requests()
        requests: list[protocol.RequestFrame] = []
        while len(requests) < count:
            decoder.feed(await reader.read(4096))
            requests += [protocol.parse_request(body) for body in decoder.frames()]
        for request in reversed(requests):
            writer.write(
                protocol.encode_response(
                    request.header, request.command, protocol.Status.OK, request.payload
                )
            )
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    paths = hsm.credentials
    tls = server_context(paths.server_cert, paths.server_key, paths.ca_cert)
    server = await asyncio.start_server(reverse_answers, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    scripted = HsmClient(
        "127.0.0.1", port, tls=hsm.client_tls(), connections=1
    )  # no start(): its ping would count
    async with server:
        payloads = [bytes([i]) * (i + 1) for i in range(count)]
        assert await asyncio.gather(*(scripted.echo(data) for data in payloads)) == payloads
        await scripted.close()


# --- robustness of the server ----------------------------------------------------------------


async def raw_exchange(hsm: HsmProcess, wire: bytes) -> list[protocol.ResponseFrame]:
    """Send raw bytes, read until the server closes or goes quiet for 0.3 s."""
    reader, writer = await asyncio.open_connection(
        hsm.host, hsm.port, ssl=hsm.client_tls(), server_hostname=hsm.host
    )
    writer.write(wire)
    decoder = protocol.FrameDecoder.for_responses()
    frames: list[protocol.ResponseFrame] = []
    try:
        while chunk := await asyncio.wait_for(reader.read(4096), 0.3):
            decoder.feed(chunk)
            frames += [protocol.parse_response(body) for body in decoder.frames()]
    except TimeoutError:
        pass
    writer.close()
    await writer.wait_closed()
    return frames


async def test_unknown_command_and_unreadable_frames_get_error_statuses(hsm: HsmProcess) -> None:
    wire = (
        protocol.encode_request(b"\x00\x00\x00\x01", "XX", b"\x80")
        + b"\x00\x07" + b"\x00\x00\x00\x02" + b"e?" + b"\x80"
        + protocol.encode_request(b"\x00\x00\x00\x03", "EC", b"\xc1")
        + protocol.encode_request(b"\x00\x00\x00\x04", "EC", b"\x81\xa4data\xc4\x01!")
    )  # fmt: skip
    frames = await raw_exchange(hsm, wire)
    assert [(f.header[-1], f.command, f.status) for f in frames] == [
        (1, "XX", protocol.Status.UNKNOWN_COMMAND),
        (2, "ZZ", protocol.Status.MALFORMED_REQUEST),
        (3, "EC", protocol.Status.MALFORMED_REQUEST),
        (4, "EC", protocol.Status.OK),
    ]


async def test_lost_framing_closes_only_that_connection(hsm: HsmProcess, client: HsmClient) -> None:
    good = protocol.encode_request(b"\x00\x00\x00\x01", "EC", b"\x81\xa4data\xc4\x00")
    frames = await raw_exchange(hsm, good + b"\xff\xff" + os.urandom(100))
    assert [f.status for f in frames] == [protocol.Status.OK]  # answered, then closed
    assert await client.echo(b"still serving") == b"still serving"


# --- the HSM going away ----------------------------------------------------------------------


async def test_keys_survive_a_restart(own_hsm: HsmProcess) -> None:
    async with HsmClient(own_hsm.host, own_hsm.port, tls=own_hsm.client_tls()) as client:
        counter = await client.generate_terminal_key(COUNTER)
        blob = await client.build_personalization_blob(ADMDVS, CARD_SN, counter.key_under_lmk)
        own_hsm.restart()
        await eventually_echo(client, within=5)
        again = await client.build_personalization_blob(ADMDVS, CARD_SN, counter.key_under_lmk)
        assert profile.unseal_card_keys(
            counter.clear_key, CARD_SN, again
        ) == profile.unseal_card_keys(counter.clear_key, CARD_SN, blob)
        assert await client.key_check_value(counter.key_under_lmk) == counter.kcv


async def test_stopped_hsm_fails_fast_and_the_same_client_recovers(own_hsm: HsmProcess) -> None:
    async with HsmClient(
        own_hsm.host, own_hsm.port, tls=own_hsm.client_tls(), timeout=2.0
    ) as client:
        assert await client.echo(b"up") == b"up"
        assert own_hsm.stop() == 0  # SIGTERM is a clean exit
        for _ in range(5):  # also while backing off, every call fails fast
            started = time.monotonic()
            with pytest.raises(HsmUnavailable) as caught:
                await client.echo(b"down")
            assert time.monotonic() - started < 3.0
        assert caught.value.status == 503 and caught.value.code == "HSM_UNAVAILABLE"
        own_hsm.start()
        assert await eventually_echo(client, within=5) == b"back"


async def test_once_the_hsm_is_back_no_call_waits_for_a_connection_still_backing_off(
    own_hsm: HsmProcess,
) -> None:
    """After an outage the connections back off at different paces; as soon as one is
    connected again, calls go to it instead of failing on one still waiting to retry."""
    async with HsmClient(
        own_hsm.host, own_hsm.port, tls=own_hsm.client_tls(), connections=4, timeout=2.0
    ) as client:
        own_hsm.stop()
        outage = time.monotonic() + 2.5  # every connection fails until it waits a second
        while time.monotonic() < outage:
            with pytest.raises(HsmUnavailable):
                await client.echo(b"down")
            await asyncio.sleep(0.01)
        starting = asyncio.create_task(asyncio.to_thread(own_hsm.start))
        back = time.monotonic() + 10
        while True:  # calls all along: the first connection to retry gets through
            try:
                await client.echo(b"back")
                break
            except HsmUnavailable:
                assert time.monotonic() < back, "the HSM never answered again"
                await asyncio.sleep(0.01)
        await starting
        for i in range(20):
            assert await client.echo(bytes([i])) == bytes([i])


async def test_requests_in_flight_fail_when_the_hsm_crashes(own_hsm: HsmProcess) -> None:
    async with HsmClient(
        own_hsm.host, own_hsm.port, tls=own_hsm.client_tls(), connections=1, timeout=10.0
    ) as client:
        assert await client.echo(b"up") == b"up"
        own_hsm.pause()
        in_flight = [asyncio.create_task(client.echo(bytes([i]))) for i in range(10)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        own_hsm.kill()
        results = await asyncio.gather(*in_flight, return_exceptions=True)
        assert all(isinstance(result, HsmUnavailable) for result in results)
        assert time.monotonic() - started < 3.0  # the dropped connection, not the 10 s timeout


async def test_hung_hsm_times_out_then_recovers(own_hsm: HsmProcess) -> None:
    async with HsmClient(
        own_hsm.host, own_hsm.port, tls=own_hsm.client_tls(), timeout=0.5
    ) as client:
        own_hsm.pause()
        started = time.monotonic()
        with pytest.raises(HsmUnavailable, match="did not answer"):
            await client.echo(b"anyone?")
        assert time.monotonic() - started < 1.5
        own_hsm.resume()
        assert await eventually_echo(client, within=5) == b"back"


def test_regions_option_creates_issuer_keys_at_start(hsm: HsmProcess) -> None:
    document = json.loads((hsm.keystore_dir / "keystore.json").read_text())
    assert ADMDVS in document["regions"]


def test_another_lmk_refuses_to_start(own_hsm: HsmProcess) -> None:
    own_hsm.stop()
    impostor = HsmProcess(own_hsm.keystore_dir, lmk_hex="00" * 16)
    with pytest.raises(HsmStartError, match="created under LMK kcv"):
        impostor.start()


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_client_starts_while_the_hsm_is_down(hsm: HsmProcess) -> None:
    client = HsmClient("127.0.0.1", unused_port(), tls=hsm.client_tls(), timeout=2.0)
    started = time.monotonic()
    await client.start()
    with pytest.raises(HsmUnavailable):
        await client.echo(b"nobody")
    assert time.monotonic() - started < 3.0
    await client.close()
    with pytest.raises(HsmUnavailable, match="closed"):
        await client.echo(b"after close")
