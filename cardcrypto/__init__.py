"""The card scheme's crypto profile, spoken alike by the service (``cardsvc``), the terminal
SDK, the virtual card and the HSM (``hsm_stub``): pure functions, no IO, importing none of
them. See ``profile``."""
