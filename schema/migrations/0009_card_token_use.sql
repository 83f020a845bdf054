-- One PIN entry pays for one settlement.
--
-- A transaction card token carries the auth_id of the card authentication that issued it.
-- The settlement it pays for stores that id (16 bytes), in the settlement's own row and
-- statement: durable with the settlement (a logged table, same transaction), no extra round
-- trip, and a second settlement with the same token is refused by this unique index even
-- when both race. Settlements from before this migration have none.
ALTER TABLE settlements ADD COLUMN card_auth_id bytea
    CHECK (card_auth_id IS NULL OR octet_length(card_auth_id) = 16);
CREATE UNIQUE INDEX settlements_card_auth_id_key ON settlements (card_auth_id)
    WHERE card_auth_id IS NOT NULL;
