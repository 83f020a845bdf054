"""Typed settings, read from the environment once at start and passed in.

Every variable is ``CARDSVC_*`` except ``DATABASE_URL``. Secrets (admin token, data key)
may be given as a file path in ``CARDSVC_*_FILE`` instead, so they need not sit in the
environment of every child process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

DEFAULT_DATABASE_URL = "postgresql://cardsvc@127.0.0.1:5433/cardsvc"


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1  # processes sharing the port (SO_REUSEPORT); see cardsvc/server.py
    admin_token: str
    # 32 bytes protecting personal data at rest (identity numbers, session keys):
    # AEAD encryption and keyed lookup hashes are derived from it. Card and terminal
    # master keys never come here: they stay inside hsm_stub.
    data_key: bytes
    hsm_host: str = "127.0.0.1"
    hsm_port: int = 9510
    hsm_connections: int = 4
    hsm_timeout: float = 2.0
    # The HSM link's mutual-TLS credentials (PEM files; see cardsvc/hsm/tls.py): the CA that
    # issued hsm_stub's certificate, and cardsvc's client certificate and key.
    hsm_ca_file: str = ""
    hsm_cert_file: str = ""
    hsm_key_file: str = ""
    db_pool_min: int = 2
    db_pool_max: int = 10
    # The most settlements one batch of a worker's settlement pipeline takes.
    settle_batch_max: int = 64
    db_command_timeout: float = 5.0
    # At start, how long (seconds, in all) to keep trying a database that does not answer.
    db_connect_timeout: float = 30.0
    # Bound on a whole request, waiting for a pooled connection included: past it the
    # caller gets 503 REQUEST_TIMEOUT (a settle retried with its key is then safe).
    request_timeout: float = 10.0
    # The bound of the few administrator routes that read whole tables (ledger proof,
    # audit verification), and of each of their statements.
    long_request_timeout: float = 300.0
    # A clearing run is one transaction of its own, in the background: its statement bound,
    # and how long POST /v1/clearing/runs waits for it before answering 202.
    clearing_timeout: float = 1800.0
    clearing_wait: float = 3.0
    session_ttl: int = 12 * 3600
    signature_window: int = 300
    challenge_ttl: int = 60
    card_token_ttl: int = 300
    max_body_bytes: int = 256 * 1024
    terminal_rate: float = 50.0  # requests a second per terminal, per worker process
    terminal_burst: float = 100.0
    # The national gateway: its bodies carry whole files (9101), and one client sends a
    # whole facility's messages (per worker process).
    gateway_max_body_bytes: int = 8 * 1024 * 1024
    gateway_rate: float = 200.0
    gateway_burst: float = 400.0
    # Days a gateway message's stored answer is kept (then purged): a retry or a late copy
    # of the message within them gets its answer again, and another body MSGID_REUSED.
    gateway_message_retention_days: int = 30
    # Lookups by identity number (02) that find nobody, per gateway client and business
    # day; past it the client's lookups by identity number are refused until the next day.
    gateway_certno_misses_per_day: int = 50
    # Sign-in, per worker process. Challenges per client address (the socket's peer, never
    # a forwarded header); naming a terminal id costs that terminal nothing. Failed
    # completions (a wrong cryptogram) per terminal id and per client address.
    sign_in_address_rate: float = 20.0  # challenges a second
    sign_in_address_burst: float = 200.0  # a whole site behind one address, after a restart
    sign_in_terminal_rate: float = 0.1  # failed completions a second, per terminal
    sign_in_terminal_burst: float = 10.0
    sign_in_failure_rate: float = 0.5  # failed completions a second, per address
    sign_in_failure_burst: float = 20.0
    log_format: str = "json"
    log_level: str = "info"
    # Audit anchors (chain heads MACed by the HSM): the folder their JSON lines are appended
    # to, which operators ship off this host, and how often the service writes one (0: never
    # in the background; `python -m cardsvc anchor-audit` still does).
    audit_anchor_dir: str = "var/audit-anchors"
    audit_anchor_interval: float = 60.0
    # Operators' console sessions: ended after this long without a request, and this long
    # after sign-in whatever happens. The cookie is marked Secure when served over HTTPS
    # (behind a TLS-terminating proxy): set CARDSVC_COOKIE_SECURE=true there.
    operator_session_idle_seconds: int = 900
    operator_session_max_seconds: int = 28800
    cookie_secure: bool = False


def _secret(env: Mapping[str, str], name: str) -> str | None:
    if name in env:
        return env[name]
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{name}_FILE: {path} is not a text file") from None
    return None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _data_key(raw: str | None, name: str = "CARDSVC_DATA_KEY") -> bytes:
    if raw is None:
        raise ConfigError(f"{name} (64 hex chars) is required")
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        raise ConfigError(f"{name} must be hex") from None
    if len(key) != 32:
        raise ConfigError(f"{name} must be 32 bytes (64 hex chars)")
    return key


def read_data_key_file(path: Path, name: str) -> bytes:
    """A data key from a file holding its 64 hex characters (as ``CARDSVC_DATA_KEY_FILE``)."""
    try:
        raw = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    return _data_key(raw, name)


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_LOG_FORMATS = ("json", "console")


def _checked(settings: Settings) -> Settings:
    """Values that parse but cannot work, refused at start with the variable's name."""
    if not 0 < settings.port < 65536:
        raise ConfigError(f"CARDSVC_PORT must be between 1 and 65535, got {settings.port}")
    if settings.workers < 1:
        raise ConfigError(f"CARDSVC_WORKERS must be at least 1, got {settings.workers}")
    if settings.log_level.lower() not in _LOG_LEVELS:
        raise ConfigError(
            f"CARDSVC_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, got {settings.log_level!r}"
        )
    if settings.log_format not in _LOG_FORMATS:
        raise ConfigError(
            f"CARDSVC_LOG_FORMAT must be json or console, got {settings.log_format!r}"
        )
    if not 0 <= settings.db_pool_min <= settings.db_pool_max or settings.db_pool_max < 1:
        raise ConfigError(
            "CARDSVC_DB_POOL_MAX must be at least 1 and CARDSVC_DB_POOL_MIN at most it"
        )
    if settings.db_connect_timeout < 0:
        raise ConfigError("CARDSVC_DB_CONNECT_TIMEOUT must not be negative")
    if not 1 <= settings.settle_batch_max <= 1000:
        raise ConfigError("CARDSVC_SETTLE_BATCH_MAX must be between 1 and 1000")
    if not 1 <= settings.gateway_message_retention_days <= 3660:
        raise ConfigError("CARDSVC_GATEWAY_MESSAGE_RETENTION_DAYS must be between 1 and 3660")
    if not 1 <= settings.operator_session_idle_seconds <= settings.operator_session_max_seconds:
        raise ConfigError(
            "CARDSVC_OPERATOR_SESSION_IDLE_SECONDS must be at least 1 and at most"
            " CARDSVC_OPERATOR_SESSION_MAX_SECONDS"
        )
    if settings.operator_session_max_seconds > 7 * 86400:
        raise ConfigError("CARDSVC_OPERATOR_SESSION_MAX_SECONDS must be at most a week")
    if settings.gateway_certno_misses_per_day < 0:
        raise ConfigError("CARDSVC_GATEWAY_CERTNO_MISSES_PER_DAY must not be negative")
    return settings


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    return _checked(_load(env))


