"""Local development and test environment: a PostgreSQL cluster, the demo runner."""
