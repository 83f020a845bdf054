"""docs/protocol.md against the code: every test vector and every APDU example in it.

The document is the reference for clients written in other languages, so its figures must be
the code's. This test reads the fenced blocks out of the document (``vector KIND``: lines of
``name: value``, a value hex or a JSON string; ``apdu START``: ``> command`` / ``< answer``
lines) and recomputes every output with ``cardcrypto.profile`` and the virtual card. A
changed digit in the document or a changed formula in the code fails here; so does a vector
with a field missing or unknown, a kind of vector removed, or an error code, setting or
path named in the document that the code does not have, or a link to a heading it lacks.
The independent interop client must reproduce the crypto vectors as well.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cardcrypto import profile
from cardsvc.cards.records import CardHolder, CardRecords, build_records
from cardsvc.terminal_sdk.personalise import personalisation_commands
from cardsvc.vcard.card import VirtualCard
from cardsvc.vcard.state import blank
from tests.interop import terminal as interop

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"

Value = bytes | str
Vector = dict[str, Value]

# --- reading the document ------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    info: str  # the fence's info string, e.g. "vector sign-in"
    lines: tuple[str, ...]
    line_no: int  # of the opening fence, for messages


def fenced_blocks(text: str) -> Iterator[Block]:
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^```(\S.*)?$", lines[i])
        if not opening:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end] != "```":
            end += 1
        assert end < len(lines), f"docs/protocol.md:{i + 1}: fence never closed"
        yield Block((opening.group(1) or "").strip(), tuple(lines[i + 1 : end]), i + 1)
        i = end + 1


def parse_value(raw: str) -> Value:
    raw = raw.strip()
    if raw.startswith('"'):
        text = json.loads(raw)
        assert isinstance(text, str), raw
        return text
    assert re.fullmatch(r"([0-9a-f]{2})*", raw), f"not lowercase hex: {raw!r}"
    return bytes.fromhex(raw)


def parse_vector(block: Block) -> Vector:
    vector: Vector = {}
    for line in block.lines:
        name, sep, raw = line.partition(":")
        assert sep and re.fullmatch(r"[a-z0-9_]+", name), f"not `name: value`: {line!r}"
        assert name not in vector, f"{name} twice in the block at line {block.line_no}"
        vector[name] = parse_value(raw)
    return vector


@dataclass(frozen=True)
class Exchange:
    command: bytes
    answer: str  # hex, upper case, "XX" where the card chooses a random byte


def parse_apdu(block: Block) -> list[Exchange]:
    exchanges: list[Exchange] = []
    command: bytes | None = None
    for line in block.lines:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        arrow, hex_text = text[0], re.sub(r"\s+", "", text[1:]).upper()
        if arrow == ">":
            assert command is None, f"two commands in a row: {line!r}"
            command = bytes.fromhex(hex_text)
        else:
            assert arrow == "<" and command is not None, f"answer without command: {line!r}"
            assert re.fullmatch(r"([0-9A-F]{2}|XX)*[0-9A-F]{4}", hex_text), line
            exchanges.append(Exchange(command, hex_text))
            command = None
    assert command is None, f"a command without an answer in the block at {block.line_no}"
    return exchanges


DOC_TEXT = DOC.read_text(encoding="utf-8")
BLOCKS = list(fenced_blocks(DOC_TEXT))
VECTORS = [
    (b.info.split()[1], parse_vector(b), b.line_no) for b in BLOCKS if b.info.startswith("vector ")
]
SESSIONS = [
    (b.info.split()[1], parse_apdu(b), b.line_no) for b in BLOCKS if b.info.startswith("apdu ")
]


def the_vector(kind: str) -> Vector:
    found = [v for k, v, _ in VECTORS if k == kind]
    assert len(found) == 1, f"expected one `vector {kind}` block, found {len(found)}"
    return found[0]


# --- the checks, one per kind --------------------------------------------------------------


def b(vector: Vector, name: str) -> bytes:
    value = vector[name]
    assert isinstance(value, bytes), f"{name} must be hex"
    return value


def s(vector: Vector, name: str) -> str:
    value = vector[name]
    assert isinstance(value, str), f"{name} must be a quoted text"
    return value


def check_diversification(v: Vector) -> None:
    mk, card_sn = b(v, "master_key"), s(v, "card_sn")
    d = bytes.fromhex(card_sn)[8:16]
    assert b(v, "d") == d
    assert b(v, "block") == d + bytes(x ^ 0xFF for x in d)
    assert b(v, "card_key") == profile.diversify(mk, card_sn)


def check_card_cryptogram(v: Vector) -> None:
    card_sn, challenge = s(v, "card_sn"), b(v, "challenge")
    k_auth = profile.diversify(b(v, "imk_auth"), card_sn)
    k_txn = profile.diversify(b(v, "imk_txn"), card_sn)
    assert b(v, "k_auth") == k_auth
    assert b(v, "k_txn") == k_txn
    assert b(v, "cryptogram_01") == profile.card_cryptogram(k_auth, challenge)
    assert b(v, "cryptogram_02") == profile.card_cryptogram(k_txn, challenge)


def check_sign_in(v: Vector) -> None:
    k_term, rs, rt = b(v, "k_term"), b(v, "rs"), b(v, "rt")
    assert b(v, "terminal_cryptogram") == profile.terminal_cryptogram(k_term, rs, rt)
    assert b(v, "server_cryptogram") == profile.server_cryptogram(k_term, rs, rt)
    # The fixed data as the document lays it out, and the session key rebuilt from it with
    # two CMACs: the layout a client in another language copies is the one the code uses.
    fixed = (
        profile.SESSION_KDF_LABEL + b"\x00" + rs + rt + (8 * profile.SESSION_KEY_LEN).to_bytes(4)
    )
    assert b(v, "kdf_fixed_data") == fixed
    rebuilt = b"".join(profile.sm4_cmac(k_term, i.to_bytes(4) + fixed) for i in (1, 2))
    assert b(v, "session_key") == rebuilt == profile.derive_session_key(k_term, rs, rt)


def check_request_signature(v: Vector) -> None:
    body = s(v, "body").encode("utf-8")
    path_qs = profile.path_with_query(s(v, "path"), s(v, "query"))
    fields = (s(v, "method"), path_qs, s(v, "timestamp"), s(v, "nonce"))
    assert b(v, "body_sha256") == hashlib.sha256(body).digest()
    assert s(v, "canonical_request").encode("utf-8") == profile.canonical_request(*fields, body)
    expected = profile.request_signature(b(v, "session_key"), *fields, body)
    assert b(v, "signature") == bytes.fromhex(expected)


def check_personalisation_blob(v: Vector) -> None:
    k_term, card_sn, nonce = b(v, "k_term"), s(v, "card_sn"), b(v, "nonce")
    k_auth, k_txn = b(v, "k_auth"), b(v, "k_txn")
    blob = bytes.fromhex(profile.seal_card_keys(k_term, card_sn, k_auth, k_txn, nonce=nonce))
    assert b(v, "aad") == card_sn.encode("ascii")
    assert b(v, "blob") == blob
    n = profile.GCM_NONCE_LEN
    assert b(v, "blob") == nonce + b(v, "ciphertext") + b(v, "tag")
    assert b(v, "ciphertext") == blob[n : n + 2 * profile.KEY_LEN]
    assert b(v, "tag") == blob[-profile.GCM_TAG_LEN :]
    assert profile.unseal_card_keys(k_term, card_sn, b(v, "blob").hex()) == (k_auth, k_txn)


def check_kcv(v: Vector) -> None:
    assert b(v, "kcv").hex() == profile.key_check_value(b(v, "key"))


def check_pin_unblock(v: Vector) -> None:
    k_txn, card_sn, rc = b(v, "k_txn"), s(v, "card_sn"), b(v, "card_challenge")
    # The fixed data as the document lays it out, and K_unblock rebuilt from it with one HMAC.
    fixed = profile.UNBLOCK_KDF_LABEL + b"\x00" + bytes.fromhex(card_sn) + (128).to_bytes(4)
    assert b(v, "kdf_fixed_data") == fixed
    rebuilt = hmac.new(k_txn, (1).to_bytes(4) + fixed, hashlib.sha256).digest()[:16]
    assert b(v, "k_unblock") == rebuilt == profile.pin_unblock_key(k_txn, card_sn)
    assert b(v, "mac_input") == profile.PIN_UNBLOCK_HEADER + rc
    assert b(v, "mac") == profile.sm4_cmac(rebuilt, b(v, "mac_input"))[:8]
    assert b(v, "mac") == profile.pin_unblock_mac(rebuilt, rc)
    assert b(v, "command") == profile.pin_unblock_command(b(v, "mac"))


def card_records(card: Vector) -> CardRecords:
    return build_records(
        card_sn=s(card, "card_sn"),
        card_no=s(card, "card_no"),
        admdvs=s(card, "admdvs"),
        issue_date=dt.date.fromisoformat(s(card, "issue_date")),
        expiry_date=dt.date.fromisoformat(s(card, "expiry_date")),
        holder=CardHolder(
            certno=s(card, "certno"),
            psn_name=s(card, "psn_name"),
            gend=s(card, "gend"),
            brdy=dt.date.fromisoformat(s(card, "brdy")),
        ),
    )


def check_card(v: Vector) -> None:
    card_records(v)  # a card the service could issue
    assert profile.key_check_value(b(v, "k_auth"))  # 16-byte keys
    assert profile.key_check_value(b(v, "k_txn"))


@dataclass(frozen=True)
class Kind:
    inputs: frozenset[str]
    outputs: frozenset[str]
    check: Callable[[Vector], None]


def kind(inputs: str, outputs: str, check: Callable[[Vector], None]) -> Kind:
    return Kind(frozenset(inputs.split()), frozenset(outputs.split()), check)


KINDS: dict[str, Kind] = {
    "diversification": kind("master_key card_sn", "d block card_key", check_diversification),
    "card-cryptogram": kind(
        "imk_auth imk_txn card_sn challenge",
        "k_auth k_txn cryptogram_01 cryptogram_02",
        check_card_cryptogram,
    ),
    "sign-in": kind(
        "k_term rs rt",
        "terminal_cryptogram server_cryptogram kdf_fixed_data session_key",
        check_sign_in,
    ),
    "request-signature": kind(
        "session_key method path query timestamp nonce body",
        "body_sha256 canonical_request signature",
        check_request_signature,
    ),
    "personalisation-blob": kind(
        "k_term card_sn k_auth k_txn nonce", "aad ciphertext tag blob", check_personalisation_blob
    ),
    "kcv": kind("key", "kcv", check_kcv),
    "pin-unblock": kind(
        "k_txn card_sn card_challenge",
        "kdf_fixed_data k_unblock mac_input mac command",
        check_pin_unblock,
    ),
    "card": kind(
        "card_no card_sn admdvs issue_date expiry_date certno psn_name gend brdy k_auth k_txn pin",
        "",
        check_card,
    ),
}


# --- the vectors ---------------------------------------------------------------------------


def test_the_document_has_every_kind_of_vector_and_no_other() -> None:
    assert {k for k, _, _ in VECTORS} == set(KINDS)
    assert {start for start, _, _ in SESSIONS} == {"blank", "issued"}


@pytest.mark.parametrize(
    ("kind_name", "vector", "line"), VECTORS, ids=[f"{k}@{n}" for k, _, n in VECTORS]
)
def test_vector(kind_name: str, vector: Vector, line: int) -> None:
    spec = KINDS[kind_name]
    assert set(vector) == spec.inputs | spec.outputs, f"fields of the vector at line {line}"
    spec.check(vector)


def changed(value: Value) -> Value:
    """The value with its last hex digit (or character) changed."""
    if isinstance(value, bytes):
        return value[:-1] + bytes([value[-1] ^ 0x01])
    return value[:-1] + ("0" if value[-1] != "0" else "1")


@pytest.mark.parametrize(
    ("kind_name", "vector", "line"), VECTORS, ids=[f"{k}@{n}" for k, _, n in VECTORS]
)
def test_one_changed_output_digit_is_caught(kind_name: str, vector: Vector, line: int) -> None:
    del line
    for output in KINDS[kind_name].outputs:
        with pytest.raises(AssertionError):
            KINDS[kind_name].check({**vector, output: changed(vector[output])})


def test_the_vectors_chain() -> None:
    """The examples tell one story: the card's keys, the session key, the counter's key."""
    cryptogram, sign_in, blob = (
        the_vector(k) for k in ("card-cryptogram", "sign-in", "personalisation-blob")
    )
    card = the_vector("card")
    for name in ("k_auth", "k_txn", "card_sn"):
        assert card[name] == cryptogram[name] == blob[name]
    unblock = the_vector("pin-unblock")
    assert (unblock["k_txn"], unblock["card_sn"]) == (card["k_txn"], card["card_sn"])
    assert unblock["card_challenge"] == card_random(profile.CARD_CHALLENGE_LEN)
    assert blob["k_term"] == sign_in["k_term"]
    for signed in (v for k, v, _ in VECTORS if k == "request-signature"):
        assert signed["session_key"] == sign_in["session_key"]


def test_the_independent_client_reproduces_the_vectors() -> None:
    """``tests/interop/terminal.py`` was written from the profile's text, importing nothing of
    cardsvc: a second implementation that gets the same bytes."""
    div = the_vector("diversification")
    assert interop.diversify(b(div, "master_key"), s(div, "card_sn")) == b(div, "card_key")
    card = the_vector("card-cryptogram")
    k_auth = interop.diversify(b(card, "imk_auth"), s(card, "card_sn"))
    assert interop.sm4_ecb(k_auth, b(card, "challenge")) == b(card, "cryptogram_01")
    sign_in = the_vector("sign-in")
    k_term, rs, rt = b(sign_in, "k_term"), b(sign_in, "rs"), b(sign_in, "rt")
    assert interop.terminal_cryptogram(k_term, rs, rt) == b(sign_in, "terminal_cryptogram")
    assert interop.server_cryptogram(k_term, rs, rt) == b(sign_in, "server_cryptogram")
    assert interop.session_key(k_term, rs, rt) == b(sign_in, "session_key")
    for v in (v for k, v, _ in VECTORS if k == "request-signature"):
        target = s(v, "path") + (f"?{s(v, 'query')}" if s(v, "query") else "")
        fields = (s(v, "method"), target, s(v, "timestamp"), s(v, "nonce"), s(v, "body").encode())
        assert interop.string_to_sign(*fields) == s(v, "canonical_request").encode()
        assert interop.sign(b(v, "session_key"), *fields) == b(v, "signature").hex()
    blob = the_vector("personalisation-blob")
    assert interop.unseal_card_keys(
        b(blob, "k_term"), s(blob, "card_sn"), b(blob, "blob").hex()
    ) == (
        b(blob, "k_auth"),
        b(blob, "k_txn"),
    )
    for v in (v for k, v, _ in VECTORS if k == "kcv"):
        assert interop.kcv(b(v, "key")) == b(v, "kcv").hex()
    unblock = the_vector("pin-unblock")
    assert interop.pin_unblock_command(
        b(unblock, "k_txn"), s(unblock, "card_sn"), b(unblock, "card_challenge")
    ) == b(unblock, "command")


# --- the APDU examples ---------------------------------------------------------------------


def answer_matches(reply: bytes, expected: str) -> bool:
    got = reply.hex().upper()
    pairs = [expected[i : i + 2] for i in range(0, len(expected), 2)]
    return len(got) == len(expected) and all(
        want in ("XX", got[2 * i : 2 * i + 2]) for i, want in enumerate(pairs)
    )


def personalisation() -> list[Exchange]:
    (found,) = [exchanges for start, exchanges, _ in SESSIONS if start == "blank"]
    return found


def card_random(n: int) -> bytes:
    """The example card's "random": A1 A2 …, so that a PIN unblock's MAC can be written down."""
    return bytes(range(0xA1, 0xA1 + n))


def issued_card() -> VirtualCard:
    """A blank card personalised by the document's own personalisation example."""
    card = VirtualCard(blank(), random=card_random)
    for exchange in personalisation():
        card.process(exchange.command)
    card.reset()
    return card


