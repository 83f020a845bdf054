-- National gateway: messages a 2601 (reversal by message) undid, or found not yet arrived.
--
-- An HIS that lost a settlement's answer sends 2601 for its msgid. If the original message
-- is still on its way (a retry queued in the HIS or a proxy), it must not settle after its
-- reversal was answered: a settlement message (2207/2304) whose msgid is recorded here is
-- refused (MSGID_UNDONE). One row per (facility, msgid); the 2601 that recorded it.
CREATE TABLE gateway_undone_messages (
    fixmedins_code  text NOT NULL,
    msgid           text NOT NULL,
    oinfno          text NOT NULL,
    undone_by       text NOT NULL,                 -- the 2601's msgid
    outcome         text NOT NULL,                 -- what it did: reversed, cancelled, deleted, none
    undone_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fixmedins_code, msgid)
);
