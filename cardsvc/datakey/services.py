"""Which data key a database's protected data is under, and moving it to another key.

The ``data_key`` row (migration 0007) holds the key check value (``privacy.key_check_value``)
of the key every ``persons.certno_enc`` / ``certno_hash``, ``terminal_sessions.key_enc`` and
``gateway_clients.secret_enc`` is under. ``check`` runs at every start: it records the value
on first use (after making sure the key opens the data already stored, if any) and refuses
any other key, since with one a look-up by identity number would miss and the same person
could be registered twice.

``rotate`` moves everything under the data key to a new key, offline:

1. refuse while a cardsvc process is connected to the database, or another rotation runs;
2. note the new key's check value in ``rotating_to`` (from then on the service refuses to
   start with either key);
3. re-encrypt each person's number (AAD ``psn_no``) and recompute its lookup hash, in
   ``psn_no`` order, one committed batch at a time; each batch also moves
   ``rotated_through`` to its last ``psn_no``, so the persons done are exactly those up to
   it and a rotation cut off anywhere is finished by running it again;
4. in one last transaction, re-encrypt every national gateway client's secret (AAD its
   paasid; a few rows), end every terminal session (their keys are under the data key;
   terminals sign in again) and make the new check value the database's.

Card tokens (HMAC under a sub-key) need nothing: the old ones no longer verify, and they
expire within minutes anyway.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from cardsvc.db import APPLICATION_NAME, Connection
from cardsvc.privacy import DataProtector, DecryptionError, key_check_value

DEFAULT_BATCH = 1000
# Any fixed number: one rotation at a time.
_ROTATION_LOCK = 0x6B657972

Progress = Callable[[int, int], None]  # (persons done, persons in all)


class DataKeyError(Exception):
    """The data key cannot be used as asked; the message says why and what to do."""


class DataKeyMismatch(DataKeyError):
    pass


class RotationUnderway(DataKeyError):
    pass


class RotationRefused(DataKeyError):
    pass


class KeyState(msgspec.Struct, frozen=True):
    check_value: str
    rotating_to: str | None
    rotated_through: str | None


class RotationResult(msgspec.Struct, frozen=True):
    persons: int
    sessions_ended: int
    check_value: str
    already_done: bool = False  # a rotation to this key had finished before this run


async def _state(conn: Connection) -> KeyState | None:
    row = await conn.fetchrow("SELECT check_value, rotating_to, rotated_through FROM data_key")
    return None if row is None else KeyState(**dict(row))


async def _opens_stored_data(conn: Connection, data_key: bytes) -> bool:
    """Whether the key decrypts a stored identity number (True when there is none)."""
    row = await conn.fetchrow("SELECT psn_no, certno_enc FROM persons LIMIT 1")
    if row is None:
        return True
    try:
        DataProtector(data_key).decrypt(row["certno_enc"], row["psn_no"].encode())
    except DecryptionError:
        return False
    return True


async def _record(conn: Connection, data_key: bytes) -> KeyState:
    """First use of the database: note the key's check value, if it opens what is stored."""
    value = key_check_value(data_key)
    if not await _opens_stored_data(conn, data_key):
        raise DataKeyMismatch(
            f"CARDSVC_DATA_KEY (check value {value}) does not decrypt the identity numbers"
            " already in this database: it is not the key they were stored under"
        )
    await conn.execute(
        "INSERT INTO data_key (check_value) VALUES ($1) ON CONFLICT (singleton) DO NOTHING",
        value,
    )
    state = await _state(conn)
    assert state is not None
    return state


def _refuse_underway(state: KeyState) -> None:
    if state.rotating_to is not None:
        raise RotationUnderway(
            f"a data key rotation to check value {state.rotating_to} was started and not"
            " finished: run `python -m cardsvc rotate-data-key` again with the same key file"
        )


def _refuse_other_key(state: KeyState, value: str) -> None:
    if state.check_value != value:
        raise DataKeyMismatch(
            "CARDSVC_DATA_KEY does not match the key this database was created with"
            f" (check value {value}, database has {state.check_value})"
        )


async def check(conn: Connection, data_key: bytes) -> str:
    """Refuse a key other than the database's (recording it on first use); its check value."""
    value = key_check_value(data_key)
    state = await _state(conn) or await _record(conn, data_key)
    _refuse_underway(state)
    _refuse_other_key(state, value)
    return value


async def _refuse_if_serving(conn: Connection) -> None:
    serving = await conn.fetchval(
        """
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = $1
          AND pid <> pg_backend_pid()
        """,
        APPLICATION_NAME,
    )
    if serving:
        raise RotationRefused(
            f"cardsvc is connected to this database ({serving} connections): stop the service"
            " (and its commands) before rotating the data key"
        )


