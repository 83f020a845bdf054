"""hsm_stub: a small asyncio service standing in for a payment HSM, serving only its host
(mutual TLS, see ``credentials``).

It alone holds the issuer master keys, encrypted under a local master key (LMK); callers see
only key blobs under the LMK, key check values and results. The wire format and the link's
TLS credentials are ``hsmlink``'s, shared with cardsvc's client; the crypto is ``cardcrypto``'s.
"""
