"""The auth chain in front of the REST API of a real node: 401, 403, roles, audit."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from caxton import hookimpl
from caxton.api import PERMISSIONS, PUBLIC, requires
from caxton.api.permissions import UNDECLARED, permission_of
from caxton.auth.audit import AuditLog
from caxton.auth.keys import ApiKeyStore
from caxton.auth.rbac import DEFAULT_ROLES
from caxton.drivers import AuthDriver, Credentials, Identity
from caxton.errors import ConfigError
from caxton.node import Node
from caxton.store import Store
from caxton.testing import NodeFactory

EMPTY_MODULE = "AGFzbQEAAAA="
AUTH = {"security.auth_enabled": True}


class Everyone(AuthDriver):
    """Accepts any request as an admin: shows who decided in chain-order tests."""

    async def authenticate(self, credentials: Credentials) -> Identity | None:
        return Identity("everyone", frozenset({"admin"}))


async def call(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    key: str | None = None,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any, Mapping[str, str]]:
    sent = dict(headers or {})
    if key is not None:
        sent["X-API-Key"] = key
    async with http.request(method, path, json=body, headers=sent) as response:
        raw = await response.read()
        if response.content_type != "application/json":  # a file (the support bundle)
            return response.status, raw or None, response.headers
        return response.status, json.loads(raw) if raw else None, response.headers


async def new_key(node: Node, role: str, **options: Any) -> str:
    keys = ApiKeyStore(node.store)
    await keys.setup()
    key, _ = await keys.create(role, **options)
    return key


@pytest.fixture
async def node(caxton_node_factory: NodeFactory) -> AsyncIterator[Node]:
    async with caxton_node_factory.node(config=AUTH) as node:
        yield node


@pytest.fixture
async def keys(node: Node) -> dict[str, str]:
    return {role: await new_key(node, role) for role in DEFAULT_ROLES}


def audit_entries(node: Node) -> list[dict[str, Any]]:
    guard = node.context.services["auth"]
    assert guard.audit is not None
    return list(reversed(guard.audit.query(limit=1000)))


# -------------------------------------------------------------------------
# Chain and defaults
# -------------------------------------------------------------------------


async def test_no_credentials_is_401_and_public_routes_stay_open(
    http: aiohttp.ClientSession,
) -> None:
    status, body, headers = await call(http, "GET", "/api/v1/agents")
    assert status == 401
    assert body["error"] == "Unauthorized"
    assert "X-API-Key" in body["details"]
    assert "X-API-Key" in headers["WWW-Authenticate"]
    for path in ("/health", "/ready", "/api/v1/health", "/api/v1/openapi.json"):
        assert (await call(http, "GET", path))[0] == 200, path


async def test_invalid_key_is_401(http: aiohttp.ClientSession, keys: dict[str, str]) -> None:
    forged = keys["admin"][:-3] + ("abc" if not keys["admin"].endswith("abc") else "xyz")
    status, body, _ = await call(http, "GET", "/api/v1/agents", key=forged)
    assert status == 401
    assert "invalid API key" in body["details"]
    assert forged not in body["details"]
    assert (await call(http, "GET", "/api/v1/agents", key=keys["admin"]))[0] == 200


async def test_invalid_credential_is_not_passed_to_the_next_driver(
    caxton_node_factory: NodeFactory,
) -> None:
    caxton_node_factory.register_driver("auth", "everyone", Everyone)
    config = {**AUTH, "plugins.auth": ["api-key", "everyone"]}
    async with caxton_node_factory.node(config=config) as node:
        assert node.api_address is not None
        assert [type(d).__name__ for d in node.auth_chain] == ["ApiKeyAuth", "Everyone"]
        host, port = node.api_address
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            # Unrecognised by api-key (no header): the next driver decides.
            assert (await call(http, "GET", "/api/v1/agents"))[0] == 200
            # Recognised by api-key but invalid: refused, never offered to "everyone".
            bad = "cxk_0123456789abcdef_" + "A" * 43
            assert (await call(http, "GET", "/api/v1/agents", key=bad))[0] == 401


async def test_first_driver_in_configured_order_decides(
    caxton_node_factory: NodeFactory,
) -> None:
    caxton_node_factory.register_driver("auth", "everyone", Everyone)
    config = {**AUTH, "plugins.auth": ["everyone", "api-key"]}
    async with caxton_node_factory.node(config=config) as node:
        assert node.api_address is not None
        host, port = node.api_address
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            bad = "cxk_0123456789abcdef_" + "A" * 43
            status, _, _ = await call(http, "GET", "/api/v1/agents", key=bad)
            assert status == 200  # "everyone" comes first and accepts
        entries = audit_entries(node)
        assert entries == []  # reads are not audited, and nothing failed


async def test_known_identity_without_permission_is_403(
    http: aiohttp.ClientSession, keys: dict[str, str]
) -> None:
    body = {"name": "a", "wasm_module": EMPTY_MODULE}
    status, answer, _ = await call(http, "POST", "/api/v1/agents", keys["viewer"], body)
    assert status == 403
    assert "lacks the 'deploy' permission" in answer["details"]
    assert (await call(http, "POST", "/api/v1/agents", keys["developer"], body))[0] == 201


async def test_unknown_role_grants_nothing(node: Node, http: aiohttp.ClientSession) -> None:
    key = await new_key(node, "intern")
    assert (await call(http, "GET", "/api/v1/agents", key))[0] == 403


async def test_roles_come_from_config(caxton_node_factory: NodeFactory) -> None:
    config = {**AUTH, "security.roles": {"viewer": ["read", "deploy"], "auditor": ["audit"]}}
    async with caxton_node_factory.node(config=config) as node:
        assert node.api_address is not None
        host, port = node.api_address
        viewer, auditor = await new_key(node, "viewer"), await new_key(node, "auditor")
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            body = {"name": "a", "wasm_module": EMPTY_MODULE}
            assert (await call(http, "POST", "/api/v1/agents", viewer, body))[0] == 201
            assert (await call(http, "GET", "/api/v1/resources", viewer))[0] == 403
            assert (await call(http, "GET", "/api/v1/audit", auditor))[0] == 200
            assert (await call(http, "GET", "/api/v1/agents", auditor))[0] == 403


async def test_unknown_permission_in_roles_is_a_config_error(
    caxton_node_factory: NodeFactory,
) -> None:
    node = caxton_node_factory.build(config={**AUTH, "security.roles": {"ops": ["deplo"]}})
    with pytest.raises(ConfigError, match=r"security.roles.ops: unknown permission\(s\) deplo"):
        await node.start()


async def test_revoked_key_is_refused_by_the_running_node(
    node: Node, http: aiohttp.ClientSession, keys: dict[str, str], tmp_path: Path
) -> None:
    assert (await call(http, "GET", "/api/v1/agents", keys["viewer"]))[0] == 200
    other = Store(node.store.path)  # as the CLI does, on the node's file
    await other.open()
    try:
        elsewhere = ApiKeyStore(other)
        await elsewhere.setup()
        key_id = keys["viewer"].split("_")[1]
        await elsewhere.revoke(key_id)
    finally:
        await other.close()
    status, body, _ = await call(http, "GET", "/api/v1/agents", keys["viewer"])
    assert status == 401
    assert "revoked" in body["details"]


async def test_expired_key_is_refused_by_the_running_node(
    node: Node, http: aiohttp.ClientSession
) -> None:
    keys = ApiKeyStore(node.store, clock=lambda: 1.0)  # created long ago, for 1 day
    await keys.setup()
    key, _ = await keys.create("admin", expires_in=86400)
    status, body, _ = await call(http, "GET", "/api/v1/agents", key)
    assert (status, "expired" in body["details"]) == (401, True)


# -------------------------------------------------------------------------
# Exposure
# -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "refused"),
    [
        ({}, True),
        ({"security.allow_insecure_remote": True}, False),
        ({"security.auth_enabled": True}, False),
    ],
)
def test_non_loopback_needs_auth_or_opt_in(
    caxton_node_factory: NodeFactory, config: dict[str, Any], refused: bool
) -> None:
    node = caxton_node_factory.build(config={"networking.bind_address": "0.0.0.0:0", **config})
    if refused:
        with pytest.raises(ConfigError, match=r"without authentication.*allow_insecure_remote"):
            node.check_exposure()
    else:
        node.check_exposure()


# -------------------------------------------------------------------------
# Every route has a permission, and it is enforced for every role
# -------------------------------------------------------------------------


def routes_of(node: Node) -> list[tuple[str, str, str]]:
    from caxton.api.server import build_app

    app = build_app(node)
    found = []
    for route in app.router.routes():
        if route.method in {"HEAD", "OPTIONS"} or route.resource is None:
            continue
        found.append((route.method, route.resource.canonical, permission_of(route.handler)))
    return found


def concrete(path: str) -> str:
    """A path that matches the route: UUIDs for ids, a plain word for other parameters."""
    return re.sub(
        r"\{(\w+)[^}]*\}",
        lambda m: str(uuid.uuid4()) if m.group(1).endswith("_id") else "n1",
        path,
    )


async def test_every_route_declares_a_permission(node: Node) -> None:
    routes = routes_of(node)
    assert ("GET", "/api/v1/audit", "audit") in routes
    undeclared = [(m, p) for m, p, perm in routes if perm == UNDECLARED]
    assert undeclared == []
    assert all(perm == PUBLIC or perm in PERMISSIONS for _, _, perm in routes)


async def test_role_route_matrix(
    node: Node, http: aiohttp.ClientSession, keys: dict[str, str]
) -> None:
    """Every role against every route: 403 exactly when the role lacks the permission."""
    checked = 0
    for method, path, permission in routes_of(node):
        if permission == PUBLIC:
            continue
        status, _, _ = await call(http, method, concrete(path))
        assert status == 401, (method, path)
        for role, key in keys.items():
            status, body, _ = await call(http, method, concrete(path), key)
            if permission in DEFAULT_ROLES[role]:
                assert status not in (401, 403), (role, method, path, body)
            else:
                assert status == 403, (role, method, path, status, body)
            checked += 1
    assert checked >= 4 * 18


async def test_undeclared_plugin_route_is_refused_even_to_admin(
    caxton_node_factory: NodeFactory,
) -> None:
    async def unmarked(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    @requires("read")
    async def marked(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    class RoutesPlugin:
        @hookimpl
        def caxton_api_routes(self, node: Node) -> list[tuple[str, web.Application]]:
            sub = web.Application()
            sub.router.add_get("/unmarked", unmarked)
            sub.router.add_get("/marked", marked)
            return [("/plugin", sub)]

    async with caxton_node_factory.node(config=AUTH, plugins=[RoutesPlugin()]) as node:
        assert node.api_address is not None
        host, port = node.api_address
        admin = await new_key(node, "admin")
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            status, body, _ = await call(http, "GET", "/plugin/unmarked", admin)
            assert status == 403
            assert "declares no permission" in body["details"]
            assert (await call(http, "GET", "/plugin/marked", admin))[0] == 200
            assert (await call(http, "GET", "/plugin/marked"))[0] == 401


# -------------------------------------------------------------------------
# Audit log
# -------------------------------------------------------------------------


async def test_audit_records_failures_denials_and_changes(
    node: Node,
    http: aiohttp.ClientSession,
    keys: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    operator_id = "key:" + keys["operator"].split("_")[1]
    viewer_id = "key:" + keys["viewer"].split("_")[1]
    body = {"name": "audited", "wasm_module": EMPTY_MODULE}
    bad = keys["admin"][:-2] + ("zz" if not keys["admin"].endswith("zz") else "yy")
    with caplog.at_level(logging.DEBUG):
        await call(http, "GET", "/api/v1/agents", bad, headers={"X-Request-ID": "req-1"})
        await call(http, "POST", "/api/v1/agents", keys["viewer"], body)
        status, agent, _ = await call(http, "POST", "/api/v1/agents", keys["operator"], body)
        assert status == 201
        await call(http, "DELETE", f"/api/v1/agents/{agent['id']}", keys["operator"])
        await call(http, "POST", "/api/v1/emergency/stop", keys["operator"], {"all_agents": True})
        await call(http, "GET", "/api/v1/agents", keys["operator"])  # a read: not audited
    entries = audit_entries(node)
    summary = [(e["action"], e["result"], e["identity"], e["status"]) for e in entries]
    assert summary == [
        ("list_agents", "unauthenticated", None, 401),
        ("deploy_agent", "denied", viewer_id, 403),
        ("deploy_agent", "success", operator_id, 201),
        ("remove_agent", "success", operator_id, 204),
        ("emergency_stop", "success", operator_id, 200),
    ]
    assert entries[0]["request_id"] == "req-1"
    assert all(e["source"] == "127.0.0.1" for e in entries)
    assert all(e["request_id"] for e in entries)
    assert entries[2]["target"] == f"/api/v1/agents/{agent['id']}"
    assert entries[3]["target"] == f"/api/v1/agents/{agent['id']}"
    # Secrets are never written: not the keys, good or bad, nor any part of their secret.
    text = "\n".join(path.read_text() for path in node.context.services["auth"].audit.files())
    logged = caplog.text
    for key in (*keys.values(), bad):
        secret = key.split("_", 2)[2]
        assert secret not in text
        assert secret not in logged


async def test_audit_is_queryable_by_admin_only(
    http: aiohttp.ClientSession, keys: dict[str, str]
) -> None:
    await call(http, "GET", "/api/v1/agents")  # one failure to find
    for role in ("operator", "developer", "viewer"):
        assert (await call(http, "GET", "/api/v1/audit", keys[role]))[0] == 403
    status, body, _ = await call(
        http, "GET", "/api/v1/audit?result=unauthenticated&limit=5", keys["admin"]
    )
    assert status == 200
    assert body["entries"]
    assert all(e["result"] == "unauthenticated" for e in body["entries"])
    for query in ("limit=0", "result=maybe", "since=yesterday"):
        assert (await call(http, "GET", f"/api/v1/audit?{query}", keys["admin"]))[0] == 400


async def test_audit_route_without_auth_says_the_log_is_off(
    caxton_node_factory: NodeFactory,
) -> None:
    async with caxton_node_factory.node() as node:
        assert node.api_address is not None
        host, port = node.api_address
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            status, body, _ = await call(http, "GET", "/api/v1/audit")
    assert status == 404
    assert "security.auth_enabled" in body["details"]


def test_audit_log_rotates_and_queries_across_files(tmp_path: Path) -> None:
    times = iter(range(1, 1000))
    log = AuditLog(tmp_path / "audit.log", max_bytes=1024, backups=3, clock=lambda: next(times))
    for n in range(40):
        log.record("deploy_agent", "success", identity=f"key:{n}", target="/t", source="::1")
    files = log.files()
    log.close()
    assert [p.name for p in files] == ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]
    assert {p.stat().st_mode & 0o777 for p in files} == {0o600}
    assert all(p.stat().st_size <= 1024 for p in files)
    for path in files:
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            assert set(entry) >= {"identity", "action", "target", "result", "source", "request_id"}
    newest = log.query(limit=1000)
    assert newest[0]["identity"] == "key:39"
    assert [e["time"] for e in newest] == sorted((e["time"] for e in newest), reverse=True)
    assert len(newest) > 10  # read across the rotated files
    assert [e["identity"] for e in log.query(since=39)] == ["key:39", "key:38"]
    assert log.query(identity="key:37", limit=5)[0]["identity"] == "key:37"


def test_audit_refuses_an_unknown_result(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    with pytest.raises(ValueError, match="audit result must be one of"):
        log.record("x", "ok")
    log.close()


async def test_only_admins_may_send_in_a_deployed_agents_name(
    http: aiohttp.ClientSession, keys: dict[str, str]
) -> None:
    """An allow-list is about sender names, so a REST caller may not pick an agent's."""
    for extra in ({"name": "checkout"}, {"name": "billing", "allowed_senders": ["checkout"]}):
        deploy = {"wasm_module": EMPTY_MODULE, **extra}
        status, _, _ = await call(http, "POST", "/api/v1/agents", keys["admin"], deploy)
        assert status == 201
    as_checkout = {"performative": "inform", "receiver": "billing", "sender": "checkout"}
    status, answer, _ = await call(http, "POST", "/api/v1/messages", keys["operator"], as_checkout)
    assert status == 403
    assert answer["details"].startswith(
        "sender 'checkout' is a deployed agent: sending in an agent's name needs the "
        "'impersonate' permission, which "
    )
    task = {"participants": ["billing"], "initiator": "checkout", "content": {}}
    status, answer, _ = await call(http, "POST", "/api/v1/tasks", keys["developer"], task)
    assert status == 403
    assert "initiator 'checkout' is a deployed agent" in answer["details"]
    # a name that is no agent's is the caller's to choose; admins may speak for agents
    as_client = {"performative": "inform", "receiver": "checkout", "sender": "batch-job"}
    status, _, _ = await call(http, "POST", "/api/v1/messages", keys["operator"], as_client)
    assert status == 202
    status, _, _ = await call(http, "POST", "/api/v1/messages", keys["admin"], as_checkout)
    assert status == 202
