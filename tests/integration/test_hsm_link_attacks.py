"""Attacks on the HSM link (issue #11, items 1 and 2), each against the real hsm_stub.

Before the fix, anyone who reached hsm_stub's port got a terminal key in clear (TK) and then a
personalisation blob for any card under it (PB), and PB for an unknown region created issuer
keys. These tests rerun those attacks: an anonymous client, a client without or with a foreign
certificate, an impostor HSM, a non-counter key asking for card keys, an unprovisioned region,
and the resource bounds; and they check that key-management log lines carry no key material.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cardcrypto import profile
from cardsvc.hsm import (
    HsmClient,
    HsmError,
    HsmKeyUsageRefused,
    HsmRegionNotProvisioned,
    HsmUnavailable,
)
from hsm_stub.keystore import KeyType, wrap_key
from hsmlink import protocol
from hsmlink.credentials import client_context, make_credentials
from hsmlink.protocol import TerminalKind
from tests.support.api import REGION
from tests.support.hsm import REPO_ROOT, HsmProcess

UNPROVISIONED = "330100"
CARD_SN = REGION + "12345678900011223344556677"[: 32 - len(REGION)]
TK_FRAME = protocol.encode_request(
    b"\x00\x00\x00\x01",
    protocol.Command.GENERATE_TERMINAL_KEY,
    protocol.encode_payload(protocol.GenerateTerminalKeyRequest(kind=TerminalKind.COUNTER)),
)
PB_FRAME = protocol.encode_request(
    b"\x00\x00\x00\x02",
    protocol.Command.BUILD_PERSONALIZATION,
    protocol.encode_payload(
        protocol.BuildPersonalizationRequest(
            admdvs=REGION, card_sn=CARD_SN, counter_key_under_lmk=bytes(44)
        )
    ),
)
ECHO_FRAME = protocol.encode_request(
    b"\x00\x00\x00\x03",
    protocol.Command.ECHO,
    protocol.encode_payload(protocol.EchoRequest(data=b"ping")),
)


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HsmProcess]:
    with HsmProcess(tmp_path_factory.mktemp("hsm"), regions=[REGION]) as process:
        yield process


@pytest.fixture
async def client(hsm: HsmProcess) -> AsyncIterator[HsmClient]:
    async with HsmClient(hsm.host, hsm.port, tls=hsm.client_tls(), connections=1) as hsm_client:
        yield hsm_client


@pytest.fixture
def limited_hsm(tmp_path: Path) -> Iterator[HsmProcess]:
    """Small limits: 2 connections, 1 s to finish a handshake, 1 s of idleness."""
    limits = ["--max-connections", "2", "--handshake-timeout", "1", "--idle-timeout", "1"]
    with HsmProcess(tmp_path / "hsm", regions=[REGION], extra_args=limits) as process:
        yield process


async def read_until_closed(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything the server sends until it closes (or errors); fails if it never does."""
    received, closed = await read_for(reader, within)
    assert closed, f"the HSM kept the connection open; it sent {received!r}"
    return received


async def read_for(reader: asyncio.StreamReader, within: float) -> tuple[bytes, bool]:
    """What the server sends within ``within`` seconds, and whether it closed."""
    received = b""
    try:
        async with asyncio.timeout(within):
            while chunk := await reader.read(4096):
                received += chunk
    except TimeoutError:
        return received, False
    except (ssl.SSLError, ConnectionError):
        pass
    return received, True


async def attempt(hsm: HsmProcess, tls: ssl.SSLContext | None, wire: bytes) -> bytes:
    """Connect (TLS if given), send ``wire``, return what came back; the server must close."""
    try:
        reader, writer = await asyncio.open_connection(
            hsm.host, hsm.port, ssl=tls, server_hostname=hsm.host if tls else None
        )
    except (ssl.SSLError, ConnectionError):
        return b""
    try:
        writer.write(wire)
        await writer.drain()
        received, closed = await read_for(reader, 5.0)
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        writer.transport.abort()
    assert_no_answer(received)
    assert closed, "the HSM kept the connection open"
    return received


