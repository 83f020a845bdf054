-- National gateway: lookups by identity number (mdtrt_cert_type 02) and pharmacy visits.
--
-- A lookup by identity number that finds nobody is counted per gateway client and
-- business day (Asia/Shanghai): past CARDSVC_GATEWAY_CERTNO_MISSES_PER_DAY misses the
-- client's lookups by identity number are refused for the rest of the day, so that the
-- answer "nobody has this number" cannot be used to try candidate numbers one after the
-- other. One row per client: the day it counts and that day's misses (a new day starts
-- again from zero), so the table never grows beyond the clients.
CREATE TABLE gateway_certno_misses (
    paasid        text PRIMARY KEY REFERENCES gateway_clients ON DELETE CASCADE,
    business_date date NOT NULL,
    misses        integer NOT NULL CHECK (misses >= 0)
);

-- A pharmacy's first 2204 opens its visit under the psn_no the pharmacy names, without a
-- certificate and without looking the person up (so that its answer says nothing about
-- whether that person exists, is insured or has a work-injury case): the person is
-- certified by the card at pre-settlement and settlement, which must name the same
-- psn_no. Such a visit may therefore name a psn_no of nobody.
ALTER TABLE gateway_visits DROP CONSTRAINT gateway_visits_psn_no_fkey;
