"""Alembic's entry for the prediction store's migrations (lib.serving.store_schema runs them on
the connection it passes in `config.attributes`; there is no alembic.ini)."""

from alembic import context

from lib.serving.store_schema import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
