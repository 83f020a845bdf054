-- Identity numbers that cannot be rebuilt, and the data key the database belongs to.
--
-- 1. A stored birth date beside a mask that hid exactly the birth date gave the whole
--    number back. Only the birth year is kept, and the mask now shows the first two and
--    the last two characters (cardsvc/persons/certno.py, mask). The new mask is a
--    substring of the old one (region 6 + 8 stars + last 4), so it is recomputed here
--    without the data key.
ALTER TABLE persons ADD COLUMN birth_year smallint;
UPDATE persons
SET birth_year = extract(year FROM brdy)::smallint,
    certno_masked = left(certno_masked, 2) || repeat('*', 14) || right(certno_masked, 2);
ALTER TABLE persons ALTER COLUMN birth_year SET NOT NULL;
ALTER TABLE persons DROP COLUMN brdy;

-- 2. The key check value of the data key the stored ciphertexts and lookup hashes are
--    under (cardsvc/privacy.py, key_check_value: reveals nothing of the key). Written by
--    the first start that finds it missing; a start with another key is refused.
--    While `python -m cardsvc rotate-data-key` runs, `rotating_to` holds the new key's
--    check value and `rotated_through` the last psn_no already under the new key (persons
--    are re-encrypted in psn_no order, one committed batch at a time), so a rotation cut
--    off anywhere is finished by running it again; the service refuses to start meanwhile.
CREATE TABLE data_key (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    check_value      text NOT NULL,
    rotating_to      text,
    rotated_through  text,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (rotated_through IS NULL OR rotating_to IS NOT NULL)
);
