"""The ``auth`` namespace of the node's state store: API keys and agent allow-lists."""

from __future__ import annotations

from caxton.store import Migration, Store

__all__ = ["MIGRATIONS", "NAMESPACE", "setup_schema"]

NAMESPACE = "auth"

MIGRATIONS = (
    Migration(
        1,
        "API keys: hashed, with role, expiry and revocation",
        """
        CREATE TABLE api_keys (
            id          TEXT PRIMARY KEY,
            key_hash    TEXT NOT NULL,
            role        TEXT NOT NULL,
            name        TEXT NOT NULL DEFAULT '',
            created_at  REAL NOT NULL,
            expires_at  REAL,
            revoked_at  REAL
        )
        """,
    ),
    Migration(
        2,
        "Agent allow-lists given at deploy",
        """
        CREATE TABLE agent_policies (
            agent       TEXT PRIMARY KEY,
            senders     TEXT NOT NULL
        )
        """,
    ),
)


async def setup_schema(store: Store) -> None:
    """Add the ``auth`` tables to ``store`` (open), migrating them when needed."""
    store.register_migrations(NAMESPACE, MIGRATIONS)
    await store.migrate()
