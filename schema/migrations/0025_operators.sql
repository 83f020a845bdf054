-- Operators: named people with roles, in place of one shared administrator token.
--
-- Nothing secret is stored in a form that could be used: a password only as its argon2id
-- hash, a console session and an API token only as the SHA-256 of their random secret (a
-- database reader cannot replay them). Audit entries written before this migration name
-- the actor "admin" and still verify: the chain covers what was written, and nothing here
-- rewrites it.
CREATE TABLE operators (
    operator_id   text PRIMARY KEY CHECK (operator_id ~ '^OP[0-9A-F]{10}$'),
    login         text NOT NULL UNIQUE CHECK (login ~ '^[a-z0-9._-]{3,32}$'),
    display_name  text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 100),
    roles         text[] NOT NULL CHECK (
        cardinality(roles) BETWEEN 1 AND 4
        AND roles <@ ARRAY['administrator', 'clerk', 'reviewer', 'auditor']::text[]
    ),
    password_hash text NOT NULL,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- A console session: the cookie holds a random secret, the row its SHA-256. The CSRF token
-- is derived from the secret (cardsvc/operators/secrets.py), so it is not stored either.
CREATE TABLE operator_sessions (
    session_hash    bytea PRIMARY KEY CHECK (octet_length(session_hash) = 32),
    operator_id     text NOT NULL REFERENCES operators ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    idle_expires_at timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    CHECK (idle_expires_at <= expires_at)
);
CREATE INDEX operator_sessions_operator ON operator_sessions (operator_id);
CREATE INDEX operator_sessions_expiry ON operator_sessions (expires_at);

-- An API token (Authorization: Bearer cso_...): shown once, its SHA-256 kept.
CREATE TABLE operator_tokens (
    token_id     text PRIMARY KEY CHECK (token_id ~ '^OT[0-9A-F]{10}$'),
    operator_id  text NOT NULL REFERENCES operators ON DELETE CASCADE,
    name         text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 64),
    token_hash   bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    last_used_at timestamptz
);
CREATE INDEX operator_tokens_operator ON operator_tokens (operator_id);

-- Failed sign-ins, per login and per client address (key 'login:<login>', 'addr:<ip>'),
-- shared by every worker process: past a few failures each further one locks the key for
-- twice as long as the last (cardsvc/operators/throttle.py). A quiet key is forgotten.
CREATE TABLE operator_login_failures (
    key          text PRIMARY KEY CHECK (char_length(key) <= 80),
    failures     integer NOT NULL CHECK (failures >= 0),
    last_failure timestamptz NOT NULL,
    locked_until timestamptz
);
