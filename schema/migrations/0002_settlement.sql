-- Settlement: year-to-date state, settlements and their lines, reversals, supervision flags,
-- reviews, reconciliation and clearing. Every settlement row is keyed for its person
-- (psn_no) or facility (fixmedins_code), the future distribution columns.

-- Per person and calendar year (Asia/Shanghai): totals of non-reversed settlements.
CREATE TABLE year_states (
    psn_no              text NOT NULL REFERENCES persons,
    year                smallint NOT NULL,
    hifp_310            bigint NOT NULL DEFAULT 0 CHECK (hifp_310 >= 0),
    seg_310             bigint NOT NULL DEFAULT 0 CHECK (seg_310 >= 0),
    inpatient_310       integer NOT NULL DEFAULT 0 CHECK (inpatient_310 >= 0),
    hifp_390            bigint NOT NULL DEFAULT 0 CHECK (hifp_390 >= 0),
    outpatient_fund_390 bigint NOT NULL DEFAULT 0 CHECK (outpatient_fund_390 >= 0),
    prenatal_510        bigint NOT NULL DEFAULT 0 CHECK (prenatal_510 >= 0),
    deliveries_510      integer NOT NULL DEFAULT 0 CHECK (deliveries_510 >= 0),
    PRIMARY KEY (psn_no, year)
);

-- Ledger transactions of a settlement or reversal carry its id as their ref.
CREATE INDEX ledger_txns_ref ON ledger_txns (ref);

CREATE TABLE settlements (
    setl_id            text PRIMARY KEY,
    psn_no             text NOT NULL REFERENCES persons,
    card_no            char(9) NOT NULL,
    fixmedins_code     text NOT NULL REFERENCES facilities,
    fixmedins_type     text NOT NULL,
    terminal_id        text NOT NULL,
    idempotency_key    text NOT NULL,
    request_hash       bytea NOT NULL,
    insutype           text NOT NULL,
    med_type           text NOT NULL,
    mdtrt_id           text NOT NULL,
    injury_case_id     text,
    delivery_type      text,
    acct_used_flag     boolean NOT NULL,
    policy_version     text NOT NULL,
    setl_time          timestamptz NOT NULL,
    setl_date          date NOT NULL,               -- business date, Asia/Shanghai
    medfee_sumamt      bigint NOT NULL,
    fulamt_ownpay_amt  bigint NOT NULL,
    overlmt_selfpay    bigint NOT NULL,
    preselfpay_amt     bigint NOT NULL,
    inscp_scp_amt      bigint NOT NULL,
    act_pay_dedc       bigint NOT NULL,
    hifp_pay           bigint NOT NULL,
    pool_prop_selfpay  bigint NOT NULL,
    acct_pay           bigint NOT NULL,
    fund_pay_sumamt    bigint NOT NULL,
    psn_part_amt       bigint NOT NULL,
    psn_cash_pay       bigint NOT NULL,
    balc               bigint NOT NULL,
    setldetail         jsonb NOT NULL,              -- [{fund_pay_type, fund_payamt}]
    year_delta         jsonb NOT NULL,              -- what the year state gained; a reversal gives it back
    review_status      text NOT NULL DEFAULT 'none'
                       CHECK (review_status IN ('none', 'pending', 'approved', 'rejected')),
    status             text NOT NULL DEFAULT 'settled' CHECK (status IN ('settled', 'reversed')),
    clearing_date      date,                        -- set by the clearing run that paid it
    CHECK (medfee_sumamt = fulamt_ownpay_amt + overlmt_selfpay + preselfpay_amt + inscp_scp_amt),
    CHECK (psn_part_amt = medfee_sumamt - fund_pay_sumamt),
    CHECK (psn_cash_pay = psn_part_amt - acct_pay)
);
-- A retried request finds its settlement by the facility's idempotency key.
CREATE UNIQUE INDEX settlements_idempotency ON settlements (fixmedins_code, idempotency_key);
CREATE INDEX settlements_person ON settlements (psn_no, setl_time);
CREATE INDEX settlements_card ON settlements (card_no, setl_time);
CREATE INDEX settlements_facility_day ON settlements (fixmedins_code, setl_date, insutype);
CREATE INDEX settlements_uncleared ON settlements (setl_date) WHERE clearing_date IS NULL;
CREATE INDEX settlements_review ON settlements (review_status) WHERE review_status = 'pending';

CREATE TABLE settlement_lines (
    setl_id           text NOT NULL REFERENCES settlements,
    line_no           smallint NOT NULL,
    code              text NOT NULL,
    chrgitm_lv        char(1) NOT NULL,
    unit_price        bigint NOT NULL,
    quantity          integer NOT NULL,
    total             bigint NOT NULL,
    overlmt_selfpay   bigint NOT NULL,
    fulamt_ownpay_amt bigint NOT NULL,
    preselfpay_amt    bigint NOT NULL,
    inscp_scp_amt     bigint NOT NULL,
    PRIMARY KEY (setl_id, line_no)
);

CREATE TABLE reversals (
    reversal_id    text PRIMARY KEY,
    setl_id        text NOT NULL UNIQUE REFERENCES settlements,   -- one reversal per settlement
    psn_no         text NOT NULL,
    fixmedins_code text NOT NULL,
    actor          text NOT NULL,
    reason         text NOT NULL,
    revs_time      timestamptz NOT NULL,
    revs_date      date NOT NULL,
    acct_refund    bigint NOT NULL,
    fund_refund    bigint NOT NULL,
    balc           bigint NOT NULL,                                -- account balance after it
    clearing_date  date                                            -- set when netted in clearing
);
CREATE INDEX reversals_uncleared ON reversals (revs_date) WHERE clearing_date IS NULL;

CREATE TABLE supervision_flags (
    flag_id        bigserial PRIMARY KEY,
    rule           text NOT NULL,
    setl_id        text NOT NULL REFERENCES settlements,
    psn_no         text NOT NULL,
    fixmedins_code text NOT NULL,
    details        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX supervision_flags_created ON supervision_flags (created_at);

CREATE TABLE review_decisions (
    setl_id    text PRIMARY KEY REFERENCES settlements,
    decision   text NOT NULL CHECK (decision IN ('approved', 'rejected')),
    note       text NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now()
);

-- One clearing run per business date; its figures and files are kept so a rerun returns
-- exactly what the first run produced.
CREATE TABLE clearing_runs (
    clearing_date date PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now(),
    summary       jsonb NOT NULL
);
CREATE TABLE clearing_items (
    clearing_date  date NOT NULL REFERENCES clearing_runs,
    fixmedins_code text NOT NULL,
    fund           text NOT NULL,                 -- fund_pay_type, or 'acct' for the personal account
    settled_amt    bigint NOT NULL,
    reversed_amt   bigint NOT NULL,
    net_amt        bigint NOT NULL,
    settlements    integer NOT NULL,
    reversals      integer NOT NULL,
    PRIMARY KEY (clearing_date, fixmedins_code, fund)
);
CREATE TABLE clearing_files (
    clearing_date  date NOT NULL REFERENCES clearing_runs,
    fixmedins_code text NOT NULL,
    content        text NOT NULL,
    PRIMARY KEY (clearing_date, fixmedins_code)
);
