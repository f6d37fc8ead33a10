"""Alembic environment: the store hands its connection in ``config.attributes``."""

from alembic import context

from expertloop.store.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via expertloop.store
    raise RuntimeError("run the store migrations through expertloop.store.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
