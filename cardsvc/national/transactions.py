"""Imports every transaction module, so that each registers its handlers (``registry``)."""

from __future__ import annotations
from cardsvc.national import tx_recon  # noqa: F401