def assert_no_answer(received: bytes) -> None:
    # An answer frame names its command in ASCII after the header; a TLS alert cannot.
    for code in (b"TK", b"PB", b"EC"):
        assert code not in received, f"the HSM answered {code!r}: {received!r}"


def log_events(hsm: HsmProcess, event: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in hsm.log_path.read_text().splitlines() if line]
    return [line for line in lines if line.get("event") == event]


async def logged(hsm: HsmProcess, event: str, within: float = 3.0) -> list[dict[str, object]]:
    """The log lines of ``event``, waiting a little for the server to write them."""
    deadline = asyncio.get_running_loop().time() + within
    while not (found := log_events(hsm, event)):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    return found


# --- who may talk to the HSM -----------------------------------------------------------------


async def test_anonymous_plain_tcp_client_gets_no_key_and_no_blob(hsm: HsmProcess) -> None:
    assert_no_answer(await attempt(hsm, None, TK_FRAME + PB_FRAME + ECHO_FRAME))
    assert await logged(hsm, "hsm.handshake_failed")


async def test_tls_client_without_a_certificate_gets_nothing(hsm: HsmProcess) -> None:
    anonymous = ssl.create_default_context(cafile=hsm.credentials.ca_cert)
    anonymous.minimum_version = ssl.TLSVersion.TLSv1_3
    assert_no_answer(await attempt(hsm, anonymous, TK_FRAME + PB_FRAME + ECHO_FRAME))


async def test_client_certificate_from_another_ca_is_refused(
    hsm: HsmProcess, tmp_path: Path
) -> None:
    foreign, _ = make_credentials(tmp_path / "foreign")
    # Trusts the real HSM, presents a certificate the link's CA never issued.
    tls = client_context(hsm.credentials.ca_cert, foreign.client_cert, foreign.client_key)
    assert_no_answer(await attempt(hsm, tls, TK_FRAME + ECHO_FRAME))


async def test_the_host_credential_is_served(hsm: HsmProcess) -> None:
    """The control for the three refusals above: the same bytes, with cardsvc's certificate."""
    _, writer = await open_authorised(hsm)
    writer.transport.abort()


async def test_cardsvc_refuses_an_hsm_from_another_ca(hsm: HsmProcess, tmp_path: Path) -> None:
    with HsmProcess(tmp_path / "impostor", regions=[REGION]) as impostor:  # its own CA
        client = HsmClient(impostor.host, impostor.port, tls=hsm.client_tls(), timeout=2.0)
        with pytest.raises(HsmUnavailable, match="identity could not be verified"):
            await client.generate_terminal_key(TerminalKind.COUNTER)
        await client.close()
        assert not log_events(impostor, "hsm.connection_opened")


async def test_cardsvc_refuses_an_hsm_certificate_for_another_address(tmp_path: Path) -> None:
    credentials = tmp_path / "tls"
    make_credentials(credentials, hosts=["hsm.example.invalid"])  # right CA, wrong address
    with HsmProcess(tmp_path / "hsm", credentials_dir=credentials) as misnamed:
        tls = misnamed.client_tls()
        client = HsmClient(misnamed.host, misnamed.port, tls=tls, timeout=2.0)
        with pytest.raises(HsmUnavailable, match="identity could not be verified"):
            await client.echo(b"x")
        await client.close()
        assert not log_events(misnamed, "hsm.connection_opened")


# --- key usage inside the HSM ----------------------------------------------------------------


