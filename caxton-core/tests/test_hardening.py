"""The API under hostile or careless clients: size, depth, speed, garbage, floods.

Every test talks to a real node over a real socket, several over raw TCP so that the
client can misbehave in ways an HTTP library will not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from caxton.api.ratelimit import TokenBucketLimiter
from caxton.errors import ConfigError
from caxton.node import Node
from caxton.testing import NodeFactory

#: Generous bound for "the server closes the connection"; the configured timeouts are
#: a fraction of it, so this only stops a broken server from hanging the test.
GIVE_UP = 10.0

#: Every route that reads a JSON body.
BODY_ROUTES = (
    "/api/v1/agents",
    "/api/v1/messages",
    "/api/v1/tasks",
    "/api/v1/queues/drain",
    "/api/v1/emergency/stop",
)
POST_ROUTES = (*BODY_ROUTES, "/api/v1/agents/550e8400-e29b-41d4-a716-446655440000/start")


@pytest.fixture
def make_node(caxton_node_factory: NodeFactory) -> Any:
    def make(**config: Any) -> Any:
        return caxton_node_factory.node(config=config)

    return make


def base_url(node: Node) -> str:
    assert node.api_address is not None
    host, port = node.api_address
    return f"http://{host}:{port}"


async def raw_exchange(node: Node, data: bytes, *, then_wait: bool = True) -> bytes:
    """Send ``data`` over a fresh connection; return everything until the server closes."""
    assert node.api_address is not None
    reader, writer = await asyncio.open_connection(*node.api_address)
    try:
        writer.write(data)
        await writer.drain()
        if not then_wait:
            return b""
        return await asyncio.wait_for(reader.read(), GIVE_UP)
    finally:
        writer.close()


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def body_of(raw: bytes) -> Any:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


async def healthy(node: Node) -> bool:
    async with (
        aiohttp.ClientSession() as session,
        session.get(base_url(node) + "/api/v1/health") as response,
    ):
        return response.status == 200


# -------------------------------------------------------------------------
# Body size and JSON depth
# -------------------------------------------------------------------------


async def test_oversized_body_with_content_length_is_413(make_node: Any) -> None:
    async with make_node(**{"networking.max_body_size": "4KB"}) as node:
        async with (
            aiohttp.ClientSession() as session,
            session.post(base_url(node) + "/api/v1/agents", data=b"x" * 5000) as response,
        ):
            assert response.status == 413
            error = await response.json()
        assert error["error"] == "Payload too large"
        assert "4096 bytes" in error["details"]
        assert await healthy(node)


async def test_oversized_chunked_body_is_413(make_node: Any) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    async with make_node(**{"networking.max_body_size": "4KB"}) as node:
        async with (
            aiohttp.ClientSession() as session,
            session.post(base_url(node) + "/api/v1/agents", data=chunks()) as response,
        ):
            assert response.status == 413
            assert (await response.json())["error"] == "Payload too large"
        assert await healthy(node)


@pytest.mark.parametrize("depth", [33, 1000, 200_000])
async def test_deep_json_is_400(make_node: Any, depth: int) -> None:
    async with make_node() as node, aiohttp.ClientSession() as session:
        for path in BODY_ROUTES:
            body = "[" * depth + "]" * depth
            async with session.post(base_url(node) + path, data=body) as response:
                assert response.status == 400, path
                error = await response.json()
                assert error["error"] == "Malformed JSON"
                assert "nested too deeply" in error["details"]


async def test_depth_32_is_parsed(make_node: Any) -> None:
    async with make_node() as node, aiohttp.ClientSession() as session:
        body = {"performative": "inform", "receiver": "x", "content": _nested(30)}
        async with session.post(base_url(node) + "/api/v1/messages", json=body) as response:
            assert response.status == 404  # parsed and checked: no agent x
            assert "Agent not found: x" in (await response.json())["details"]


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


async def test_garbage_bodies_never_make_5xx(make_node: Any) -> None:
    rng = random.Random(4)
    samples: list[bytes] = [
        b"\xff\xfe\x00",
        b'{"name": "\\ud800"}',
        b'{"name": 1' + b"1" * 5000 + b"}",
        b"1e999999",
        b'{"a":' * 50 + b"1" + b"}" * 50,
        b'"' + b"\\" * 999 + b'"',
        b"{}" * 100,
    ]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(40)]
    samples += [
        json.dumps(
            rng.choice([None, True, 3.5, "s", [], {"name": [1]}, {"wasm_module": {}}])
        ).encode()
        for _ in range(20)
    ]
    async with make_node() as node, aiohttp.ClientSession() as session:
        for path in POST_ROUTES:
            for body in samples:
                async with session.post(
                    base_url(node) + path,
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as response:
                    assert response.status < 500, (path, body, await response.text())
                    error = await response.json()
                    assert set(error) == {"error", "details"}


# -------------------------------------------------------------------------
# Slow and broken clients
# -------------------------------------------------------------------------


async def test_garbage_request_line_is_400_and_server_lives(make_node: Any) -> None:
    async with make_node() as node:
        raw = await raw_exchange(node, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
        assert status_of(raw) == 400
        raw = await raw_exchange(node, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
        assert status_of(raw) in (400, 414)
        assert await healthy(node)


async def test_slow_request_head_is_cut_off(make_node: Any) -> None:
    async with make_node(**{"networking.connection_timeout": "0.3s"}) as node:
        # A request head that never completes: the server closes the connection.
        assert await raw_exchange(node, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n") == b""
        assert await healthy(node)


async def test_header_deadline_spares_requests_in_progress(make_node: Any) -> None:
    async with (
        make_node(**{"networking.connection_timeout": "0.2s"}) as node,
        aiohttp.ClientSession() as session,
    ):
        url = base_url(node)
        async with session.post(
            url + "/api/v1/agents", json={"name": "sleeper", "wasm_module": "AGFzbQEAAAA="}
        ) as response:
            agent = await response.json()
        async with session.post(url + f"/api/v1/agents/{agent['id']}/suspend") as response:
            assert response.status == 200
        # Requests that outlive the header deadline (the reply never comes: 504) still
        # get their answers on their kept-alive connection.
        body = {"performative": "request", "receiver": "sleeper", "wait_ms": 500}
        for _ in range(2):
            async with session.post(url + "/api/v1/messages", json=body) as response:
                assert response.status == 504
        assert await healthy(node)


async def test_slow_body_is_408(make_node: Any) -> None:
    async with make_node(**{"networking.request_timeout": "0.3s"}) as node:
        head = (
            b"POST /api/v1/agents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"name":'
        )
        raw = await raw_exchange(node, head)
        assert status_of(raw) == 408
        assert body_of(raw)["error"] == "Request timeout"
        assert b"Connection: close" in raw
        assert await healthy(node)


async def test_idle_keepalive_connection_is_closed(make_node: Any) -> None:
    async with make_node(**{"networking.keepalive_timeout": "0.3s"}) as node:
        raw = await raw_exchange(node, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(raw) == 200
        assert raw.endswith(b'{"status":"healthy"}')  # then the idle connection closed


async def test_many_idle_connections_do_not_block_others(make_node: Any) -> None:
    async with make_node(**{"networking.connection_timeout": "5s"}) as node:
        assert node.api_address is not None
        idle = [await asyncio.open_connection(*node.api_address) for _ in range(50)]
        try:
            assert await healthy(node)
        finally:
            for _reader, writer in idle:
                writer.close()


async def test_connections_past_the_limit_are_closed(
    make_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_node(**{"networking.max_connections": 3}) as node:
        assert node.api_address is not None
        held = [await asyncio.open_connection(*node.api_address) for _ in range(3)]
        try:
            with caplog.at_level(logging.WARNING, logger="caxton.api"):
                extra = await raw_exchange(node, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert extra == b""  # closed without an answer
            assert "networking.max_connections" in caplog.text
        finally:
            for _reader, writer in held:
                writer.close()
                await writer.wait_closed()
        # Once they are gone, connections are served again.
        for _ in range(100):
            raw = await raw_exchange(
                node, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            if raw:
                break
            await asyncio.sleep(0.05)
        assert status_of(raw) == 200


# -------------------------------------------------------------------------
# Rate limiting
# -------------------------------------------------------------------------


async def test_rate_limit_429_with_headers(make_node: Any) -> None:
    config = {
        "security.rate_limit_enabled": True,
        "security.rate_limit_per_second": 0.5,
        "security.rate_limit_burst": 3,
    }
    async with make_node(**config) as node, aiohttp.ClientSession() as session:
        url = base_url(node) + "/api/v1/agents"
        remaining = []
        for _ in range(3):
            async with session.get(url) as response:
                assert response.status == 200
                assert response.headers["X-RateLimit-Limit"] == "3"
                remaining.append(int(response.headers["X-RateLimit-Remaining"]))
                assert int(response.headers["X-RateLimit-Reset"]) >= 1
        assert remaining == [2, 1, 0]
        async with session.get(url) as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) >= 1
            assert response.headers["X-RateLimit-Remaining"] == "0"
            error = await response.json()
        assert error["error"] == "Too many requests"
        assert "retry in" in error["details"]
        # Orchestrator probes are not limited.
        for path in ("/health", "/ready"):
            async with session.get(base_url(node) + path) as response:
                assert response.status == 200


async def test_no_rate_limit_headers_when_disabled(make_node: Any) -> None:
    async with (
        make_node() as node,
        aiohttp.ClientSession() as session,
        session.get(base_url(node) + "/api/v1/agents") as response,
    ):
        assert "X-RateLimit-Limit" not in response.headers


def test_token_bucket_refills_and_forgets_idle_clients() -> None:
    now = [0.0]
    limiter = TokenBucketLimiter(2.0, 2, clock=lambda: now[0])
    assert [limiter.take("a").allowed for _ in range(3)] == [True, True, False]
    refused = limiter.take("a")
    assert refused.retry_after == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("a").allowed
    assert limiter.take("b").allowed
    now[0] += 10
    limiter.take("c")
    assert len(limiter) == 1  # a and b refilled completely and were forgotten


def test_token_bucket_is_bounded() -> None:
    limiter = TokenBucketLimiter(1.0, 5, clock=lambda: 0.0, max_clients=100)
    for n in range(1000):
        limiter.take(f"client-{n}")
    assert len(limiter) == 100


# -------------------------------------------------------------------------
# CORS
# -------------------------------------------------------------------------

CORS = {
    "security.cors_enabled": True,
    "security.cors_origins": ["https://ui.example"],
    "security.cors_methods": ["GET", "POST"],
}


async def test_cors_preflight_and_headers(make_node: Any) -> None:
    async with make_node(**CORS) as node, aiohttp.ClientSession() as session:
        url = base_url(node) + "/api/v1/agents"
        preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
        async with session.options(url, headers=preflight) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "https://ui.example"
            assert response.headers["Access-Control-Allow-Methods"] == "GET, POST"
            assert "X-API-Key" in response.headers["Access-Control-Allow-Headers"]
        async with session.options(
            url, headers={**preflight, "Access-Control-Request-Method": "DELETE"}
        ) as response:
            assert response.status == 403
        async with session.options(
            url, headers={**preflight, "Origin": "https://evil.example"}
        ) as response:
            assert response.status == 403
            assert "evil.example" in (await response.json())["details"]
        async with session.get(url, headers={"Origin": "https://ui.example"}) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "https://ui.example"
            assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]
        async with session.get(url, headers={"Origin": "https://evil.example"}) as response:
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_cors_off_by_default(make_node: Any) -> None:
    async with make_node() as node, aiohttp.ClientSession() as session:
        url = base_url(node) + "/api/v1/agents"
        async with session.get(url, headers={"Origin": "https://ui.example"}) as response:
            assert "Access-Control-Allow-Origin" not in response.headers
        async with session.options(
            url, headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "GET"}
        ) as response:
            assert response.status == 405


# -------------------------------------------------------------------------
# Request ids and the access log
# -------------------------------------------------------------------------


async def test_request_id(make_node: Any) -> None:
    async with make_node() as node, aiohttp.ClientSession() as session:
        url = base_url(node) + "/api/v1/health"
        async with session.get(url, headers={"X-Request-ID": "trace-42"}) as response:
            assert response.headers["X-Request-ID"] == "trace-42"
        async with session.get(url, headers={"X-Request-ID": "bad id\t<script>"}) as response:
            generated = response.headers["X-Request-ID"]
            assert len(generated) == 32
            int(generated, 16)
        async with session.get(base_url(node) + "/nowhere") as response:
            assert response.status == 404
            assert response.headers["X-Request-ID"]


async def test_access_log_is_structured_and_keeps_secrets_out(
    make_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secrets: Mapping[str, str] = {
        "Authorization": "Bearer s3cret-token-value",
        "X-API-Key": "s3cret-api-key-value",
    }
    with caplog.at_level(logging.DEBUG):
        async with (
            make_node() as node,
            aiohttp.ClientSession() as session,
            session.post(
                base_url(node) + "/api/v1/agents?api_key=s3cret-query",
                json={"name": ""},
                headers={**secrets, "X-Request-ID": "req-1"},
            ) as response,
        ):
            assert response.status == 400
    entries = [r for r in caplog.records if r.name == "caxton.api.access"]
    [entry] = [
        r.__dict__["access"] for r in entries if r.__dict__["access"]["request_id"] == "req-1"
    ]
    assert entry["request_id"] == "req-1"
    assert entry["method"] == "POST"
    assert entry["path"] == "/api/v1/agents"
    assert entry["status"] == 400
    assert entry["duration_ms"] >= 0
    assert entry["remote"] == "127.0.0.1"
    everything = caplog.text
    for secret in ("s3cret-token-value", "s3cret-api-key-value", "s3cret-query"):
        assert secret not in everything


# -------------------------------------------------------------------------
# TLS
# -------------------------------------------------------------------------


async def test_tls(make_node: Any, tmp_path: Path) -> None:
    from caxton.security.pki import init_ca, issue_node_cert

    ca = init_ca(tmp_path / "ca")
    issued = issue_node_cert(tmp_path / "ca", "api-node", tmp_path / "node", hosts=["127.0.0.1"])
    config = {
        "networking.tls_enabled": True,
        "networking.tls_cert_path": str(issued.cert_path),
        "networking.tls_key_path": str(issued.key_path),
    }
    async with make_node(**config) as node:
        assert node.api_address is not None
        host, port = node.api_address
        context = ssl.create_default_context(cafile=str(ca.cert_path))
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"https://{host}:{port}/api/v1/health", ssl=context) as response,
        ):
            assert await response.json() == {"status": "healthy"}
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                await session.get(f"http://{host}:{port}/api/v1/health")


async def test_tls_without_a_certificate_is_a_config_error(make_node: Any) -> None:
    with pytest.raises(ConfigError, match=r"networking\.tls_cert_path"):
        async with make_node(**{"networking.tls_enabled": True}):
            pass


async def test_port_in_use_is_a_config_error(make_node: Any) -> None:
    async with make_node() as node:
        assert node.api_address is not None
        host, port = node.api_address
        with pytest.raises(ConfigError, match="cannot serve the API on"):
            async with make_node(**{"networking.bind_address": f"{host}:{port}"}):
                pass
        assert await healthy(node)
