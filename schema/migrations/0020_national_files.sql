-- National interface gateway: the reconciliation files a facility uploads (9101) and the
-- detail results it downloads (9102).
--
-- Each file belongs to one facility and is made by one message: (fixmedins_code, msgid)
-- is unique, so a message run twice (a retry after a crash) finds the file it made. A file
-- is kept until dld_endtime; an expired one is never read and is deleted by the next
-- upload of its facility. The content is already compressed (a zip): stored out of line,
-- not compressed again.
CREATE TABLE national_files (
    file_qury_no   text PRIMARY KEY,
    fixmedins_code text NOT NULL REFERENCES facilities,
    msgid          text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('upload', 'result')),
    filename       text NOT NULL,
    content        bytea NOT NULL,
    size           integer NOT NULL CHECK (size >= 0),
    created_at     timestamptz NOT NULL,
    dld_endtime    timestamptz NOT NULL,
    -- a result's outcome as 3202 answered it (a message run again answers the same)
    stmt_rslt      text CHECK (stmt_rslt IN ('0', '1')),
    stmt_rslt_dscr text,
    UNIQUE (fixmedins_code, msgid)
);
ALTER TABLE national_files ALTER COLUMN content SET STORAGE EXTERNAL;
CREATE INDEX national_files_facility_expiry ON national_files (fixmedins_code, dld_endtime);
