-- Security follow-up of issue #11.
--
-- Sign-in challenges: a terminal keeps its newest few live challenges; the sign-in start
-- drops the older ones by this index (the table is no longer bounded by a per-terminal
-- allowance of challenges, which anybody naming the terminal id could spend).
CREATE INDEX sign_in_challenges_terminal ON sign_in_challenges (terminal_id, expires_at);