@pytest.mark.parametrize("kind", [TerminalKind.POS, TerminalKind.HIS, TerminalKind.KIOSK])
async def test_only_a_counter_key_can_receive_card_keys(
    client: HsmClient, kind: TerminalKind
) -> None:
    terminal = await client.generate_terminal_key(kind)
    with pytest.raises(HsmKeyUsageRefused) as refused:
        await client.build_personalization_blob(REGION, CARD_SN, terminal.key_under_lmk)
    assert refused.value.details == {"hsm_status": protocol.Status.KEY_USAGE.value}
    with pytest.raises(HsmKeyUsageRefused):  # nor unblock a card's PIN
        await client.pin_unblock_mac(REGION, CARD_SN, terminal.key_under_lmk, bytes(8))
    # Sign-in and KCV still take a key of any kind.
    rs, rt = os.urandom(16), os.urandom(16)
    cryptogram = profile.terminal_cryptogram(terminal.clear_key, rs, rt)
    await client.verify_terminal_cryptogram(terminal.key_under_lmk, rs, rt, cryptogram)
    assert await client.key_check_value(terminal.key_under_lmk) == terminal.kcv


async def test_legacy_kindless_key_signs_in_but_cannot_receive_card_keys(
    hsm: HsmProcess, client: HsmClient
) -> None:
    k_term = os.urandom(16)
    legacy = wrap_key(bytes.fromhex(hsm.lmk_hex), KeyType.TERM, k_term)  # made before kinds
    rs, rt = os.urandom(16), os.urandom(16)
    cryptogram = profile.terminal_cryptogram(k_term, rs, rt)
    await client.verify_terminal_cryptogram(legacy, rs, rt, cryptogram)
    with pytest.raises(HsmKeyUsageRefused):
        await client.build_personalization_blob(REGION, CARD_SN, legacy)
    with pytest.raises(HsmKeyUsageRefused):
        await client.pin_unblock_mac(REGION, CARD_SN, legacy, bytes(8))


async def test_unprovisioned_region_is_refused_and_gets_no_keys(
    hsm: HsmProcess, client: HsmClient
) -> None:
    keystore = hsm.keystore_dir / "keystore.json"
    before = keystore.read_bytes()
    counter = await client.generate_terminal_key(TerminalKind.COUNTER)
    card_sn = UNPROVISIONED + CARD_SN[6:]
    with pytest.raises(HsmRegionNotProvisioned):
        await client.build_personalization_blob(UNPROVISIONED, card_sn, counter.key_under_lmk)
    assert keystore.read_bytes() == before
    assert UNPROVISIONED not in json.loads(before)["regions"]
    with pytest.raises(HsmError):  # and still no keys to verify a card with
        await client.verify_card_cryptogram(UNPROVISIONED, card_sn, 1, bytes(16), bytes(16))


# --- bounded resources -----------------------------------------------------------------------


async def test_an_idle_connection_is_closed(limited_hsm: HsmProcess) -> None:
    reader, writer = await asyncio.open_connection(
        limited_hsm.host,
        limited_hsm.port,
        ssl=limited_hsm.client_tls(),
        server_hostname=limited_hsm.host,
    )
    try:
        writer.write(ECHO_FRAME)
        assert b"EC00" in await asyncio.wait_for(reader.read(4096), 5)
        assert await read_until_closed(reader, within=4.0) == b""  # closed after 1 s idle
    finally:
        writer.transport.abort()
    assert await logged(limited_hsm, "hsm.idle_timeout")


async def test_a_handshake_must_finish_in_time(limited_hsm: HsmProcess) -> None:
    reader, writer = await asyncio.open_connection(limited_hsm.host, limited_hsm.port)
    try:
        assert await read_until_closed(reader, within=4.0) == b""  # says nothing: dropped
    finally:
        writer.transport.abort()
    assert await logged(limited_hsm, "hsm.handshake_failed")


async def test_connections_beyond_the_cap_are_refused(limited_hsm: HsmProcess) -> None:
    held = [await open_authorised(limited_hsm) for _ in range(2)]
    try:
        # Plain or TLS, the third connection is closed at once: no handshake, no answer.
        assert_no_answer(await attempt(limited_hsm, limited_hsm.client_tls(), ECHO_FRAME))
        assert await logged(limited_hsm, "hsm.connection_refused")
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.3)  # the server notices the closes
    _, writer = await open_authorised(limited_hsm)
    writer.transport.abort()


