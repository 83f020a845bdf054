-- National gateway: visits (mdtrt_id) and their uploaded fee lines.
--
-- A visit belongs to one facility (the distribution column, with the visit's mdtrt_id),
-- one person, one insutype and med_type. Its fee lines are uploaded (2204/2301) before a
-- settlement; a settlement takes the visit's unsettled lines and marks them with its
-- setl_id, a reversal unmarks them. Every row records the message (msgid) that created it,
-- so a rerun of that message finds what it did, and a reversal by message (2601) undoes it.
-- Amounts: total in fen, price in 10^-4 fen, count in 10^-4 units (all exact integers).

CREATE TABLE gateway_visits (
    fixmedins_code   text NOT NULL,
    mdtrt_id         text NOT NULL CHECK (length(mdtrt_id) BETWEEN 1 AND 30),
    psn_no           text NOT NULL REFERENCES persons,
    insutype         text NOT NULL,
    med_type         text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('outpatient', 'inpatient', 'pharmacy')),
    status           text NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'cancelled', 'discharged')),
    card_no          text,                          -- the card of the certificate, if any
    ipt_otp_no       text NOT NULL DEFAULT '',      -- the facility's own visit number
    injury_case_id   text,                          -- 410: the approved case it settles under
    delivery_type    text CHECK (delivery_type IN ('normal', 'cesarean')),
    begntime         timestamptz NOT NULL,
    endtime          timestamptz,
    info             jsonb NOT NULL DEFAULT '{}',   -- registration/2203/2402 details as sent
    created_msgid    text NOT NULL,
    closed_msgid     text,                          -- the 2202/2402/2601 that closed it
    -- A settlement of the visit in flight claims it (settle), so that its lines do not
    -- change under it; a claim older than the settlement timeout is abandoned.
    settling_msgid   text,
    settling_since   timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fixmedins_code, mdtrt_id),
    CHECK ((settling_msgid IS NULL) = (settling_since IS NULL))
);
-- One visit per creating message: a rerun of the message finds its visit.
CREATE UNIQUE INDEX gateway_visits_created_msgid ON gateway_visits (fixmedins_code, created_msgid);
-- The person's visits (the only valid injury case, supervision, support).
CREATE INDEX gateway_visits_person ON gateway_visits (psn_no);

-- Minted mdtrt_ids (2201/2401).
CREATE SEQUENCE gateway_mdtrt_seq;

CREATE TABLE gateway_visit_lines (
    fixmedins_code   text NOT NULL,
    mdtrt_id         text NOT NULL,
    feedetl_sn       text NOT NULL CHECK (length(feedetl_sn) BETWEEN 1 AND 30),
    chrg_bchno       text NOT NULL DEFAULT '',
    code             text NOT NULL,                 -- med_list_codg, the catalog code
    price_e4         bigint NOT NULL CHECK (price_e4 >= 0),
    count_e4         bigint NOT NULL CHECK (count_e4 <> 0),  -- negative: a refund line
    total            bigint NOT NULL,               -- fen; negative for a refund line
    init_feedetl_sn  text,                          -- a refund line: the line it cancels
    -- active: uploaded, counts for settlement until setl_id is set; cancelled (2205/2302/
    -- 2601); refunded: cancelled by a refund line; refund: the refund line itself.
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'cancelled', 'refunded', 'refund')),
    setl_id          text,
    result           jsonb NOT NULL,                -- the Step-1 split answered at upload
    details          jsonb NOT NULL DEFAULT '{}',   -- the line's other fields as sent
    created_msgid    text NOT NULL,
    cancelled_msgid  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fixmedins_code, mdtrt_id, feedetl_sn),
    FOREIGN KEY (fixmedins_code, mdtrt_id) REFERENCES gateway_visits,
    CHECK ((count_e4 < 0) = (init_feedetl_sn IS NOT NULL)),
    CHECK (setl_id IS NULL OR status = 'active')
);
-- What a message uploaded (a rerun's answer, 2601 by message).
CREATE INDEX gateway_visit_lines_msgid ON gateway_visit_lines (fixmedins_code, created_msgid);
-- A settlement's lines (release on reversal).
CREATE INDEX gateway_visit_lines_setl ON gateway_visit_lines (setl_id) WHERE setl_id IS NOT NULL;
