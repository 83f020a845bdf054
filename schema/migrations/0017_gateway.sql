-- The national interface gateway (cardsvc/national): its clients, their request nonces,
-- the sign-ins (9001) and every message's stored answer (exactly once per msgid).

-- A gateway client acts for one facility. Its secret is needed in clear to check the TIF
-- signature, so it is stored only encrypted under the data key (SM4-GCM, AAD the paasid,
-- cardsvc/privacy.py) and re-encrypted by a data key rotation.
CREATE TABLE gateway_clients (
    paasid         text PRIMARY KEY,
    fixmedins_code text NOT NULL REFERENCES facilities,
    secret_enc     bytea NOT NULL,
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gateway_clients_facility ON gateway_clients (fixmedins_code);

-- The nonces seen within the timestamp window, per client; pruned by the housekeeping
-- task. Logged (unlike request_nonces): a crash must not let a captured request's headers,
-- which do not cover the body, be used again.
CREATE TABLE gateway_nonces (
    paasid  text NOT NULL,
    nonce   text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (paasid, nonce)
);
CREATE INDEX gateway_nonces_seen ON gateway_nonces (seen_at);

-- 9001 sign-ins: sign_no is valid for its facility until 9002 or expires_at (24 h).
CREATE TABLE gateway_signins (
    sign_no        text PRIMARY KEY,
    fixmedins_code text NOT NULL REFERENCES facilities,
    paasid         text NOT NULL REFERENCES gateway_clients,
    msgid          text NOT NULL,
    opter_no       text NOT NULL,
    mac            text NOT NULL,
    ip             text NOT NULL,
    signed_in_at   timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    signed_out_at  timestamptz,
    -- A 9001 rerun under the same msgid finds the sign-in it made.
    UNIQUE (fixmedins_code, msgid)
);

-- Every message's answer as it was sent, so the same msgid from the same facility gets it
-- again unchanged; body_hash (SHA-256 of infno and the normalised input) tells a retry
-- from another message under a used msgid (MSGID_REUSED).
CREATE TABLE gateway_messages (
    fixmedins_code text NOT NULL,
    msgid          text NOT NULL,
    infno          text NOT NULL,
    body_hash      bytea NOT NULL,
    paasid         text NOT NULL,
    inf_refmsgid   text NOT NULL,
    infcode        smallint NOT NULL CHECK (infcode IN (0, -1)),
    content_type   text NOT NULL,
    answer         bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fixmedins_code, msgid)
);

-- inf_refmsgid: region (6) + yyyyMMddHHmmss + this sequence's 10 digits.
CREATE SEQUENCE gateway_refmsg_seq MAXVALUE 9999999999 CYCLE;
