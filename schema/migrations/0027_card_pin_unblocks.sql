-- A PIN unblock at a counter spends the card authentication it was asked with: one
-- issuer-MACed RESET RETRY COUNTER per card authentication (the card's own single-use
-- challenge refuses a replayed command; this refuses a second command for the same proof).
CREATE TABLE card_pin_unblocks (
    auth_id     text PRIMARY KEY,
    card_no     char(9) NOT NULL REFERENCES cards,
    terminal_id text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX card_pin_unblocks_card ON card_pin_unblocks (card_no, created_at);
