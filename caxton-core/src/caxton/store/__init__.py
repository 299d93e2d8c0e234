"""The node's embedded state: SQLite through aiosqlite, written behind the hot path.

``Store`` holds agents, content-addressed modules, per-agent key/value data, the
durable message outbox, conversations and dead letters. See docs/state.md.
"""

from __future__ import annotations

from caxton.store.migrations import CORE_MIGRATIONS, Migration, apply_migrations
from caxton.store.store import Store, StoredAgent, StoreError

__all__ = [
    "CORE_MIGRATIONS",
    "Migration",
    "Store",
    "StoreError",
    "StoredAgent",
    "apply_migrations",
]
