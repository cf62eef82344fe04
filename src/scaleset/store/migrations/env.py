"""Alembic environment: run with the connection the server hands over (see store/db.py)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from scaleset.store.tables import Base

target_metadata = Base.metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        # `alembic` run by hand (to write a new migration): connect to the configured URL.
        engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "sqlite://")
        with engine.begin() as own_connection:
            context.configure(
                connection=own_connection, target_metadata=target_metadata, render_as_batch=True
            )
            with context.begin_transaction():
                context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
