"""Operators, their console sessions and API tokens, and sign-in with throttling.

Every credential check is one statement: a revoked token, a disabled operator or an ended
session is refused on the very next request (nothing is cached). argon2id verification
runs in a worker thread, at most ``_HASHING`` at a time per process, so a burst of sign-ins
neither blocks the event loop nor takes more than that many times 64 MiB."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any

import asyncpg
import msgspec

from cardsvc.audit.services import AuditLog
from cardsvc.config import Settings
from cardsvc.db import Connection, Pool, transaction
from cardsvc.errors import (
    BusinessRuleViolation,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from cardsvc.operators import credentials, passwords, throttle
from cardsvc.operators.models import (
    LOGIN_PATTERN,
    ChangePassword,
    CreateOperator,
    CreateToken,
    NewToken,
    Operator,
    OperatorBrief,
    OperatorPage,
    SessionInfo,
    TokenInfo,
    TokenList,
    UpdateOperator,
)
from cardsvc.web.caller import Caller

_HASHING = asyncio.Semaphore(2)
_LOGIN = re.compile(LOGIN_PATTERN)
_COLUMNS = "operator_id, login, display_name, roles, status, created_at, updated_at"
# A token's last_used_at is written at most this often: a busy token costs no write a request.
_LAST_USED_GRANULARITY = dt.timedelta(seconds=60)
SORTS = ("login", "display_name", "created_at")


def _operator(row: asyncpg.Record) -> Operator:
    return Operator(**{k: row[k] for k in Operator.__struct_fields__})


def _brief(row: asyncpg.Record) -> OperatorBrief:
    return OperatorBrief(
        operator_id=row["operator_id"],
        login=row["login"],
        display_name=row["display_name"],
        roles=list(row["roles"]),
    )


def _operator_caller(row: asyncpg.Record, credential: str, token_id: str | None) -> Caller:
    return Caller(
        kind="operator",
        operator_id=row["operator_id"],
        operator_name=row["display_name"],
        roles=tuple(row["roles"]),
        credential="token" if credential == "token" else "session",
        token_id=token_id,
    )


def check_password(password: str, login: str) -> None:
    reason = passwords.weakness(password, login)
    if reason is not None:
        raise BusinessRuleViolation(reason, code="PASSWORD_TOO_WEAK", details={"reason": reason})


async def hash_password(password: str) -> str:
    async with _HASHING:
        return await asyncio.to_thread(passwords.hash_password, password)


async def verify_password(stored_hash: str, password: str) -> bool:
    async with _HASHING:
        return await asyncio.to_thread(passwords.verify_password, stored_hash, password)


class Operators:
    def __init__(self, pool: Pool, audit: AuditLog, settings: Settings) -> None:
        self._pool, self._audit = pool, audit
        self._idle = settings.operator_session_idle_seconds
        self._max = settings.operator_session_max_seconds

    # -- operators ------------------------------------------------------------------------

    async def create(self, caller: Caller, req: CreateOperator) -> Operator:
        """A new operator. The bootstrap caller may create one only while no active
        administrator exists (checked under a lock, so two bootstraps cannot both pass)."""
        check_password(req.password, req.login)
        roles = sorted(set(req.roles))
        password_hash = await hash_password(req.password)
        async with transaction(self._pool) as conn:
            if caller.kind == "bootstrap":
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('cardsvc.bootstrap'))")
                await self.refuse_closed_bootstrap(conn)
                if "administrator" not in roles:
                    raise BusinessRuleViolation(
                        "the bootstrap token creates an administrator",
                        code="BOOTSTRAP_NEEDS_ADMINISTRATOR",
                    )
            try:
                row = await conn.fetchrow(
                    "INSERT INTO operators (operator_id, login, display_name, roles, password_hash)"
                    f" VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
                    credentials.new_operator_id(),
                    req.login,
                    req.display_name,
                    roles,
                    password_hash,
                )
            except asyncpg.UniqueViolationError:
                raise Conflict("this login is taken", code="OPERATOR_EXISTS") from None
            operator = _operator(row)
            await self._append(
                conn,
                caller,
                "operator.created",
                operator.operator_id,
                {"login": operator.login, "display_name": operator.display_name, "roles": roles},
            )
        return operator

    @staticmethod
    async def _refuse_last_administrator(conn: Connection, operator_id: str) -> None:
        """Disabling or demoting the last active administrator would leave nobody to manage
        operators, and would open the bootstrap token again for whoever holds it. Under the
        bootstrap's lock: two administrators demoting each other at once cannot both pass."""
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('cardsvc.bootstrap'))")
        others = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM operators WHERE operator_id <> $1"
            " AND status = 'active' AND 'administrator' = ANY (roles))",
            operator_id,
        )
        if not others:
            raise Conflict(
                "this is the last active administrator: make another one first",
                code="LAST_ADMINISTRATOR",
            )

    @staticmethod
    async def refuse_closed_bootstrap(conn: Connection | Pool) -> None:
        """The bootstrap token is taken only while no active administrator exists."""
        exists = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM operators"
            " WHERE status = 'active' AND 'administrator' = ANY (roles))"
        )
        if exists:
            raise Unauthenticated(
                "the bootstrap token is refused once an administrator exists",
                code="BOOTSTRAP_CLOSED",
            )

    async def page(self, page: int, page_size: int, sort: str) -> OperatorPage:
        field = sort.removeprefix("-")
        assert field in SORTS  # the view checked it
        order = f"{field} {'DESC' if sort.startswith('-') else 'ASC'}, operator_id"
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS}, count(*) OVER () AS total FROM operators"
            f" ORDER BY {order} LIMIT $1 OFFSET $2",
            page_size,
            (page - 1) * page_size,
        )
        total = (
            rows[0]["total"]
            if rows
            else await self._pool.fetchval("SELECT count(*) FROM operators")
        )
        return OperatorPage(
            items=[_operator(r) for r in rows], page=page, page_size=page_size, total=total
        )

    async def get(self, operator_id: str) -> Operator:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM operators WHERE operator_id = $1", operator_id
        )
        if row is None:
            raise NotFound("no such operator", code="OPERATOR_NOT_FOUND")
        return _operator(row)

    async def update(self, caller: Caller, operator_id: str, req: UpdateOperator) -> Operator:
        """Display name, roles, status; disabling ends its sessions and revokes its tokens."""
        changes: dict[str, Any] = {
            k: v for k, v in msgspec.structs.asdict(req).items() if v is not msgspec.UNSET
        }
        if "roles" in changes:
            changes["roles"] = sorted(set(changes["roles"]))
        async with transaction(self._pool) as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM operators WHERE operator_id = $1 FOR UPDATE", operator_id
            )
            if row is None:
                raise NotFound("no such operator", code="OPERATOR_NOT_FOUND")
            if _ends_administration(row, changes):
                await self._refuse_last_administrator(conn, operator_id)
            if changes:
                sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(changes, start=2))
                row = await conn.fetchrow(
                    f"UPDATE operators SET {sets}, updated_at = now() WHERE operator_id = $1"
                    f" RETURNING {_COLUMNS}",
                    operator_id,
                    *changes.values(),
                )
                if changes.get("status") == "disabled":
                    await self._end_everything(conn, operator_id)
                await self._append(conn, caller, "operator.updated", operator_id, changes)
        return _operator(row)

    async def reset_password(self, caller: Caller, operator_id: str, password: str) -> None:
        """An administrator sets a new password: the operator's sessions end."""
        login = await self._pool.fetchval(
            "SELECT login FROM operators WHERE operator_id = $1", operator_id
        )
        if login is None:
            raise NotFound("no such operator", code="OPERATOR_NOT_FOUND")
        check_password(password, login)
        password_hash = await hash_password(password)
        async with transaction(self._pool) as conn:
            await conn.execute(
                "UPDATE operators SET password_hash = $2, updated_at = now()"
                " WHERE operator_id = $1",
                operator_id,
                password_hash,
            )
            await conn.execute("DELETE FROM operator_sessions WHERE operator_id = $1", operator_id)
            await self._append(conn, caller, "operator.password_reset", operator_id, {})

    async def change_own_password(
        self, caller: Caller, session_secret: str, req: ChangePassword, address: str
    ) -> None:
        """The operator of this session, knowing its password: its other sessions end."""
        assert caller.operator_id is not None
        row = await self._pool.fetchrow(
            "SELECT login, password_hash FROM operators WHERE operator_id = $1",
            caller.operator_id,
        )
        if row is None:
            raise Unauthenticated("the session is not valid", code="SESSION_INVALID")
        keys = (throttle.login_key(row["login"]), throttle.address_key(address))
        await self._count_attempt(keys)
        if not await verify_password(row["password_hash"], req.current_password):
            raise Forbidden("the current password is not right", code="PASSWORD_WRONG")
        async with transaction(self._pool) as conn:
            await self._count_success(conn, keys)
        check_password(req.new_password, row["login"])
        password_hash = await hash_password(req.new_password)
        async with transaction(self._pool) as conn:
            await conn.execute(
                "UPDATE operators SET password_hash = $2, updated_at = now()"
                " WHERE operator_id = $1",
                caller.operator_id,
                password_hash,
            )
            await conn.execute(
                "DELETE FROM operator_sessions WHERE operator_id = $1 AND session_hash <> $2",
                caller.operator_id,
                credentials.digest(session_secret),
            )
            await self._append(conn, caller, "operator.password_changed", caller.operator_id, {})

    # -- API tokens -----------------------------------------------------------------------

    async def create_token(self, caller: Caller, operator_id: str, req: CreateToken) -> NewToken:
        _check_self_or_administrator(caller, operator_id)
        token = credentials.new_token()
        token_id = credentials.new_token_id()
        async with transaction(self._pool) as conn:
            status = await conn.fetchval(
                "SELECT status FROM operators WHERE operator_id = $1 FOR SHARE", operator_id
            )
            if status is None:
                raise NotFound("no such operator", code="OPERATOR_NOT_FOUND")
            if status != "active":
                raise Conflict("a disabled operator gets no token", code="OPERATOR_DISABLED")
            row = await conn.fetchrow(
                "INSERT INTO operator_tokens (token_id, operator_id, name, token_hash, expires_at)"
                " VALUES ($1, $2, $3, $4, now() + make_interval(days => $5::int))"
                " RETURNING expires_at",
                token_id,
                operator_id,
                req.name,
                credentials.digest(token),
                req.expires_in_days,
            )
            await self._append(
                conn,
                caller,
                "operator.token_created",
                operator_id,
                {"token_id": token_id, "name": req.name, "expires_at": row["expires_at"]},
            )
        return NewToken(token_id=token_id, name=req.name, token=token, expires_at=row["expires_at"])

    async def tokens(self, caller: Caller, operator_id: str) -> TokenList:
        _check_self_or_administrator(caller, operator_id)
        await self.get(operator_id)
        rows = await self._pool.fetch(
            "SELECT token_id, name, created_at, expires_at, revoked_at, last_used_at"
            " FROM operator_tokens WHERE operator_id = $1 ORDER BY created_at DESC LIMIT 200",
            operator_id,
        )
        return TokenList(items=[TokenInfo(**dict(r)) for r in rows])

    async def revoke_token(self, caller: Caller, operator_id: str, token_id: str) -> None:
        _check_self_or_administrator(caller, operator_id)
        async with transaction(self._pool) as conn:
            revoked = await conn.fetchval(
                "UPDATE operator_tokens SET revoked_at = coalesce(revoked_at, now())"
                " WHERE token_id = $1 AND operator_id = $2 RETURNING revoked_at",
                token_id,
                operator_id,
            )
            if revoked is None:
                raise NotFound("no such token", code="TOKEN_NOT_FOUND")
            await self._append(
                conn, caller, "operator.token_revoked", operator_id, {"token_id": token_id}
            )

    async def by_token(self, token: str) -> Caller:
        """The operator of a live API token (revocation and disabling count at once)."""
        invalid = Unauthenticated("the operator token is not valid", code="OPERATOR_TOKEN_INVALID")
        if not credentials.looks_like_secret(token):
            raise invalid
        row = await self._pool.fetchrow(
            "SELECT t.token_id, t.last_used_at, t.last_used_at < now() - $2::interval AS stale,"
            "  o.operator_id, o.display_name, o.roles"
            " FROM operator_tokens t JOIN operators o USING (operator_id)"
            " WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > now()"
            "  AND o.status = 'active'",
            credentials.digest(token),
            _LAST_USED_GRANULARITY,
        )
        if row is None:
            raise invalid
        if row["last_used_at"] is None or row["stale"]:
            await self._pool.execute(
                "UPDATE operator_tokens SET last_used_at = now() WHERE token_id = $1",
                row["token_id"],
            )
        return _operator_caller(row, "token", row["token_id"])

    # -- sessions -------------------------------------------------------------------------

    async def sign_in(self, login: str, password: str, address: str) -> tuple[SessionInfo, str]:
        """A new console session and its secret (for the cookie). Every failure is the same
        LOGIN_FAILED, and costs as long: an unknown login is verified against a dummy hash."""
        keys = (throttle.login_key(login), throttle.address_key(address))
        await self._count_attempt(keys)
        row = None
        if _LOGIN.fullmatch(login):
            row = await self._pool.fetchrow(
                "SELECT operator_id, login, display_name, roles, status, password_hash"
                " FROM operators WHERE login = $1",
                login,
            )
        stored = row["password_hash"] if row is not None else passwords.DUMMY_HASH
        matches = await verify_password(stored, password)
        if row is None or not matches or row["status"] != "active":
            raise Unauthenticated("the login or the password is not right", code="LOGIN_FAILED")
        secret = credentials.new_secret()
        async with transaction(self._pool) as conn:
            await self._count_success(conn, keys)
            times = await conn.fetchrow(
                "INSERT INTO operator_sessions"
                " (session_hash, operator_id, idle_expires_at, expires_at)"
                " VALUES ($1, $2, now() + make_interval(secs => least($3::int, $4::int)),"
                "  now() + make_interval(secs => $4::int))"
                " RETURNING idle_expires_at, expires_at",
                credentials.digest(secret),
                row["operator_id"],
                self._idle,
                self._max,
            )
            caller = _operator_caller(row, "session", None)
            await self._append(conn, caller, "operator.signed_in", row["operator_id"], {})
        info = SessionInfo(
            operator=_brief(row),
            csrf_token=credentials.csrf_token(secret),
            expires_at=times["expires_at"],
            idle_expires_at=times["idle_expires_at"],
        )
        return info, secret

    async def by_session(self, secret: str) -> tuple[Caller, SessionInfo]:
        """The operator of a live session, whose idle expiry moves on by this use."""
        if not credentials.looks_like_secret(secret):
            raise Unauthenticated("the session is not valid", code="SESSION_INVALID")
        session_hash = credentials.digest(secret)
        row = await self._pool.fetchrow(
            "WITH s AS ("
            "  UPDATE operator_sessions"
            "  SET idle_expires_at = least(now() + make_interval(secs => $2::int), expires_at)"
            "  WHERE session_hash = $1 AND idle_expires_at > now() AND expires_at > now()"
            "  RETURNING operator_id, idle_expires_at, expires_at)"
            " SELECT o.operator_id, o.login, o.display_name, o.roles, s.idle_expires_at,"
            "  s.expires_at FROM s JOIN operators o USING (operator_id)"
            " WHERE o.status = 'active'",
            session_hash,
            self._idle,
        )
        if row is None:
            ended = await self._pool.fetchval(
                "DELETE FROM operator_sessions WHERE session_hash = $1 RETURNING 1", session_hash
            )
            if ended:
                raise Unauthenticated("the session has expired", code="SESSION_EXPIRED")
            raise Unauthenticated("the session is not valid", code="SESSION_INVALID")
        info = SessionInfo(
            operator=_brief(row),
            csrf_token=credentials.csrf_token(secret),
            expires_at=row["expires_at"],
            idle_expires_at=row["idle_expires_at"],
        )
        caller = _operator_caller(row, "session", None)
        return caller, info

    async def sign_out(self, caller: Caller, secret: str) -> None:
        async with transaction(self._pool) as conn:
            await conn.execute(
                "DELETE FROM operator_sessions WHERE session_hash = $1",
                credentials.digest(secret),
            )
            assert caller.operator_id is not None
            await self._append(conn, caller, "operator.signed_out", caller.operator_id, {})

    async def purge_expired(self) -> None:
        """Housekeeping: sessions past their expiry, failures long forgotten."""
        await self._pool.execute(
            "DELETE FROM operator_sessions WHERE expires_at < now() OR idle_expires_at < now()"
        )
        await self._pool.execute(
            "DELETE FROM operator_login_failures WHERE last_failure < now() - $1::interval"
            " AND (locked_until IS NULL OR locked_until < now())",
            throttle.FORGET_AFTER,
        )

    # -- helpers --------------------------------------------------------------------------

    async def _count_attempt(self, keys: tuple[str, str]) -> None:
        """Count this attempt as a failure BEFORE the password is tried, or refuse it while
        a key is locked. Counting first, under the keys' row locks, is what holds against a
        burst: attempts sent at once are counted one after the other, so the one past the
        free count locks the key for all that follow, however many are still queued for
        hashing. A success gives its attempt back (``_count_success``)."""
        async with transaction(self._pool) as conn:
            for key, free in zip(
                keys, (throttle.FREE_PER_LOGIN, throttle.FREE_PER_ADDRESS), strict=True
            ):
                counted = await conn.fetchrow(
                    "INSERT INTO operator_login_failures AS f (key, failures, last_failure)"
                    " VALUES ($1, 1, now()) ON CONFLICT (key) DO UPDATE SET"
                    "  failures = CASE WHEN f.last_failure < now() - $2::interval THEN 1"
                    "   ELSE f.failures + 1 END, last_failure = now()"
                    "  WHERE f.locked_until IS NULL OR f.locked_until <= now()"
                    " RETURNING failures",
                    key,
                    throttle.FORGET_AFTER,
                )
                if counted is None:  # locked: the transaction (the other key's count) rolls back
                    wait = await conn.fetchval(
                        "SELECT extract(epoch FROM locked_until - now())"
                        " FROM operator_login_failures WHERE key = $1",
                        key,
                    )
                    raise RateLimited(
                        "too many failed sign-ins: try again later",
                        retry_after=max(float(wait), 1.0),
                        code="LOGIN_THROTTLED",
                    )
                lock = throttle.lock_after(counted["failures"], free)
                if lock is not None:
                    await conn.execute(
                        "UPDATE operator_login_failures SET locked_until = now() + $2::interval"
                        " WHERE key = $1",
                        key,
                        lock,
                    )

    @staticmethod
    async def _count_success(conn: Connection, keys: tuple[str, str]) -> None:
        """A right password: its login starts again from zero, and the address gets back the
        attempt counted for it (and is unlocked if that brings it back under its free count)."""
        await conn.execute("DELETE FROM operator_login_failures WHERE key = $1", keys[0])
        await conn.execute(
            "UPDATE operator_login_failures SET failures = greatest(failures - 1, 0),"
            "  locked_until = CASE WHEN failures - 1 <= $2 THEN NULL ELSE locked_until END"
            " WHERE key = $1",
            keys[1],
            throttle.FREE_PER_ADDRESS,
        )

    async def _end_everything(self, conn: Connection, operator_id: str) -> None:
        await conn.execute("DELETE FROM operator_sessions WHERE operator_id = $1", operator_id)
        await conn.execute(
            "UPDATE operator_tokens SET revoked_at = now()"
            " WHERE operator_id = $1 AND revoked_at IS NULL",
            operator_id,
        )

    async def _append(
        self, conn: Connection, caller: Caller, action: str, operator_id: str, data: dict[str, Any]
    ) -> None:
        await self._audit.record(
            conn,
            caller,
            action=action,
            object_type="operator",
            object_id=operator_id,
            data=data,
        )


def _ends_administration(row: asyncpg.Record, changes: dict[str, Any]) -> bool:
    """Whether ``changes`` take an active administrator out of administration."""
    if row["status"] != "active" or "administrator" not in row["roles"]:
        return False
    return changes.get("status") == "disabled" or (
        "roles" in changes and "administrator" not in changes["roles"]
    )


def _check_self_or_administrator(caller: Caller, operator_id: str) -> None:
    if "administrator" not in caller.roles and caller.operator_id != operator_id:
        raise Forbidden(
            "only an administrator manages another operator's tokens", code="NOT_OWN_OPERATOR"
        )
