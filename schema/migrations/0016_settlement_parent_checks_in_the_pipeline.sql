-- Group commit (settlement pipeline): a settlement no longer locks its person's and its
-- facility's rows.
--
-- A foreign key check takes FOR KEY SHARE on the referenced row: every settlement locked
-- its person's row (a WAL record, and a page of the large persons table dirtied, written
-- in full after every checkpoint) and its facility's row (one row shared by every
-- concurrent settlement of the facility: a MultiXact per pair of concurrent batches).
-- The pipeline reads the person and the facility in the statement that plans the
-- settlement and refuses one that is missing; neither is ever deleted (no route or command
-- deletes a person or a facility), and the ledger proof checks every settlement against
-- its books. The other foreign keys of settlements and their children stay.
ALTER TABLE settlements DROP CONSTRAINT IF EXISTS settlements_psn_no_fkey;
ALTER TABLE settlements DROP CONSTRAINT IF EXISTS settlements_fixmedins_code_fkey;
