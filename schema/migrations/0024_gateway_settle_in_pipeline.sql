-- A gateway settlement (2207/2304) no longer claims its visit in transactions of its own:
-- the settlement pipeline's batch write marks the visit's lines with the settlement, in the
-- settlement's own statement, guarded by the lines' versions. The claim columns go.
ALTER TABLE gateway_visits
    DROP COLUMN settling_msgid,
    DROP COLUMN settling_since;

-- Whether a 2601 undid message p_msgid, serialised with that 2601: the message's advisory
-- lock (a 2601 holds it for its whole transaction), then the read, in a statement that
-- begins once the lock is granted (so it sees that 2601 if it committed). Inside the
-- caller's transaction the lock is held until it ends.
CREATE FUNCTION gateway_message_undone(p_fixmedins_code text, p_msgid text) RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    by_msgid text;
BEGIN
    PERFORM pg_advisory_xact_lock(
        hashtextextended('gateway-msg|' || p_fixmedins_code || '|' || p_msgid, 0));
    SELECT u.undone_by INTO by_msgid FROM gateway_undone_messages u
    WHERE u.fixmedins_code = p_fixmedins_code AND u.msgid = p_msgid;
    RETURN by_msgid;
END
$$;

-- A settlement message's opening read, in one round trip: whether a 2601 undid it (as
-- above), the person's type, and the settlement the message already made (a rerun whose
-- answer was lost).
CREATE FUNCTION gateway_message_open(
    p_fixmedins_code text, p_msgid text, p_key text, p_psn_no text,
    OUT undone_by text, OUT psn_type text, OUT setl_id text
)
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    undone_by := gateway_message_undone(p_fixmedins_code, p_msgid);
    SELECT p.psn_type INTO psn_type FROM persons p WHERE p.psn_no = p_psn_no;
    SELECT s.setl_id INTO setl_id FROM settlements s
    WHERE s.fixmedins_code = p_fixmedins_code AND s.idempotency_key = p_key;
END
$$;
