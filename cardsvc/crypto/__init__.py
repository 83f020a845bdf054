"""Cryptography for cardsvc: the exact crypto profile shared with terminals and hsm_stub."""