def _load(env: Mapping[str, str]) -> Settings:
    token = _secret(env, "CARDSVC_ADMIN_TOKEN")
    if not token or len(token) < 16:
        raise ConfigError("CARDSVC_ADMIN_TOKEN must be set, at least 16 characters")
    defaults = Settings(admin_token=token, data_key=b"\0" * 32)
    return Settings(
        database_url=env.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        host=env.get("CARDSVC_HOST", defaults.host),
        port=_int(env, "CARDSVC_PORT", defaults.port),
        workers=_int(env, "CARDSVC_WORKERS", defaults.workers),
        admin_token=token,
        data_key=_data_key(_secret(env, "CARDSVC_DATA_KEY")),
        hsm_host=env.get("CARDSVC_HSM_HOST", defaults.hsm_host),
        hsm_port=_int(env, "CARDSVC_HSM_PORT", defaults.hsm_port),
        hsm_connections=_int(env, "CARDSVC_HSM_CONNECTIONS", defaults.hsm_connections),
        hsm_timeout=_float(env, "CARDSVC_HSM_TIMEOUT", defaults.hsm_timeout),
        hsm_ca_file=env.get("CARDSVC_HSM_CA_FILE", defaults.hsm_ca_file),
        hsm_cert_file=env.get("CARDSVC_HSM_CERT_FILE", defaults.hsm_cert_file),
        hsm_key_file=env.get("CARDSVC_HSM_KEY_FILE", defaults.hsm_key_file),
        db_pool_min=_int(env, "CARDSVC_DB_POOL_MIN", defaults.db_pool_min),
        db_pool_max=_int(env, "CARDSVC_DB_POOL_MAX", defaults.db_pool_max),
        settle_batch_max=_int(env, "CARDSVC_SETTLE_BATCH_MAX", defaults.settle_batch_max),
        db_command_timeout=_float(env, "CARDSVC_DB_COMMAND_TIMEOUT", defaults.db_command_timeout),
        db_connect_timeout=_float(env, "CARDSVC_DB_CONNECT_TIMEOUT", defaults.db_connect_timeout),
        request_timeout=_float(env, "CARDSVC_REQUEST_TIMEOUT", defaults.request_timeout),
        long_request_timeout=_float(
            env, "CARDSVC_LONG_REQUEST_TIMEOUT", defaults.long_request_timeout
        ),
        clearing_timeout=_float(env, "CARDSVC_CLEARING_TIMEOUT", defaults.clearing_timeout),
        clearing_wait=_float(env, "CARDSVC_CLEARING_WAIT", defaults.clearing_wait),
        session_ttl=_int(env, "CARDSVC_SESSION_TTL", defaults.session_ttl),
        signature_window=_int(env, "CARDSVC_SIGNATURE_WINDOW", defaults.signature_window),
        challenge_ttl=_int(env, "CARDSVC_CHALLENGE_TTL", defaults.challenge_ttl),
        card_token_ttl=_int(env, "CARDSVC_CARD_TOKEN_TTL", defaults.card_token_ttl),
        max_body_bytes=_int(env, "CARDSVC_MAX_BODY_BYTES", defaults.max_body_bytes),
        terminal_rate=_float(env, "CARDSVC_TERMINAL_RATE", defaults.terminal_rate),
        terminal_burst=_float(env, "CARDSVC_TERMINAL_BURST", defaults.terminal_burst),
        gateway_max_body_bytes=_int(
            env, "CARDSVC_GATEWAY_MAX_BODY_BYTES", defaults.gateway_max_body_bytes
        ),
        gateway_rate=_float(env, "CARDSVC_GATEWAY_RATE", defaults.gateway_rate),
        gateway_burst=_float(env, "CARDSVC_GATEWAY_BURST", defaults.gateway_burst),
        gateway_message_retention_days=_int(
            env,
            "CARDSVC_GATEWAY_MESSAGE_RETENTION_DAYS",
            defaults.gateway_message_retention_days,
        ),
        gateway_certno_misses_per_day=_int(
            env, "CARDSVC_GATEWAY_CERTNO_MISSES_PER_DAY", defaults.gateway_certno_misses_per_day
        ),
        sign_in_address_rate=_float(
            env, "CARDSVC_SIGN_IN_ADDRESS_RATE", defaults.sign_in_address_rate
        ),
        sign_in_address_burst=_float(
            env, "CARDSVC_SIGN_IN_ADDRESS_BURST", defaults.sign_in_address_burst
        ),
        sign_in_terminal_rate=_float(
            env, "CARDSVC_SIGN_IN_TERMINAL_RATE", defaults.sign_in_terminal_rate
        ),
        sign_in_terminal_burst=_float(
            env, "CARDSVC_SIGN_IN_TERMINAL_BURST", defaults.sign_in_terminal_burst
        ),
        sign_in_failure_rate=_float(
            env, "CARDSVC_SIGN_IN_FAILURE_RATE", defaults.sign_in_failure_rate
        ),
        sign_in_failure_burst=_float(
            env, "CARDSVC_SIGN_IN_FAILURE_BURST", defaults.sign_in_failure_burst
        ),
        log_format=env.get("CARDSVC_LOG_FORMAT", defaults.log_format),
        log_level=env.get("CARDSVC_LOG_LEVEL", defaults.log_level),
        audit_anchor_dir=env.get("CARDSVC_AUDIT_ANCHOR_DIR", defaults.audit_anchor_dir),
        audit_anchor_interval=_float(
            env, "CARDSVC_AUDIT_ANCHOR_INTERVAL", defaults.audit_anchor_interval
        ),
        operator_session_idle_seconds=_int(
            env, "CARDSVC_OPERATOR_SESSION_IDLE_SECONDS", defaults.operator_session_idle_seconds
        ),
        operator_session_max_seconds=_int(
            env, "CARDSVC_OPERATOR_SESSION_MAX_SECONDS", defaults.operator_session_max_seconds
        ),
        cookie_secure=_bool(env, "CARDSVC_COOKIE_SECURE", defaults.cookie_secure),
    )
