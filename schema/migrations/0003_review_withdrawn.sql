-- A settlement reversed by its facility while waiting for review is "withdrawn": it needs
-- no decision, leaves the review queue, and keeps the record that it had been held.
ALTER TABLE settlements DROP CONSTRAINT settlements_review_status_check;
ALTER TABLE settlements ADD CONSTRAINT settlements_review_status_check
    CHECK (review_status IN ('none', 'pending', 'approved', 'rejected', 'withdrawn'));
