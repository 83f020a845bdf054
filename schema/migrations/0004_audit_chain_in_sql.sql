-- The audit chain head is advanced by one UPDATE that also links the new entry
-- (sha256(head || int8send(seq) || body digest)); it keeps the head it replaced, which the
-- same statement writes as the new entry's prev_hash.
ALTER TABLE audit_chains ADD COLUMN prev_head bytea;
