"""Imports every transaction module, so that each registers its handlers (``registry``).
One line per module."""

from __future__ import annotations

import cardsvc.national.tx_person as _tx_person  # noqa: F401
import cardsvc.national.tx_recon as _tx_recon  # noqa: F401
import cardsvc.national.tx_settle as _tx_settle  # noqa: F401
import cardsvc.national.tx_signin as _tx_signin  # noqa: F401
import cardsvc.national.tx_visits as _tx_visits  # noqa: F401
