-- Group commit (settlement pipeline): one index entry less per ledger entry.
--
-- Nothing looks ledger entries up by account: the ledger proof reads them all, reversals
-- find a settlement's entries through its transaction (ledger_txns_ref). The index cost
-- every settlement, reversal, credit and clearing run an entry per posting.
DROP INDEX IF EXISTS ledger_entries_account;
