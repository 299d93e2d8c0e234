"""API keys kept in the node's SQLite store: hashed, with role, expiry and revocation.

A key reads ``cxk_<id>_<secret>``: the id (16 hex digits) names the row and is shown by
``caxton security api-key list``; the secret (32 random bytes, base64url) is shown once
when the key is created and never stored. The store keeps the SHA-256 of the whole key
(a random 256-bit secret needs no slow hash) and compares it in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from caxton.auth.schema import setup_schema
from caxton.errors import AuthError, NotFound, ValidationError
from caxton.store import Store

__all__ = ["KEY_PREFIX", "ApiKey", "ApiKeyStore", "hash_key", "parse_key"]

KEY_PREFIX = "cxk_"
_KEY = re.compile(r"cxk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_KEY_ID = re.compile(r"(?:cxk_)?([0-9a-f]{16})")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key(presented: str) -> str:
    """The id of a well-formed key; :class:`AuthError` for anything else."""
    match = _KEY.fullmatch(presented.strip())
    if match is None:
        raise AuthError("invalid API key: not a Caxton API key (cxk_<id>_<secret>)")
    return match.group(1)


@dataclass(frozen=True)
class ApiKey:
    """One stored key (never its secret)."""

    id: str
    role: str
    name: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "name": self.name,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "status": self.status(time.time() if now is None else now),
        }


_COLUMNS = "id, role, name, created_at, expires_at, revoked_at"


def _row(row: Any) -> ApiKey:
    return ApiKey(
        id=str(row[0]),
        role=str(row[1]),
        name=str(row[2]),
        created_at=float(row[3]),
        expires_at=None if row[4] is None else float(row[4]),
        revoked_at=None if row[5] is None else float(row[5]),
    )


class ApiKeyStore:
    """Create, list, revoke and verify API keys in ``store`` (open, or opened by caller).

    Call :meth:`setup` once (it adds the ``auth`` tables). Writes go through the store's
    write-behind queue and are flushed before the call returns, so a revocation is
    visible to every reader of the file (a running node, the CLI) when it returns.
    """

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    async def setup(self) -> None:
        await setup_schema(self.store)

    async def create(
        self, role: str, *, expires_in: float | None = None, name: str = ""
    ) -> tuple[str, ApiKey]:
        """A new key: ``(the key itself, shown once; its stored record)``."""
        if expires_in is not None and expires_in <= 0:
            raise ValidationError(f"--expires must be a positive duration, got {expires_in:g}s")
        key_id = secrets.token_hex(8)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        now = self.clock()
        record = ApiKey(
            key_id, role, name, now, None if expires_in is None else now + expires_in, None
        )
        self.store.enqueue(
            "INSERT INTO api_keys (id, key_hash, role, name, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (key_id, hash_key(key), role, name, now, record.expires_at),
        )
        await self.store.flush()
        return key, record

    async def list(self) -> list[ApiKey]:
        rows = await self.store.connection.execute_fetchall(
            f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id"
        )
        return [_row(row) for row in rows]

    async def get(self, key_id: str) -> ApiKey:
        match = _KEY_ID.fullmatch(key_id.strip())
        if match is None:
            raise ValidationError(f"{key_id!r} is not an API key id (16 hex digits)")
        rows = list(
            await self.store.connection.execute_fetchall(
                f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (match.group(1),)
            )
        )
        if not rows:
            raise NotFound(
                f"no API key with id {match.group(1)}; 'caxton security api-key list' shows them"
            )
        return _row(rows[0])

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke the key (idempotent); :class:`NotFound` for an unknown id."""
        record = await self.get(key_id)
        if record.revoked_at is not None:
            return record
        now = self.clock()
        self.store.enqueue(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (now, record.id),
        )
        await self.store.flush()
        return ApiKey(
            record.id, record.role, record.name, record.created_at, record.expires_at, now
        )

    async def verify(self, presented: str) -> ApiKey:
        """The record of a valid key; :class:`AuthError` saying why not otherwise.

        The message never contains the presented key.
        """
        key_id = parse_key(presented)
        rows = list(
            await self.store.connection.execute_fetchall(
                f"SELECT key_hash, {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            )
        )
        # Compare against a dummy hash when the id is unknown: same work either way.
        stored = str(rows[0][0]) if rows else hash_key(KEY_PREFIX)
        matches = hmac.compare_digest(stored.encode(), hash_key(presented.strip()).encode())
        if not rows or not matches:
            raise AuthError(f"invalid API key {key_id}: unknown key or wrong secret")
        record = _row(rows[0][1:])
        status = record.status(self.clock())
        if status != "active":
            raise AuthError(f"API key {key_id} is {status}; ask an admin for a new key")
        return record
