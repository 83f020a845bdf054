-- Nonces and challenges live for seconds to minutes and protect against replay only within
-- that time. Unlogged, they cost no WAL and, above all, no WAL flush at commit: the
-- signature check of every request would otherwise wait for a disk flush of its own.
-- After a database crash they are empty: challenges in flight must be asked for again,
-- and a request signed in the last window could be replayed once — which for settlements
-- the Idempotency-Key still answers with the original result. Settlement, ledger, audit
-- and every other table stay logged, with synchronous commit.
ALTER TABLE request_nonces SET UNLOGGED;
ALTER TABLE sign_in_challenges SET UNLOGGED;
ALTER TABLE card_auth_challenges SET UNLOGGED;