async def open_authorised(
    hsm: HsmProcess,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        hsm.host, hsm.port, ssl=hsm.client_tls(), server_hostname=hsm.host
    )
    writer.write(ECHO_FRAME)
    assert b"EC00" in await asyncio.wait_for(reader.read(4096), 5)
    return reader, writer


# --- the key-management log ------------------------------------------------------------------


async def test_key_management_is_logged_without_key_material(
    hsm: HsmProcess, client: HsmClient
) -> None:
    counter = await client.generate_terminal_key(TerminalKind.COUNTER)
    blob = await client.build_personalization_blob(REGION, CARD_SN, counter.key_under_lmk)
    lines = log_events(hsm, "hsm.key_management")
    tk = [line for line in lines if line["command"] == "TK" and line.get("kcv") == counter.kcv]
    pb = [line for line in lines if line["command"] == "PB" and line.get("kcv") == counter.kcv]
    assert tk and tk[0]["kind"] == "counter" and tk[0]["peer_subject"] == "CN=cardsvc"
    assert pb and pb[0]["region"] == REGION and pb[0]["kind"] == "counter"
    assert pb[0]["peer_subject"] == "CN=cardsvc" and "kcv_auth" in pb[0]
    provisioned = [line for line in lines if line["command"] == "provision-region"]
    assert provisioned and provisioned[0]["region"] == REGION
    text = hsm.log_path.read_text().lower()
    k_auth, k_txn = profile.unseal_card_keys(counter.clear_key, CARD_SN, blob)
    for secret in (counter.clear_key, counter.key_under_lmk, k_auth, k_txn):
        assert secret.hex() not in text
    assert blob.lower() not in text and hsm.lmk_hex.lower() not in text


# --- no plain-text fallback ------------------------------------------------------------------


