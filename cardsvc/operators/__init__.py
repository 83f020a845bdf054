"""Operators: the people who administer cardsvc, their roles, console sessions and API
tokens (see docs/security.md, "Operators")."""
