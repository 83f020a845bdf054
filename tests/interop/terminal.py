"""Independent interoperability terminal for cardsvc.

Written only from docs/protocol.md (crypto profile, card profile) and schema/openapi.yaml: it shows
that a third party can sign in, sign requests, personalise and use a card with nothing but
the document, the standard library, ``cryptography`` and ``aiohttp``.
It deliberately imports nothing from ``cardsvc`` or ``hsm_stub``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFCMAC, CounterLocation, Mode

SESSION_LABEL = b"cardsvc session"

# --- crypto profile ---------------------------------------------------------------------


def sm4_ecb(key: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def sm4_cmac(key: bytes, data: bytes) -> bytes:
    mac = CMAC(algorithms.SM4(key))
    mac.update(data)
    return mac.finalize()


def kcv(key: bytes) -> str:
    """Key check value: first 3 bytes of SM4-ECB(key, 16 zero bytes), 6 hex chars."""
    return sm4_ecb(key, bytes(16))[:3].hex()


def diversify(master_key: bytes, card_sn: str) -> bytes:
    """div(MK, card_sn) = SM4-ECB(MK, D || (D XOR ff*8)), D = bytes.fromhex(card_sn)[8:16]."""
    d = bytes.fromhex(card_sn)[8:16]
    return sm4_ecb(master_key, d + bytes(b ^ 0xFF for b in d))


def terminal_cryptogram(k_term: bytes, rs: bytes, rt: bytes) -> bytes:
    return sm4_cmac(k_term, rs + rt)


def server_cryptogram(k_term: bytes, rs: bytes, rt: bytes) -> bytes:
    return sm4_cmac(k_term, rt + rs)


def session_key(k_term: bytes, rs: bytes, rt: bytes) -> bytes:
    """NIST SP 800-108 counter-mode KDF with SM4-CMAC, 32 bytes."""
    kdf = KBKDFCMAC(
        algorithm=algorithms.SM4,
        mode=Mode.CounterMode,
        length=32,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=SESSION_LABEL,
        context=rs + rt,
        fixed=None,
    )
    return kdf.derive(k_term)


def pin_unblock_command(k_txn: bytes, card_sn: str, card_challenge: bytes) -> bytes:
    """RESET RETRY COUNTER as the issuer signs it, written out from the PIN unblock text:
    K_unblock = HMAC-SHA256(K_txn, [1]4 || label || 00 || card_sn || [128]4)[:16],
    MAC = CMAC(K_unblock, 0C 2C 03 00 || Rc)[:8], command = 0C 2C 03 00 0A 8E 08 || MAC."""
    fixed = b"cardsvc pin unblock\x00" + bytes.fromhex(card_sn) + (128).to_bytes(4, "big")
    k_unblock = hmac.new(k_txn, (1).to_bytes(4, "big") + fixed, hashlib.sha256).digest()[:16]
    header = bytes.fromhex("0c2c0300")
    mac = sm4_cmac(k_unblock, header + card_challenge)[:8]
    return header + bytes.fromhex("0a8e08") + mac


def string_to_sign(method: str, target: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nhex(SHA-256(body)).

    ``target`` is the path plus ``?query`` exactly as sent; with no query it is just the path.
    """
    lines = [method.upper(), target, timestamp, nonce, hashlib.sha256(body).hexdigest()]
    return "\n".join(lines).encode()


def sign(key: bytes, method: str, target: str, timestamp: str, nonce: str, body: bytes) -> str:
    msg = string_to_sign(method, target, timestamp, nonce, body)
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def unseal_card_keys(k_term: bytes, card_sn: str, blob_hex: str) -> tuple[bytes, bytes]:
    """Personalisation blob hex(nonce12 || ciphertext || tag16), SM4-GCM, AAD = ASCII card_sn."""
    blob = bytes.fromhex(blob_hex)
    nonce, ciphertext, tag = blob[:12], blob[12:-16], blob[-16:]
    dec = Cipher(algorithms.SM4(k_term), modes.GCM(nonce, tag)).decryptor()
    dec.authenticate_additional_data(card_sn.encode("ascii"))
    plain = dec.update(ciphertext) + dec.finalize()  # raises InvalidTag if tampered
    if len(plain) != 32:
        raise ValueError(f"expected K_auth || K_txn (32 bytes), got {len(plain)}")
    return plain[:16], plain[16:]


# --- emulated card ----------------------------------------------------------------------


class CardError(Exception):
    """A non-9000 status word."""

    def __init__(self, sw: str) -> None:
        super().__init__(sw)
        self.sw = sw


