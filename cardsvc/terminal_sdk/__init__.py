"""The terminal-side SDK (docs/readers.md).

- ``client``       ``TerminalClient``: sign-in and signed HTTP requests
- ``reader``       ``CardReader``: PC/SC card access over pyscard, status words as exceptions
- ``cardprofile``  the card profile's APDUs and status words (shared with ``cardsvc.vcard``)
- ``personalise``  the class-80 personalisation command list (pure)
- ``softcard``     a card's PIN and INTERNAL AUTHENTICATE rules in memory
- ``outbox``       store-and-forward of settlements and reversals (SQLite)
- ``flows``        issue-and-personalise, card-present visit, kiosk look-up
- ``__main__``     ``python -m cardsvc.terminal_sdk``: the flows on the command line
"""
