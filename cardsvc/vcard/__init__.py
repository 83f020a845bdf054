"""A virtual social security card for vsmartcard's vpcd (docs/protocol.md, card profile).

- ``apdu``  command APDU parsing (pure)
- ``card``  the SSSE application: file system, PIN, INTERNAL AUTHENTICATE, class-80
            personalisation and lock (pure; PIN and cryptograms are ``SoftCard``'s)
- ``state`` the card's persistent state, a 0600 JSON file replaced atomically
- ``link``  vpcd's socket protocol and a card kept in a slot by a background thread

``python -m cardsvc.vcard --port 35963 --state FILE [--blank]`` runs one card.
"""
