"""The ``api-key`` auth driver: keys from the ``security.api_key_header`` header.

Core's default chain member (entry point ``api-key`` in group ``caxton.auth``). The keys
live in the node's state store (:mod:`caxton.auth.keys`); without a node (a conformance
suite) the driver opens ``DATA_DIR/local.db`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from caxton.auth.keys import ApiKeyStore
from caxton.drivers.auth import AuthDriver, Credentials, Identity
from caxton.drivers.base import DriverContext
from caxton.store import Store

__all__ = ["DEFAULT_HEADER", "ApiKeyAuth"]

DEFAULT_HEADER = "X-API-Key"


class ApiKeyAuth(AuthDriver):
    """Recognises the API-key header; an identity ``key:<id>`` with the key's role.

    ``config["header"]`` overrides the header name, which is otherwise the node's
    ``security.api_key_header``.
    """

    def __init__(self, config: Mapping[str, Any], context: DriverContext) -> None:
        super().__init__(config, context)
        node = context.services.get("node")
        configured = node.config["security"]["api_key_header"] if node is not None else None
        self.header: str = str(self.config.get("header") or configured or DEFAULT_HEADER)
        self._own_store: Store | None = None
        self._keys: ApiKeyStore | None = None

    @property
    def keys(self) -> ApiKeyStore:
        if self._keys is None:
            raise RuntimeError("ApiKeyAuth.start() was not called")
        return self._keys

    async def start(self) -> None:
        store = self.context.services.get("store")
        if store is None:
            store = self._own_store = Store(self.context.data_dir / "local.db")
            await store.open()
        self._keys = ApiKeyStore(store)
        await self._keys.setup()

    async def close(self) -> None:
        if self._own_store is not None:
            await self._own_store.close()
            self._own_store = None
        self._keys = None

    async def authenticate(self, credentials: Credentials) -> Identity | None:
        presented = _header(credentials.headers, self.header)
        if presented is None:
            return None
        record = await self.keys.verify(presented)
        return Identity(
            name=f"key:{record.id}",
            roles=frozenset({record.role}),
            driver="api-key",
            attributes={"key_id": record.id, "key_name": record.name},
        )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header ``name`` whatever its case (aiohttp's headers are case-insensitive already)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value
