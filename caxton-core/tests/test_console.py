"""The web console's routes: public files that hold no data, a strict CSP, ``api.ui`` to
turn them off, and ``GET /api/v1/whoami``."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from caxton.auth.keys import ApiKeyStore
from caxton.node import Node
from caxton.testing import NodeFactory


def base(node: Node) -> str:
    assert node.api_address is not None
    host, port = node.api_address
    return f"http://{host}:{port}"


async def get(node: Node, path: str, key: str | None = None) -> tuple[int, Any, Any]:
    headers = {"X-API-Key": key} if key else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(base(node) + path, headers=headers, allow_redirects=False) as response,
    ):
        body = await response.read()
        return response.status, response.headers, body


async def test_the_console_files_are_public_and_strict(caxton_node_factory: NodeFactory) -> None:
    async with caxton_node_factory.node(config={"security.auth_enabled": True}) as node:
        for path, kind in (
            ("/ui", "text/html"),
            ("/ui/", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
        ):
            status, headers, body = await get(node, path)
            assert status == 200, path
            assert headers["Content-Type"].startswith(kind)
            csp = headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp
            assert "script-src 'self'" in csp
            assert "'unsafe-inline'" not in csp
            assert headers["X-Frame-Options"] == "DENY"
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert node.node_id.encode() not in body
        page = (await get(node, "/ui/"))[2].decode()
        assert '<script src="/ui/app.js"' in page
        assert "style=" not in page
        assert "onclick" not in page
        status, _, body = await get(node, "/ui/secrets.txt")
        assert status == 404
        status, _, _ = await get(node, "/ui/../api/v1/agents")
        assert status in (401, 404)
        assert (await get(node, "/api/v1/whoami"))[0] == 401


async def test_whoami_names_the_role_and_its_permissions(
    caxton_node_factory: NodeFactory,
) -> None:
    async with caxton_node_factory.node(config={"security.auth_enabled": True}) as node:
        keys = ApiKeyStore(node.store)
        await keys.setup()
        key, record = await keys.create("viewer")
        status, _, body = await get(node, "/api/v1/whoami", key)
        assert status == 200
        me = json.loads(body)
        assert me == {
            "auth_enabled": True,
            "identity": f"key:{record.id}",
            "roles": ["viewer"],
            "permissions": ["metrics", "read"],
        }


async def test_without_auth_whoami_says_so(caxton_node_factory: NodeFactory) -> None:
    async with caxton_node_factory.node() as node:
        status, _, body = await get(node, "/api/v1/whoami")
        assert status == 200
        assert b'"auth_enabled":false' in body.replace(b" ", b"")


async def test_api_ui_false_leaves_the_console_out(caxton_node_factory: NodeFactory) -> None:
    async with caxton_node_factory.node(config={"api.ui": False}) as node:
        assert (await get(node, "/ui/"))[0] == 404
        assert (await get(node, "/ui/app.js"))[0] == 404
        status, _, body = await get(node, "/api/v1/openapi.json")
        assert status == 200
        assert b"/ui/" not in body