def run_session(start: str, exchanges: list[Exchange]) -> None:
    card = VirtualCard(blank()) if start == "blank" else issued_card()
    card.power_on()
    for exchange in exchanges:
        reply = card.process(exchange.command)
        assert answer_matches(reply, exchange.answer), (
            f"{exchange.command.hex().upper()}: the card answers {reply.hex().upper()},"
            f" the document says {exchange.answer}"
        )


@pytest.mark.parametrize(
    ("start", "exchanges", "line"), SESSIONS, ids=[f"{s}@{n}" for s, _, n in SESSIONS]
)
def test_apdu_example(start: str, exchanges: list[Exchange], line: int) -> None:
    del line
    run_session(start, exchanges)


@pytest.mark.parametrize(
    ("start", "exchanges", "line"), SESSIONS, ids=[f"{s}@{n}" for s, _, n in SESSIONS]
)
def test_one_changed_answer_digit_is_caught(
    start: str, exchanges: list[Exchange], line: int
) -> None:
    del line
    for i, exchange in enumerate(exchanges):
        answer = exchange.answer
        j = max(k for k, ch in enumerate(answer) if ch != "X")
        wrong = answer[:j] + ("1" if answer[j] == "0" else "0") + answer[j + 1 :]
        mutated = [*exchanges[:i], Exchange(exchange.command, wrong), *exchanges[i + 1 :]]
        with pytest.raises(AssertionError):
            run_session(start, mutated)