def test_hsm_stub_without_credentials_does_not_start(tmp_path: Path) -> None:
    env = {**os.environ, "HSM_LMK": "11" * 16, "PYTHONPATH": str(REPO_ROOT)}
    for name in ("HSM_CREDENTIALS", "HSM_TLS_CERT", "HSM_TLS_KEY", "HSM_TLS_CLIENT_CA"):
        env.pop(name, None)
    started = subprocess.run(
        [sys.executable, "-m", "hsm_stub", "--port", "0", "--keystore", str(tmp_path)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=30,
    )
    assert started.returncode == 3
    assert b"listening" not in started.stdout
    errors = started.stderr.decode().strip().splitlines()
    assert len(errors) == 1 and "mutual TLS only" in errors[0]


def test_cardsvc_without_hsm_credentials_does_not_start() -> None:
    env = {
        **os.environ,
        "CARDSVC_ADMIN_TOKEN": "t" * 16,
        "CARDSVC_DATA_KEY": "00" * 32,
        "PYTHONPATH": str(REPO_ROOT),
    }
    for name in ("CARDSVC_HSM_CA_FILE", "CARDSVC_HSM_CERT_FILE", "CARDSVC_HSM_KEY_FILE"):
        env.pop(name, None)
    started = subprocess.run(
        [sys.executable, "-m", "cardsvc", "serve"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=30,
    )
    assert started.returncode == 2
    assert b"listening" not in started.stdout
    assert b"CARDSVC_HSM_CA_FILE" in started.stderr.strip().splitlines()[-1]


# --- one keystore, two processes ---------------------------------------------------------


def _provision(hsm: HsmProcess, admdvs: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "hsm_stub", "provision-region", admdvs],
        check=True,
        capture_output=True,
        cwd=REPO_ROOT,
        env={**os.environ, "HSM_KEYSTORE": str(hsm.keystore_dir), "HSM_LMK": hsm.lmk_hex},
    )


async def test_provisioning_while_hsm_stub_runs_loses_no_key(tmp_path: Path) -> None:
    """provision-region while hsm_stub runs, then the running stub's first audit anchor
    (which creates its key): both are in the keystore, and the running stub serves the new
    region without a restart. And the other way round: the anchor key survives a later
    provisioning."""
    with HsmProcess(tmp_path / "hsm", regions=[REGION]) as hsm:
        keystore = hsm.keystore_dir / "keystore.json"
        async with HsmClient(hsm.host, hsm.port, tls=hsm.client_tls(), connections=1) as client:
            await client.generate_terminal_key(TerminalKind.COUNTER)  # the stub is serving
            _provision(hsm, UNPROVISIONED)
            mac = await client.audit_anchor_mac(b"anchor")
            stored = json.loads(keystore.read_text())
            assert set(stored["regions"]) == {REGION, UNPROVISIONED}, "a region was lost"
            assert "audit_anchor" in stored
            counter = await client.generate_terminal_key(TerminalKind.COUNTER)
            card_sn = UNPROVISIONED + CARD_SN[6:]
            assert await client.build_personalization_blob(
                UNPROVISIONED, card_sn, counter.key_under_lmk
            )

            _provision(hsm, "330200")  # after the anchor key exists
            stored = json.loads(keystore.read_text())
            assert set(stored["regions"]) == {REGION, UNPROVISIONED, "330200"}
            assert "audit_anchor" in stored
            assert await client.verify_audit_anchor(b"anchor", mac)
        hsm.restart()  # what the file holds is what a restarted stub serves
        async with HsmClient(hsm.host, hsm.port, tls=hsm.client_tls(), connections=1) as client:
            assert await client.verify_audit_anchor(b"anchor", mac)


# --- squatters that never handshake ------------------------------------------------------


async def test_squatters_that_never_handshake_do_not_lock_out_an_authorised_host(
    tmp_path: Path,
) -> None:
    """16 plain-TCP sockets from four other addresses (127.0.0.2-5: loopback, another
    host to the server) that never start TLS, reconnecting as soon as they are dropped,
    more than the handshake budget. The authorised host keeps connecting and is served:
    handshakes have a budget of their own, per address and in all (a full budget is shared
    fairly between addresses: 6 among 5 gives each at least one), and authenticated
    connections theirs."""
    limits = [
        *("--max-connections", "4", "--max-handshakes", "6"),
        *("--max-handshakes-per-address", "2", "--handshake-timeout", "2"),
        *("--idle-timeout", "5"),
    ]
    with HsmProcess(tmp_path / "hsm", regions=[REGION], extra_args=limits) as hsm:
        stop = asyncio.Event()

        async def squatter(address: str) -> None:
            while not stop.is_set():
                try:
                    reader, writer = await asyncio.open_connection(
                        hsm.host, hsm.port, local_addr=(address, 0)
                    )
                except OSError:
                    await asyncio.sleep(0.01)
                    continue
                try:
                    await reader.read(1)  # until the server drops it
                except OSError:
                    pass
                finally:  # also when cancelled at the end
                    writer.transport.abort()

        addresses = [f"127.0.0.{n}" for n in (2, 3, 4, 5)]
        tasks = [asyncio.create_task(squatter(a)) for a in addresses for _ in range(4)]
        try:
            await asyncio.sleep(0.5)
            served = 0
            for _ in range(10):
                try:
                    _, writer = await open_authorised(hsm)
                    served += 1
                    writer.transport.abort()
                except (OSError, TimeoutError, AssertionError):
                    pass
                await asyncio.sleep(0.1)
            async with HsmClient(
                hsm.host, hsm.port, tls=hsm.client_tls(), connections=1, timeout=3.0
            ) as client:  # one handshake at a time: within this address's fair share
                assert (await client.generate_terminal_key(TerminalKind.COUNTER)).kcv
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert served == 10
        text = hsm.log_path.read_text()
        assert "too many handshakes from this address" in text  # the per-address bound
        assert "hsm.handshake_displaced" in text  # and the full budget, shared
