"""Alembic migrations of the store's schema, run by `cyan.store` when a store opens (no alembic.ini)."""
