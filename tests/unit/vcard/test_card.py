"""The virtual card's APDU handling, pure: every status word path as a table (a prelude of
commands that must succeed, the command, the expected status word and data), then the
properties that matter — the try counter is saved before the answer, a power cycle forgets
the PIN, a save that fails is refused — and that no bytes at all make it raise."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cardcrypto import profile
from cardsvc.cards.records import CardHolder, build_records
from cardsvc.terminal_sdk import cardprofile as cp
from cardsvc.terminal_sdk.personalise import key_command, personalisation_commands
from cardsvc.vcard.card import ATR, VirtualCard, personalise_offline
from cardsvc.vcard.state import CardState, blank

K_AUTH = bytes(range(16))
K_TXN = bytes(range(16, 32))
PIN = "123456"
CARD_SN = "320200" + "5a" * 13
RECORDS = build_records(
    card_sn=CARD_SN,
    card_no="A00000042",
    admdvs="320200",
    issue_date=dt.date(2026, 11, 25),
    expiry_date=dt.date(2036, 11, 25),
    holder=CardHolder(
        certno="11010519491231002X", psn_name="王五", gend="2", brdy=dt.date(1949, 12, 31)
    ),
)
R = bytes.fromhex("00112233445566778899aabbccddeeff")

SELECT = cp.select_ssse().hex()
EF05 = cp.select_file(cp.EF05).hex()
RIGHT_PIN = cp.verify(PIN).hex()
WRONG_PIN = cp.verify("000000").hex()

# PIN unblock: the test cards' GET CHALLENGE answers zeros, so the issuer's MAC is fixed.
CHALLENGE = cp.get_challenge(8).hex()
K_UNBLOCK = profile.pin_unblock_key(K_TXN, CARD_SN)
MAC = profile.pin_unblock_mac(K_UNBLOCK, bytes(8))
UNBLOCK = profile.pin_unblock_command(MAC).hex()
OTHER_CARDS_UNBLOCK = profile.pin_unblock_command(
    profile.pin_unblock_mac(profile.pin_unblock_key(K_TXN, "320200" + "5b" * 13), bytes(8))
).hex()
BAD_MAC = profile.pin_unblock_command(MAC[:-1] + bytes([MAC[-1] ^ 1])).hex()
NEW_PIN = cp.change_pin_after_unblock("654321").hex()


def issued_card() -> VirtualCard:
    card = VirtualCard(blank(), random=lambda n: bytes(n))
    personalise_offline(card, personalisation_commands(RECORDS, K_AUTH, K_TXN, PIN))
    card.reset()
    return card


def blank_card() -> VirtualCard:
    return VirtualCard(blank(), random=lambda n: bytes(n))


def answer(card: VirtualCard, *prelude: str, command: str) -> tuple[str, bytes]:
    for step in prelude:
        assert card.process(bytes.fromhex(step))[-2:] == b"\x90\x00", step
    reply = card.process(bytes.fromhex(command))
    return reply[-2:].hex().upper(), reply[:-2]


def tlv05(tag: int) -> bytes:
    return cp.tlv(tag, bytes.fromhex(RECORDS.ef05[f"{tag:02x}"]))


# (id, prelude, command, status word, data or None for "do not check")
ISSUED_CASES = [
    ("too short", [], "00A4", "6700", b""),
    ("Lc beyond the data", [], "00A4040005AABB", "6700", b""),
    ("class not supported", [], "A0A4040000", "6E00", b""),
    ("instruction not supported", [], "0012000000", "6D00", b""),
    ("proprietary instruction not supported", [SELECT], "8012000000", "6D00", b""),
    ("select SSSE", [], SELECT, "9000", b""),
    ("select SSSE, no response data asked", [], "00A4040C0F" + cp.AID_SSSE.hex(), "9000", b""),
    ("select another application", [], "00A4040003A00000", "6A82", b""),
    ("select without a name", [], "00A40400", "6700", b""),
    ("select P1 01", [], "00A4010002EF05", "6A86", b""),
    ("select P2 04", [], "00A4040400", "6A86", b""),
    ("select EF05 before SSSE", [], EF05, "6A82", b""),
    ("select EF07", [SELECT], "00A4020002EF07", "6A82", b""),
    ("select a 3-byte file id", [SELECT], "00A4020003EF0500", "6700", b""),
    ("read record", [SELECT, EF05], "00B2010000", "9000", tlv05(0x01)),
    ("read card number", [SELECT, EF05], "00B2070000", "9000", tlv05(0x07)),
    ("read record, no file selected", [SELECT], "00B2010000", "6986", b""),
    ("read a record of the other file", [SELECT, EF05], "00B2080000", "6A83", b""),
    ("read record by number (P2 04)", [SELECT, EF05], "00B2010400", "6A86", b""),
    ("read record P1 00", [SELECT, EF05], "00B2000000", "6A86", b""),
    ("read record without Le", [SELECT, EF05], "00B20100", "6700", b""),
    ("read record with data", [SELECT, EF05], "00B201000101", "6700", b""),
    ("read record, Le too small", [SELECT, EF05], "00B2010005", "6C12", b""),
    ("get challenge", [], "0084000008", "9000", bytes(8)),
    ("get challenge of 5 bytes", [], "0084000005", "6700", b""),
    ("get challenge P1 01", [], "0084010008", "6A86", b""),
    ("PIN status", [SELECT], "00200000", "63C3", b""),
    ("PIN status once verified", [SELECT, RIGHT_PIN], "00200000", "9000", b""),
    ("right PIN", [SELECT], RIGHT_PIN, "9000", b""),
    ("wrong PIN", [SELECT], WRONG_PIN, "63C2", b""),
    ("PIN not BCD", [SELECT], "002000000312345A", "6A80", b""),
    ("PIN of 2 bytes", [SELECT], "00200000021234", "6700", b""),
    ("PIN reference 01", [SELECT], "0020000103123456", "6A88", b""),
    ("VERIFY P1 01", [SELECT], "0020010003123456", "6A86", b""),
    ("VERIFY before SELECT", [], RIGHT_PIN, "6985", b""),
    (
        "K_auth",
        [SELECT],
        cp.internal_authenticate(1, R).hex(),
        "9000",
        profile.card_cryptogram(K_AUTH, R),
    ),
    ("K_txn before VERIFY", [SELECT], cp.internal_authenticate(2, R).hex(), "6982", b""),
    (
        "K_txn after VERIFY",
        [SELECT, RIGHT_PIN],
        cp.internal_authenticate(2, R).hex(),
        "9000",
        profile.card_cryptogram(K_TXN, R),
    ),
    ("K_txn after a wrong PIN", [SELECT, RIGHT_PIN], WRONG_PIN, "63C2", b""),
    ("key reference 03", [SELECT], cp.internal_authenticate(3, R).hex(), "6A88", b""),
    ("INTERNAL AUTHENTICATE P1 01", [SELECT], "0088010110" + R.hex(), "6A86", b""),
    ("challenge of 8 bytes", [SELECT], "0088000108" + R[:8].hex(), "6700", b""),
    ("cryptogram Le too small", [SELECT], "0088000110" + R.hex() + "08", "6C10", b""),
    ("INTERNAL AUTHENTICATE before SELECT", [], cp.internal_authenticate(1, R).hex(), "6985", b""),
    ("write record on a locked card", [SELECT], cp.write_record(5, 7, b"A" * 9).hex(), "6985", b""),
    ("load a key on a locked card", [SELECT], key_command(1, K_TXN).hex(), "6985", b""),
    ("set PIN on a locked card", [SELECT], cp.set_pin("654321").hex(), "6985", b""),
    ("lock again", [SELECT], cp.lock().hex(), "6985", b""),
    ("life cycle", [SELECT], cp.get_lifecycle().hex(), "9000", b"\x0f"),
    ("unblock", [SELECT, CHALLENGE], UNBLOCK, "9000", b""),
    ("unblock without a challenge", [SELECT], UNBLOCK, "6982", b""),
    ("unblock after a 16-byte challenge", [SELECT, "0084000010"], UNBLOCK, "6982", b""),
    ("unblock with a wrong MAC", [SELECT, CHALLENGE], BAD_MAC, "6982", b""),
    ("unblock with another card's MAC", [SELECT, CHALLENGE], OTHER_CARDS_UNBLOCK, "6982", b""),
    ("unblock without the MAC object", [SELECT, CHALLENGE], "0C2C030008" + MAC.hex(), "6988", b""),
    (
        "unblock with a short MAC",
        [SELECT, CHALLENGE],
        "0C2C0300068E04" + MAC[:4].hex(),
        "6988",
        b"",
    ),
    ("unblock P1 01", [SELECT, CHALLENGE], "0C2C0100" + UNBLOCK[8:], "6A86", b""),
    ("unblock P2 01", [SELECT, CHALLENGE], "0C2C0301" + UNBLOCK[8:], "6A88", b""),
    ("unblock without secure messaging", [SELECT, CHALLENGE], "002C" + UNBLOCK[4:], "6D00", b""),
    ("unblock before SELECT", [CHALLENGE], UNBLOCK, "6985", b""),
    ("new PIN after unblock", [SELECT, CHALLENGE, UNBLOCK], NEW_PIN, "9000", b""),
    ("new PIN without unblock", [SELECT], NEW_PIN, "6982", b""),
    ("new PIN not right after unblock", [SELECT, CHALLENGE, UNBLOCK, EF05], NEW_PIN, "6982", b""),
    ("new PIN, old and new (P1 00)", [SELECT, CHALLENGE, UNBLOCK], "0024000003654321", "6A86", b""),
    ("new PIN reference 01", [SELECT, CHALLENGE, UNBLOCK], "0024010103654321", "6A88", b""),
    ("new PIN not BCD", [SELECT, CHALLENGE, UNBLOCK], "002401000365432A", "6A80", b""),
    ("new PIN of 2 bytes", [SELECT, CHALLENGE, UNBLOCK], "00240100026543", "6700", b""),
    ("new PIN before SELECT", [], NEW_PIN, "6985", b""),
]


@pytest.mark.parametrize(
    ("prelude", "command", "sw", "data"),
    [case[1:] for case in ISSUED_CASES],
    ids=[case[0] for case in ISSUED_CASES],
)
def test_issued_card(prelude: list[str], command: str, sw: str, data: bytes):
    assert answer(issued_card(), *prelude, command=command) == (sw, data)


WRITE_NAME = cp.write_record(6, 0x09, "王五".encode("gbk").ljust(30)).hex()

BLANK_CASES = [
    ("life cycle", [SELECT], cp.get_lifecycle().hex(), "9000", b"\x01"),
    ("life cycle without Le", [SELECT], "80CA0000", "6700", b""),
    ("life cycle before SELECT", [], cp.get_lifecycle().hex(), "6985", b""),
    ("read an unwritten record", [SELECT, EF05], "00B2010000", "6A83", b""),
    ("VERIFY on an open card", [SELECT], RIGHT_PIN, "6985", b""),
    (
        "INTERNAL AUTHENTICATE on an open card",
        [SELECT],
        cp.internal_authenticate(1, R).hex(),
        "6985",
        b"",
    ),
    ("write a record", [SELECT], WRITE_NAME, "9000", b""),
    ("write before SELECT", [], WRITE_NAME, "6985", b""),
    ("write card_sn of 15 bytes", [SELECT], cp.write_record(5, 1, bytes(15)).hex(), "6700", b""),
    ("write an EF06 tag into EF05", [SELECT], cp.write_record(5, 8, bytes(18)).hex(), "6A86", b""),
    ("write into file 07", [SELECT], cp.write_record(7, 1, bytes(16)).hex(), "6A86", b""),
    ("write 33 bytes of issuer", [SELECT], cp.write_record(5, 4, bytes(33)).hex(), "6700", b""),
    ("write without data", [SELECT], "80DC0405", "6700", b""),
    ("load K_auth", [SELECT], key_command(1, K_AUTH).hex(), "9000", b""),
    ("load a key with a bad KCV", [SELECT], cp.put_key(1, K_AUTH, b"\0\0\0").hex(), "6A80", b""),
    ("load key reference 03", [SELECT], key_command(3, K_AUTH).hex(), "6A88", b""),
    ("load a key P1 01", [SELECT], "80D8010113" + bytes(19).hex(), "6A86", b""),
    ("load a short key", [SELECT], cp.put_key(1, K_AUTH[:8], b"\0\0\0").hex(), "6700", b""),
    ("set the PIN", [SELECT], cp.set_pin(PIN).hex(), "9000", b""),
    ("set a PIN that is not BCD", [SELECT], "80240000031234AB", "6A80", b""),
    ("set a PIN of 4 bytes", [SELECT], "802400000412345678", "6700", b""),
    ("lock an incomplete card", [SELECT], cp.lock().hex(), "6985", b""),
    ("lock with data", [SELECT], "80F000000100", "6700", b""),
    ("unblock an open card", [SELECT, CHALLENGE], UNBLOCK, "6985", b""),
    ("new PIN on an open card", [SELECT], NEW_PIN, "6985", b""),
]


@pytest.mark.parametrize(
    ("prelude", "command", "sw", "data"),
    [case[1:] for case in BLANK_CASES],
    ids=[case[0] for case in BLANK_CASES],
)
def test_blank_card(prelude: list[str], command: str, sw: str, data: bytes):
    assert answer(blank_card(), *prelude, command=command) == (sw, data)


def test_personalisation_locks_a_complete_card():
    saved: list[CardState] = []
    card = VirtualCard(blank(), persist=saved.append)
    personalise_offline(card, personalisation_commands(RECORDS, K_AUTH, K_TXN, PIN))
    state = card.state
    assert state.lifecycle == "locked" and saved[-1] == state
    assert state.ef05 == RECORDS.ef05 and state.ef06 == RECORDS.ef06
    assert (state.k_auth, state.k_txn, state.pin) == (K_AUTH.hex(), K_TXN.hex(), PIN)


def test_three_wrong_pins_block_and_the_right_one_no_longer_helps():
    card = issued_card()
    sws = [answer(card, command=c)[0] for c in [SELECT, WRONG_PIN, WRONG_PIN, WRONG_PIN]]
    assert sws == ["9000", "63C2", "63C1", "6983"]
    assert answer(card, command=RIGHT_PIN)[0] == "6983"
    assert answer(card, command="00200000")[0] == "6983"
    assert answer(card, command=cp.internal_authenticate(2, R).hex())[0] == "6983"
    assert answer(card, command=cp.internal_authenticate(1, R).hex())[0] == "9000"


def test_a_blocked_pin_is_unblocked_and_the_new_pin_saved_before_the_answer():
    card = issued_card()
    saved: list[tuple[str | None, int]] = []
    card._persist = lambda state: saved.append((state.pin, state.pin_tries_left))  # type: ignore[method-assign]
    sws = [answer(card, command=c)[0] for c in [SELECT, WRONG_PIN, WRONG_PIN, WRONG_PIN]]
    assert sws == ["9000", "63C2", "63C1", "6983"]
    assert answer(card, CHALLENGE, command=UNBLOCK)[0] == "9000"
    assert saved[-1] == (PIN, 3)  # the counter is reset; the PIN is still the old one
    assert answer(card, command=NEW_PIN)[0] == "9000"
    assert saved[-1] == ("654321", 3)
    assert answer(card, command=cp.verify("654321").hex())[0] == "9000"
    assert answer(card, command=RIGHT_PIN)[0] == "63C2"
    assert VirtualCard(card.state).state.pin == "654321"


def test_an_unblock_that_cannot_be_saved_is_refused_and_forgotten():
    card = issued_card()
    for command in (SELECT, WRONG_PIN, WRONG_PIN, WRONG_PIN):
        answer(card, command=command)

    def disk_full(state: CardState) -> None:
        raise OSError("no space left on device")

    card._persist = disk_full  # type: ignore[method-assign]
    assert answer(card, SELECT, CHALLENGE, command=UNBLOCK)[0] == "6581"
    assert card.state.pin_tries_left == 0
    assert answer(card, SELECT, command=RIGHT_PIN)[0] == "6983"  # still blocked


def test_a_refused_new_pin_closes_the_window():
    card = issued_card()
    answer(card, SELECT, CHALLENGE, command=UNBLOCK)
    assert answer(card, command="002401000312345A")[0] == "6A80"
    assert answer(card, command=NEW_PIN)[0] == "6982"


def test_a_malformed_command_also_closes_the_new_pin_window():
    card = issued_card()
    answer(card, SELECT, CHALLENGE, command=UNBLOCK)
    assert answer(card, command="00B2")[0] == "6700"
    assert answer(card, command=NEW_PIN)[0] == "6982"


def test_the_card_challenge_is_used_up_by_any_unblock_attempt():
    card = issued_card()
    assert answer(card, SELECT, CHALLENGE, command=UNBLOCK)[0] == "9000"
    assert answer(card, command=UNBLOCK)[0] == "6982"  # replayed
    assert answer(card, CHALLENGE, command=BAD_MAC)[0] == "6982"
    assert answer(card, command=UNBLOCK)[0] == "6982"  # a wrong MAC spent the challenge too
    assert answer(card, command=NEW_PIN)[0] == "6982"


@pytest.mark.parametrize("power_event", ["power_off", "power_on", "reset"])
def test_a_power_event_forgets_the_challenge_and_closes_the_window(power_event: str):
    card = issued_card()
    answer(card, SELECT, CHALLENGE, command=UNBLOCK)
    getattr(card, power_event)()
    assert answer(card, SELECT, command=NEW_PIN)[0] == "6982"
    answer(card, CHALLENGE, command=SELECT)
    getattr(card, power_event)()
    assert answer(card, SELECT, command=UNBLOCK)[0] == "6982"


def test_the_try_counter_is_saved_before_the_answer():
    saved: list[int] = []
    card = issued_card()
    card._persist = lambda state: saved.append(state.pin_tries_left)  # type: ignore[method-assign]
    answer(card, SELECT, command=WRONG_PIN)
    assert saved == [2]
    answer(card, command=RIGHT_PIN)
    assert saved == [2, 3]
    answer(card, command=RIGHT_PIN)
    assert saved == [2, 3]  # nothing changed, nothing written


def test_a_counter_that_cannot_be_saved_is_refused_and_verifies_nothing():
    card = issued_card()

    def disk_full(state: CardState) -> None:
        raise OSError("no space left on device")

    card._persist = disk_full  # type: ignore[method-assign]
    assert answer(card, SELECT, command=WRONG_PIN)[0] == "6581"
    assert answer(card, SELECT, command=RIGHT_PIN)[0] == "6581"  # 2 → 3 cannot be saved
    assert answer(card, SELECT, command=cp.internal_authenticate(2, R).hex())[0] == "6982"


@pytest.mark.parametrize("power_event", ["power_off", "power_on", "reset"])
def test_a_power_event_forgets_the_pin_and_the_selection(power_event: str):
    card = issued_card()
    answer(card, SELECT, RIGHT_PIN, command=cp.internal_authenticate(2, R).hex())
    getattr(card, power_event)()
    assert answer(card, command=EF05)[0] == "6A82"
    assert answer(card, SELECT, command=cp.internal_authenticate(2, R).hex())[0] == "6982"


def test_a_restored_card_keeps_its_counter():
    card = issued_card()
    answer(card, SELECT, command=WRONG_PIN)
    restored = VirtualCard(card.state)
    assert answer(restored, SELECT, command="00200000")[0] == "63C2"


def test_atr_offers_t1_and_carries_a_valid_check_byte():
    assert ATR[:3] == bytes.fromhex("3B8801") and ATR[3:-1] == b"SSSE3.00"
    check = 0
    for byte in ATR[1:]:
        check ^= byte
    assert check == 0


_INS = [cp.INS_SELECT, cp.INS_READ_RECORD, cp.INS_GET_CHALLENGE, cp.INS_INTERNAL_AUTHENTICATE]
_INS += [cp.INS_VERIFY, cp.INS_WRITE_RECORD, cp.INS_PUT_KEY, cp.INS_SET_PIN, cp.INS_LOCK]
_INS += [cp.INS_GET_LIFECYCLE]
# Headers the card knows, so random bodies reach every handler, not only the dispatcher.
apdus = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda cla, ins, p1p2, body: bytes([cla, ins]) + p1p2 + body,
        st.sampled_from([0x00, 0x80]),
        st.sampled_from(_INS),
        st.binary(min_size=2, max_size=2),
        st.binary(max_size=40),
    ),
)


@settings(max_examples=400)
@given(st.lists(apdus, max_size=12), st.booleans())
def test_any_bytes_get_a_status_word_never_an_exception(commands: list[bytes], issued: bool):
    card = issued_card() if issued else blank_card()
    card.process(cp.select_ssse())
    for command in commands:
        reply = card.process(command)
        assert len(reply) >= 2
        sw = int.from_bytes(reply[-2:], "big")
        assert sw >> 12 in (0x6, 0x9), reply.hex()
