"""Personalisation of a blank card (docs/readers.md, class-80 commands), pure.

The counter's card writer turns the issuance response (EF05/EF06 record data) and the keys it
unsealed from the personalisation blob into one command list: select SSSE, write every
record, load ``K_auth`` and ``K_txn`` (each with its key check value, so a key damaged on the
way is refused), set the holder's first PIN, lock. The virtual card's demo set-up runs the
very same list against an in-memory card.
"""

from __future__ import annotations

from cardcrypto import profile
from cardsvc.cards.records import CardRecords
from cardsvc.terminal_sdk import cardprofile


def _file_records(records: CardRecords, fid: int) -> dict[str, str]:
    return records.ef05 if fid == cardprofile.EF05 else records.ef06


def record_commands(records: CardRecords) -> list[bytes]:
    commands = []
    for short_id, fid in cardprofile.SHORT_IDS.items():
        for tag_hex, value_hex in sorted(_file_records(records, fid).items()):
            value = bytes.fromhex(value_hex)
            commands.append(cardprofile.write_record(short_id, int(tag_hex, 16), value))
    return commands


def key_command(key_ref: int, key: bytes) -> bytes:
    return cardprofile.put_key(key_ref, key, bytes.fromhex(profile.key_check_value(key)))


def personalisation_commands(
    records: CardRecords, k_auth: bytes, k_txn: bytes, pin: str
) -> list[bytes]:
    """Every APDU that turns a blank card into this holder's locked card, in order."""
    return [
        cardprofile.select_ssse(),
        *record_commands(records),
        key_command(profile.KEY_REF_AUTH, k_auth),
        key_command(profile.KEY_REF_TXN, k_txn),
        cardprofile.set_pin(pin),
        cardprofile.lock(),
    ]


def expected_values(records: CardRecords) -> dict[int, dict[int, bytes]]:
    """What reading the card back must give: file → tag → value."""
    return {
        fid: {int(tag, 16): bytes.fromhex(v) for tag, v in _file_records(records, fid).items()}
        for fid in cardprofile.FILE_TAGS
    }
