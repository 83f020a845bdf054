-- National gateway: a message's msgid is reserved before its transaction runs, a stored
-- file answer (9102) is a reference to its file, and stored answers are purged after a
-- retention period.
--
-- A row of gateway_messages is now either
--   reserved  (infcode NULL): admitted with this body_hash, its transaction running (or
--             interrupted: once pending_until has passed, the same body may take it over;
--             another body under the msgid is refused MSGID_REUSED from the start), or
--   answered  (infcode set): the answer as sent, its bytes in ``answer`` or, for a file,
--             the file's number in ``file_qury_no`` (read from national_files while the
--             file is kept, never copied).
-- ``owner`` is the admission (its inf_refmsgid sequence number) holding a reservation.
ALTER TABLE gateway_messages
    ALTER COLUMN inf_refmsgid DROP NOT NULL,
    ALTER COLUMN infcode DROP NOT NULL,
    ALTER COLUMN content_type DROP NOT NULL,
    ALTER COLUMN answer DROP NOT NULL,
    ADD COLUMN pending_until timestamptz,
    ADD COLUMN owner bigint,
    ADD COLUMN file_qury_no text,
    ADD CONSTRAINT gateway_messages_state CHECK (
        CASE WHEN infcode IS NULL
            THEN pending_until IS NOT NULL AND owner IS NOT NULL AND inf_refmsgid IS NULL
                 AND content_type IS NULL AND answer IS NULL AND file_qury_no IS NULL
            ELSE pending_until IS NULL AND owner IS NULL AND inf_refmsgid IS NOT NULL
                 AND content_type IS NOT NULL AND (answer IS NULL) <> (file_qury_no IS NULL)
        END
    );

-- The retention purge (CARDSVC_GATEWAY_MESSAGE_RETENTION_DAYS) deletes by age.
CREATE INDEX gateway_messages_created ON gateway_messages (created_at);
