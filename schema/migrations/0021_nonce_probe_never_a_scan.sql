-- The settlement batch read asks, for each request, whether its nonce is already recorded.
-- Written inline, that probe was planned once per connection (a cached generic plan) with
-- request_nonces' size at that moment. The table is UNLOGGED and pruned: near-empty after a
-- crash, a fresh start or a quiet night, so the plan made then scanned the whole table for
-- every request as the table grew back (measured: 10,000-40,000 rows read per settlement,
-- PostgreSQL's CPU per settlement 3-8 times its usual, until the plan happened to be
-- replaced). A SQL function with its own settings is never inlined: its one query is planned
-- afresh for each execution of the batch read, and with sequential scans off it is always
-- the primary key's probe, whatever the table's size and statistics say.
CREATE FUNCTION nonce_recorded(p_terminal_id text, p_nonce text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET enable_seqscan = off
AS $$
    SELECT EXISTS (
        SELECT 1 FROM request_nonces WHERE terminal_id = p_terminal_id AND nonce = p_nonce
    )
$$;
