-- Audit anchors: every audit chain's head at one moment, MACed by the HSM under a key the
-- database never sees (see cardsvc/audit/anchors.py). Each anchor is first appended to a file
-- outside the database (CARDSVC_AUDIT_ANCHOR_DIR); this copy is a convenience: verification
-- checks every row's MAC with the HSM, so rows can be deleted here but not forged.
CREATE TABLE audit_anchors (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at   timestamptz NOT NULL,
    line text NOT NULL                                 -- the anchor's JSON line, as exported
);
CREATE INDEX audit_anchors_at ON audit_anchors (at);