@dataclass
class EmulatedCard:
    """In-memory social security card: the security-relevant half of the card profile."""

    card_sn: str
    k_auth: bytes
    k_txn: bytes
    pin: str
    records: dict[str, dict[str, str]] = field(default_factory=dict)
    tries_left: int = 3
    _verified: bool = False

    def power_cycle(self) -> None:
        self._verified = False

    def verify(self, pin: str) -> None:
        """VERIFY 00 20 00 00 03 <PIN BCD>: 9000, 63Cx on a wrong PIN, 6983 when blocked."""
        if self.tries_left == 0:
            raise CardError("6983")
        if not hmac.compare_digest(pin.encode(), self.pin.encode()):
            self.tries_left -= 1
            raise CardError("6983" if self.tries_left == 0 else f"63C{self.tries_left}")
        self.tries_left = 3
        self._verified = True

    def internal_authenticate(self, key_ref: int, challenge: bytes) -> bytes:
        """INTERNAL AUTHENTICATE 00 88 00 <ref> 10 <R>: SM4-ECB(K, R)."""
        if len(challenge) != 16:
            raise CardError("6700")
        if key_ref == 1:
            return sm4_ecb(self.k_auth, challenge)
        if key_ref == 2:
            if not self._verified:
                raise CardError("6982")  # security status not satisfied: no PIN yet
            return sm4_ecb(self.k_txn, challenge)
        raise CardError("6A88")


# --- HTTP terminal ----------------------------------------------------------------------


class ServiceError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class Response:
    status: int
    body: Any

    def ok(self) -> Any:
        if not 200 <= self.status < 300:
            raise ServiceError(self.status, self.body)
        return self.body


class InteropTerminal:
    def __init__(
        self, http: aiohttp.ClientSession, base_url: str, terminal_id: str, k_term: bytes
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.terminal_id = terminal_id
        self.k_term = k_term
        self.session_id: str | None = None
        self.session_key: bytes | None = None
        self.expires_at: Any = None

    async def sign_in(self) -> None:
        first = await self._send("POST", "/v1/terminals/sign-in", {"terminal_id": self.terminal_id})
        rs = bytes.fromhex(first.ok()["challenge"])
        rt = secrets.token_bytes(16)
        complete = await self._send(
            "POST",
            "/v1/terminals/sign-in/complete",
            {
                "terminal_id": self.terminal_id,
                "challenge": rs.hex(),
                "terminal_random": rt.hex(),
                "cryptogram": terminal_cryptogram(self.k_term, rs, rt).hex(),
            },
        )
        body = complete.ok()
        expected = server_cryptogram(self.k_term, rs, rt)
        if not hmac.compare_digest(bytes.fromhex(body["server_cryptogram"]), expected):
            raise ValueError("server cryptogram mismatch: the service does not hold our K_term")
        self.session_id = body["session_id"]
        self.session_key = session_key(self.k_term, rs, rt)
        self.expires_at = body["expires_at"]

    def signed_headers(
        self, method: str, target: str, body: bytes, *, nonce: str | None = None
    ) -> dict[str, str]:
        if self.session_key is None or self.session_id is None:
            raise RuntimeError("sign_in() first")
        timestamp = str(int(time.time()))
        nonce = nonce or secrets.token_hex(16)
        return {
            "X-Terminal-Id": self.terminal_id,
            "X-Session-Id": self.session_id,
            "X-Timestamp": timestamp,
            "X-Nonce": nonce,
            "X-Signature": sign(self.session_key, method, target, timestamp, nonce, body),
        }

    async def request(self, method: str, target: str, json_body: Any = None) -> Response:
        """A signed request. ``target`` is the already-encoded path (plus ``?query``)."""
        body = encode(json_body)
        return await self.send_raw(method, target, body, self.signed_headers(method, target, body))

    async def send_raw(
        self, method: str, target: str, body: bytes, headers: dict[str, str]
    ) -> Response:
        """Send exactly these bytes and headers (used for negative tests)."""
        if body:
            headers = {**headers, "Content-Type": "application/json"}
        async with self.http.request(
            method, self.base_url + target, data=body, headers=headers
        ) as resp:
            return Response(resp.status, await _read(resp))

    async def _send(self, method: str, target: str, json_body: Any) -> Response:
        return await self.send_raw(method, target, encode(json_body), {})


def encode(json_body: Any) -> bytes:
    if json_body is None:
        return b""
    return json.dumps(json_body, ensure_ascii=False, separators=(",", ":")).encode()


async def _read(resp: aiohttp.ClientResponse) -> Any:
    raw = await resp.read()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")
