"""The terminal-side SDK: signed HTTP client (and, later, PC/SC card reader access)."""
