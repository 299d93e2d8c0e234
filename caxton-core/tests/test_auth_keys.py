"""API keys: hashed in SQLite, compared in constant time, expiry and revocation."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from caxton.auth import keys as keys_module
from caxton.auth.apikey import ApiKeyAuth
from caxton.auth.keys import ApiKeyStore, hash_key
from caxton.drivers import Credentials, Driver
from caxton.errors import AuthError, NotFound, ValidationError
from caxton.store import Store
from caxton.testing.conformance import AuthConformance


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "local.db")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def keys(store: Store, clock: Clock) -> ApiKeyStore:
    keys = ApiKeyStore(store, clock=clock)
    await keys.setup()
    return keys


async def test_a_key_is_stored_only_as_its_hash(keys: ApiKeyStore, tmp_path: Path) -> None:
    key, record = await keys.create("operator", name="ci")
    assert key.startswith(f"cxk_{record.id}_")
    rows = await keys.store.connection.execute_fetchall("SELECT * FROM api_keys")
    flat = [str(value) for row in rows for value in row]
    assert hash_key(key) in flat
    assert all(key not in value and key.split("_", 2)[2] not in value for value in flat)
    await keys.store.close()
    # Nothing of the secret reaches the file either (WAL included).
    secret = key.split("_", 2)[2].encode()
    assert not [path for path in sorted(tmp_path.glob("*")) if secret in path.read_bytes()]  # noqa: ASYNC240


async def test_valid_key_verifies_with_its_role(keys: ApiKeyStore) -> None:
    key, record = await keys.create("viewer")
    assert (await keys.verify(key)).role == "viewer"
    assert (await keys.verify(f"  {key} ")).id == record.id


async def test_wrong_secret_with_a_known_id_is_refused(keys: ApiKeyStore) -> None:
    key, record = await keys.create("admin")
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with pytest.raises(AuthError, match=f"invalid API key {record.id}") as info:
        await keys.verify(forged)
    assert forged not in str(info.value)


@pytest.mark.parametrize("presented", ["", "hello", "cxk_zz_x", "Bearer abc", "cxk_" + "0" * 16])
async def test_malformed_keys_are_refused(keys: ApiKeyStore, presented: str) -> None:
    with pytest.raises(AuthError, match="not a Caxton API key"):
        await keys.verify(presented)


async def test_comparison_is_constant_time(
    keys: ApiKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    key, _ = await keys.create("viewer")
    await keys.verify(key)
    with pytest.raises(AuthError):
        await keys.verify(key[:-1] + ("x" if key[-1] != "x" else "y"))
    with pytest.raises(AuthError):  # unknown id: compared against a dummy hash
        await keys.verify("cxk_" + "0" * 16 + "_" + "A" * 43)
    assert len(calls) == 3


async def test_expired_key_is_refused(keys: ApiKeyStore, clock: Clock) -> None:
    key, record = await keys.create("operator", expires_in=30 * 86400)
    assert record.expires_at == clock.now + 30 * 86400
    await keys.verify(key)
    clock.now += 30 * 86400
    with pytest.raises(AuthError, match="is expired"):
        await keys.verify(key)
    assert [k.status(clock.now) for k in await keys.list()] == ["expired"]


async def test_revoked_key_is_refused_and_revoke_is_idempotent(keys: ApiKeyStore) -> None:
    key, record = await keys.create("operator")
    other, _ = await keys.create("operator")
    revoked = await keys.revoke(record.id)
    assert revoked.revoked_at is not None
    with pytest.raises(AuthError, match="is revoked"):
        await keys.verify(key)
    await keys.verify(other)
    assert (await keys.revoke(f"cxk_{record.id}")).revoked_at == revoked.revoked_at


async def test_revocation_is_seen_by_another_connection(tmp_path: Path, keys: ApiKeyStore) -> None:
    key, record = await keys.create("admin")
    other = Store(tmp_path / "local.db")
    await other.open()
    try:
        elsewhere = ApiKeyStore(other)
        await elsewhere.setup()
        await elsewhere.revoke(record.id)
    finally:
        await other.close()
    with pytest.raises(AuthError, match="revoked"):
        await keys.verify(key)


async def test_revoke_unknown_or_malformed_id(keys: ApiKeyStore) -> None:
    with pytest.raises(NotFound, match="no API key with id 0123456789abcdef"):
        await keys.revoke("0123456789abcdef")
    with pytest.raises(ValidationError, match="not an API key id"):
        await keys.revoke("nope")


async def test_non_positive_expiry_is_refused(keys: ApiKeyStore) -> None:
    with pytest.raises(ValidationError, match="positive duration"):
        await keys.create("viewer", expires_in=0)


class TestApiKeyConformance(AuthConformance):
    driver_class = ApiKeyAuth
    entry_point_name = "api-key"

    def make_driver(self, data_dir: Path) -> Driver:
        self.key = self._create_key(data_dir)
        return super().make_driver(data_dir)

    @staticmethod
    def _create_key(data_dir: Path) -> str:
        import asyncio

        async def create() -> str:
            store = Store(data_dir / "local.db")
            await store.open()
            try:
                keys = ApiKeyStore(store)
                await keys.setup()
                key, _ = await keys.create("operator")
                return key
            finally:
                await store.close()

        return asyncio.run(create())

    def valid_credentials(self) -> Credentials:
        return Credentials(headers={"x-api-key": self.key})

    def invalid_credentials(self) -> Credentials:
        return Credentials(headers={"X-API-Key": self.key[:-2] + "zz"})


async def test_driver_reads_the_configured_header(tmp_path: Path) -> None:
    suite = TestApiKeyConformance()
    driver = ApiKeyAuth({"header": "X-Caxton-Key"}, suite.make_context(tmp_path))
    await driver.start()
    try:
        assert await driver.authenticate(Credentials(headers={"X-API-Key": "x"})) is None
        with pytest.raises(AuthError):
            await driver.authenticate(Credentials(headers={"X-Caxton-Key": "x"}))
    finally:
        await driver.close()
