-- A facility's clearing file lists the settlements and reversals its run cleared; it is
-- rendered on download from these rows, found by (clearing_date, fixmedins_code). Partial:
-- a settlement gets its entry when a run clears it, so settling pays nothing for it.
CREATE INDEX settlements_cleared ON settlements (clearing_date, fixmedins_code)
    WHERE clearing_date IS NOT NULL;
CREATE INDEX reversals_cleared ON reversals (clearing_date, fixmedins_code)
    WHERE clearing_date IS NOT NULL;
