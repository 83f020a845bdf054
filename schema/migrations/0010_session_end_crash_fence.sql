-- A terminal session can end before it expires: when its terminal is disabled (re-enabling
-- does not revive it), and when the database crashed (a crash empties request_nonces, so a
-- request captured before it could otherwise be replayed on its session). The admission
-- statement refuses a request whose session has ended.
ALTER TABLE terminal_sessions
    ADD COLUMN ended_at timestamptz,
    ADD COLUMN ended_reason text
        CHECK (ended_reason IN ('terminal_disabled', 'database_restart')),
    ADD CHECK ((ended_at IS NULL) = (ended_reason IS NULL));

-- One row, UNLOGGED like request_nonces: a crash empties both, a clean restart neither.
-- Each new pool connection puts the row back if it is missing, and in the same statement
-- ends every open session (cardsvc/terminals/admission.py, ``fence_after_crash``).
CREATE UNLOGGED TABLE crash_marker (
    one boolean PRIMARY KEY DEFAULT true CHECK (one)
);
INSERT INTO crash_marker DEFAULT VALUES;
