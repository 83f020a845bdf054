-- Foundation: registry, terminals and sessions, cards, card authentication, ledger, audit.
-- Money is integer fen (bigint). Person-owned tables carry psn_no and facility-owned ones
-- fixmedins_code, the future distribution columns (docs/architecture.md).

CREATE TABLE persons (
    psn_no         text PRIMARY KEY,
    certno_hash    bytea NOT NULL UNIQUE,          -- keyed HMAC, for lookup only
    certno_enc     bytea NOT NULL,                 -- AEAD ciphertext, AAD = psn_no
    certno_masked  text NOT NULL,
    psn_name       text NOT NULL,
    gend           char(1) NOT NULL CHECK (gend IN ('1', '2')),
    brdy           date NOT NULL,
    admdvs         char(6) NOT NULL,
    psn_type       text NOT NULL CHECK (psn_type IN ('in_service', 'retired', 'resident')),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE psn_no_seq;

CREATE TABLE insurances (
    psn_no     text NOT NULL REFERENCES persons,
    insutype   text NOT NULL CHECK (insutype IN ('310', '390', '410', '510')),
    begndate   date NOT NULL,
    enddate    date,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (psn_no, insutype),
    CHECK (enddate IS NULL OR enddate >= begndate)
);

-- The personal account's stored balance; the ledger's person:<psn_no> entries prove it.
CREATE TABLE psn_accounts (
    psn_no  text PRIMARY KEY REFERENCES persons,
    balance bigint NOT NULL DEFAULT 0 CHECK (balance >= 0)
);

CREATE TABLE facilities (
    fixmedins_code text PRIMARY KEY,
    fixmedins_name text NOT NULL,
    type           text NOT NULL CHECK (type IN ('hospital', 'pharmacy')),
    level          text CHECK (level IN ('community', '1', '2', '3')),
    agreements     text[] NOT NULL DEFAULT '{}',
    credit_rating  char(1) NOT NULL DEFAULT 'A' CHECK (credit_rating IN ('A', 'B', 'C', 'D')),
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((type = 'hospital') = (level IS NOT NULL))
);

CREATE TABLE terminals (
    terminal_id    text PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('counter', 'pos', 'his', 'kiosk')),
    fixmedins_code text REFERENCES facilities,
    key_under_lmk  bytea NOT NULL,                 -- K_term, only ever under hsm_stub's LMK
    kcv            text NOT NULL,
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind IN ('pos', 'his')) = (fixmedins_code IS NOT NULL))
);
CREATE SEQUENCE terminal_no_seq;

CREATE TABLE sign_in_challenges (
    challenge   bytea PRIMARY KEY,
    terminal_id text NOT NULL REFERENCES terminals,
    expires_at  timestamptz NOT NULL
);

CREATE TABLE terminal_sessions (
    session_id  text PRIMARY KEY,
    terminal_id text NOT NULL REFERENCES terminals,
    key_enc     bytea NOT NULL,                    -- session key, AEAD under the data key
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX terminal_sessions_expiry ON terminal_sessions (expires_at);

-- Nonces seen inside the signature window; older ones are purged by the service.
CREATE TABLE request_nonces (
    terminal_id text NOT NULL,
    nonce       text NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (terminal_id, nonce)
);
CREATE INDEX request_nonces_seen ON request_nonces (seen_at);

CREATE TABLE cards (
    card_no     char(9) PRIMARY KEY,
    card_sn     char(32) NOT NULL UNIQUE,
    psn_no      text NOT NULL REFERENCES persons,
    admdvs      char(6) NOT NULL,
    status      text NOT NULL CHECK (status IN ('issued', 'active', 'loss_reported', 'replaced', 'cancelled')),
    issue_date  date NOT NULL,
    expiry_date date NOT NULL,
    replaces    char(9) REFERENCES cards,
    issued_by   text NOT NULL REFERENCES terminals,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE card_no_seq;
-- One person has at most one live card.
CREATE UNIQUE INDEX cards_one_live_per_person ON cards (psn_no)
    WHERE status IN ('issued', 'active', 'loss_reported');

CREATE TABLE card_auth_challenges (
    auth_id     text PRIMARY KEY,
    session_id  text NOT NULL,
    card_no     char(9) NOT NULL REFERENCES cards,
    purpose     text NOT NULL CHECK (purpose IN ('identify', 'transaction')),
    challenge   bytea NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX card_auth_challenges_expiry ON card_auth_challenges (expires_at);

CREATE TABLE catalog_items (
    code         text PRIMARY KEY,
    name         text NOT NULL,
    chrgitm_lv   char(1) NOT NULL CHECK (chrgitm_lv IN ('A', 'B', 'C')),
    selfpay_prop integer CHECK (selfpay_prop BETWEEN 0 AND 100),  -- NULL: the policy default
    max_price    bigint CHECK (max_price > 0),
    work_injury  boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE injury_cases (
    case_id     text PRIMARY KEY,
    psn_no      text NOT NULL REFERENCES persons,
    employer    text NOT NULL,
    injury_date date NOT NULL,
    valid_from  date NOT NULL,
    valid_to    date NOT NULL,
    status      text NOT NULL DEFAULT 'approved' CHECK (status IN ('approved', 'revoked')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (valid_to >= valid_from)
);
CREATE INDEX injury_cases_psn ON injury_cases (psn_no);
CREATE SEQUENCE injury_case_seq;

-- Double-entry ledger. Each txn's entries balance (sum of D = sum of C); amounts > 0.
CREATE TABLE ledger_txns (
    txn_id     bigserial PRIMARY KEY,
    kind       text NOT NULL,
    ref        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE ledger_entries (
    txn_id  bigint NOT NULL REFERENCES ledger_txns,
    line    smallint NOT NULL,
    account text NOT NULL,
    side    char(1) NOT NULL CHECK (side IN ('D', 'C')),
    amount  bigint NOT NULL CHECK (amount > 0),
    PRIMARY KEY (txn_id, line)
);
CREATE INDEX ledger_entries_account ON ledger_entries (account);

CREATE TABLE account_credits (
    ref        text PRIMARY KEY,
    psn_no     text NOT NULL REFERENCES persons,
    amount     bigint NOT NULL CHECK (amount > 0),
    txn_id     bigint NOT NULL REFERENCES ledger_txns,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Hash-chained audit log, spread over 64 chains so that concurrent transactions rarely
-- wait on the same chain head. Each entry's hash covers the previous entry's hash.
CREATE TABLE audit_chains (
    chain smallint PRIMARY KEY,
    seq   bigint NOT NULL,
    head  bytea NOT NULL
);
INSERT INTO audit_chains (chain, seq, head)
    SELECT c, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
    FROM generate_series(0, 63) AS c;

CREATE TABLE audit_log (
    chain       smallint NOT NULL,
    seq         bigint NOT NULL,
    at          timestamptz NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    object_type text NOT NULL,
    object_id   text NOT NULL,
    data        text NOT NULL,                     -- canonical JSON, hashed byte for byte
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX audit_log_object ON audit_log (object_type, object_id);