async def _begin(conn: Connection, old_key: bytes, new_key: bytes) -> KeyState | None:
    """The rotation's state, started if need be; None if it is already complete."""
    old, new = key_check_value(old_key), key_check_value(new_key)
    if old == new:
        raise RotationRefused(f"the new key is the current key (check value {old})")
    state = await _state(conn) or await _record(conn, old_key)
    if state.rotating_to is None and state.check_value == new:
        return None  # a rotation to this key finished (this is a re-run)
    if state.rotating_to is not None and state.rotating_to != new:
        raise RotationRefused(
            f"a rotation to another key (check value {state.rotating_to}) is under way:"
            f" run again with that key file, not this one (check value {new})"
        )
    _refuse_other_key(state, old)
    if state.rotating_to is None:
        await conn.execute("UPDATE data_key SET rotating_to = $1, rotated_through = NULL", new)
        state = KeyState(check_value=old, rotating_to=new, rotated_through=None)
    return state


async def _rotate_batch(
    conn: Connection, old: DataProtector, new: DataProtector, after: str, size: int
) -> tuple[str, int] | None:
    """Re-encrypt the next ``size`` persons after ``after``: the last psn_no done and how
    many, or None when none are left."""
    async with conn.transaction():
        rows = await conn.fetch(
            "SELECT psn_no, certno_enc FROM persons WHERE psn_no > $1"
            " ORDER BY psn_no LIMIT $2 FOR UPDATE",
            after,
            size,
        )
        if not rows:
            return None
        psn_nos, encs, hashes = [], [], []
        for row in rows:
            psn_no = row["psn_no"]
            try:
                number = old.decrypt(row["certno_enc"], psn_no.encode())
            except DecryptionError:
                raise RotationRefused(
                    f"person {psn_no}: the identity number does not decrypt under the current"
                    " key; this batch was not written"
                ) from None
            psn_nos.append(psn_no)
            encs.append(new.encrypt(number, psn_no.encode()))
            hashes.append(new.lookup_hash(number.decode()))
        await conn.execute(
            """
            UPDATE persons p SET certno_enc = u.enc, certno_hash = u.hash
            FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS u(psn_no, enc, hash)
            WHERE p.psn_no = u.psn_no
            """,
            psn_nos,
            encs,
            hashes,
        )
        await conn.execute("UPDATE data_key SET rotated_through = $1", psn_nos[-1])
        return str(psn_nos[-1]), len(psn_nos)


async def _rotate_gateway_secrets(conn: Connection, old: DataProtector, new: DataProtector) -> None:
    rows = await conn.fetch("SELECT paasid, secret_enc FROM gateway_clients FOR UPDATE")
    for row in rows:
        aad = row["paasid"].encode()
        try:
            secret = old.decrypt(row["secret_enc"], aad)
        except DecryptionError:
            raise RotationRefused(
                f"gateway client {row['paasid']}: the secret does not decrypt under the current"
                " key; nothing of the last step was written"
            ) from None
        await conn.execute(
            "UPDATE gateway_clients SET secret_enc = $2 WHERE paasid = $1",
            row["paasid"],
            new.encrypt(secret, aad),
        )


async def _finish(conn: Connection, new_value: str, old: DataProtector, new: DataProtector) -> int:
    async with conn.transaction():
        await _rotate_gateway_secrets(conn, old, new)
        ended = await conn.fetchval(
            "WITH gone AS (DELETE FROM terminal_sessions RETURNING 1) SELECT count(*) FROM gone"
        )
        await conn.execute(
            "UPDATE data_key SET check_value = $1, rotating_to = NULL, rotated_through = NULL,"
            " recorded_at = now()",
            new_value,
        )
    return int(ended)


async def rotate(
    conn: Connection,
    old_key: bytes,
    new_key: bytes,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> RotationResult:
    """Move everything under ``old_key`` to ``new_key`` (see the module docstring)."""
    await _refuse_if_serving(conn)
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _ROTATION_LOCK):
        raise RotationRefused("another data key rotation is running on this database")
    try:
        return await _rotate_locked(conn, old_key, new_key, batch_size, progress)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ROTATION_LOCK)


async def _rotate_locked(
    conn: Connection,
    old_key: bytes,
    new_key: bytes,
    batch_size: int,
    progress: Progress | None,
) -> RotationResult:
    total = int(await conn.fetchval("SELECT count(*) FROM persons"))
    new_value = key_check_value(new_key)
    state = await _begin(conn, old_key, new_key)
    if state is None:
        return RotationResult(
            persons=total, sessions_ended=0, check_value=new_value, already_done=True
        )
    # A cardsvc that started between the first look and ``rotating_to`` being set passed
    # its own check: it is seen now, before anything is re-encrypted (and any start from
    # now on refuses).
    await _refuse_if_serving(conn)
    after = state.rotated_through or ""
    done = int(await conn.fetchval("SELECT count(*) FROM persons WHERE psn_no <= $1", after))
    old, new = DataProtector(old_key), DataProtector(new_key)
    while True:
        if progress is not None:
            progress(done, total)
        batch = await _rotate_batch(conn, old, new, after, batch_size)
        if batch is None:
            break
        after, done = batch[0], done + batch[1]
    ended = await _finish(conn, new_value, old, new)
    return RotationResult(persons=done, sessions_ended=ended, check_value=new_value)
