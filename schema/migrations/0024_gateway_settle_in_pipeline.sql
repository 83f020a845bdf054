-- A gateway settlement (2207/2304) no longer claims its visit in transactions of its own:
-- the settlement pipeline's batch write marks the visit's lines with the settlement, in the
-- settlement's own statement, guarded by the lines' versions. The claim columns go.
ALTER TABLE gateway_visits
    DROP COLUMN settling_msgid,
    DROP COLUMN settling_since;

-- A settlement message's opening read, in one round trip: serialised with a 2601 naming
-- the message (the message's advisory lock, held by a 2601 for its whole transaction), then,
-- in a statement that begins after the lock is granted (so it sees that 2601 if it
-- committed), whether a 2601 undid the message, the person's type, and the settlement the
-- message already made (a rerun whose answer was lost).
CREATE FUNCTION gateway_message_open(
    p_fixmedins_code text, p_msgid text, p_key text, p_psn_no text,
    OUT undone_by text, OUT psn_type text, OUT setl_id text
)
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(
        hashtextextended('gateway-msg|' || p_fixmedins_code || '|' || p_msgid, 0));
    SELECT u.undone_by INTO undone_by FROM gateway_undone_messages u
    WHERE u.fixmedins_code = p_fixmedins_code AND u.msgid = p_msgid;
    SELECT p.psn_type INTO psn_type FROM persons p WHERE p.psn_no = p_psn_no;
    SELECT s.setl_id INTO setl_id FROM settlements s
    WHERE s.fixmedins_code = p_fixmedins_code AND s.idempotency_key = p_key;
END
$$;
