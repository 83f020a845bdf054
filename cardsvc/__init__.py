"""cardsvc: the social security "one card" service."""
