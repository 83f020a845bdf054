-- Fewer random index writes per settlement.
--
-- settlements_card served one query only, the supervision check "this card settled at
-- another facility in the last hour", which also names the person: settlements_person
-- (psn_no, setl_time) finds the same rows. Every settlement paid for an insert at a
-- random page of it.
DROP INDEX IF EXISTS settlements_card;