def test_the_personalisation_example_is_what_the_writer_sends() -> None:
    card = the_vector("card")
    expected = personalisation_commands(
        card_records(card), b(card, "k_auth"), b(card, "k_txn"), s(card, "pin")
    )
    assert [e.command for e in personalisation()] == expected


def test_the_example_card_holds_the_example_card() -> None:
    card, state = the_vector("card"), issued_card().state
    records = card_records(card)
    assert (state.ef05, state.ef06) == (records.ef05, records.ef06)
    assert (state.k_auth, state.k_txn, state.pin) == (
        b(card, "k_auth").hex(),
        b(card, "k_txn").hex(),
        s(card, "pin"),
    )
    assert state.lifecycle == "locked"


# --- names the document uses -----------------------------------------------------------------


def test_every_path_named_exists() -> None:
    paths = set(re.findall(r"`((?:cardsvc|hsm_stub|tests|schema|docs)/[\w./-]+)`", DOC_TEXT))
    assert paths, "the document names the modules it describes"
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []


def test_every_error_code_and_setting_named_is_the_codes() -> None:
    named = set(re.findall(r"`(?:\d{3} )?([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`", DOC_TEXT))
    literals: set[str] = set()
    for source in (ROOT / "cardsvc").rglob("*.py"):
        literals |= set(re.findall(r"\"([A-Z][A-Z0-9_]+)\"", source.read_text(encoding="utf-8")))
    assert named, "the document names error codes"
    assert sorted(named - literals) == []


def heading_anchors(text: str) -> set[str]:
    """The anchors a code host gives the headings (duplicates numbered -1, -2, …)."""
    anchors: set[str] = set()
    body = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    for heading in re.findall(r"^#+ (.+)$", body, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def test_every_link_within_the_document_has_its_heading() -> None:
    links = set(re.findall(r"\]\(#([^)]+)\)", DOC_TEXT))
    assert links, "the document links its own sections"
    assert sorted(links - heading_anchors(DOC_TEXT)) == []
