-- Operator lists and actions: search indexes, credit-rating history, handled flags and the
-- public fund report's snapshots.

-- A name search is a prefix search (psn_name LIKE 'prefix%'): text_pattern_ops lets a
-- b-tree answer it whatever the database's collation.
CREATE INDEX persons_name_prefix ON persons (psn_name text_pattern_ops);

-- The audit list filters by time (and by actor or action within it).
CREATE INDEX audit_log_at ON audit_log (at);

-- Settlement lists across facilities, newest first, and by date range (the facility and
-- person lists have their own indexes). Business date and time only grow, so each
-- settlement adds its entry at the index's right edge: no random page per insert.
CREATE INDEX settlements_time ON settlements (setl_date, setl_time);

-- Reviews decided or withdrawn (the pending ones have settlements_review): only settlements
-- of C-rated facilities are in it.
CREATE INDEX settlements_reviewed ON settlements (setl_time) WHERE review_status <> 'none';

-- Every change of a facility's credit rating, with its reason and the operator who made it
-- (id and display name as they were then; the audit actor beside them).
CREATE TABLE facility_credit_ratings (
    change_id      bigserial PRIMARY KEY,
    fixmedins_code text NOT NULL REFERENCES facilities,
    from_rating    char(1) NOT NULL,
    to_rating      char(1) NOT NULL,
    reason         text NOT NULL,
    actor          text NOT NULL,
    operator_id    text,
    operator_name  text,
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX facility_credit_ratings_facility ON facility_credit_ratings (fixmedins_code, at);

-- A supervision flag is handled once, by a reviewer, with a note.
ALTER TABLE supervision_flags
    ADD COLUMN handled      boolean NOT NULL DEFAULT false,
    ADD COLUMN handled_note text,
    ADD COLUMN handled_by   text,                  -- the actor; the operator's name beside it
    ADD COLUMN handled_by_name text,
    ADD COLUMN handled_at   timestamptz,
    ADD CONSTRAINT supervision_flags_handled CHECK (handled = (handled_at IS NOT NULL));
CREATE INDEX supervision_flags_facility ON supervision_flags (fixmedins_code, created_at);

-- A published fund report is a frozen snapshot of aggregates (no person, no facility code
-- or name): what the public reads never changes after publication.
CREATE TABLE public_reports (
    report_id    text PRIMARY KEY,
    title        text NOT NULL,
    period_from  date NOT NULL,
    period_to    date NOT NULL,
    snapshot     jsonb NOT NULL,
    published_by text NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    CHECK (period_to >= period_from)
);
CREATE INDEX public_reports_published ON public_reports (published_at);
