"""Alembic migrations of the store schema (run by ``expertloop.store``)."""
