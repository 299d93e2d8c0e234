"""The web console at ``/ui`` and what it asks the API first (``GET /api/v1/whoami``).

The console is three static files packaged with caxton (``caxton/ui/``: plain HTML,
JavaScript and CSS, nothing fetched from elsewhere). They hold no data, so they are
public; every figure the console shows comes from the REST API, which checks the
credentials the console sends in headers (an API key or a bearer token the user typed,
kept in the tab's ``sessionStorage``). No cookie is involved, so a cross-site request
carries no credentials (CSRF-safe), and a strict Content-Security-Policy allows scripts,
styles and connections only from the node itself. ``api.ui = false`` leaves it out.
See docs/console.md.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from aiohttp import web

from caxton.api.keys import GUARD, IDENTITY
from caxton.api.openapi import object_schema, operation
from caxton.api.permissions import PERMISSIONS, PUBLIC, public, requires
from caxton.api.responses import json_response
from caxton.errors import NotFound

__all__ = ["SECURITY_HEADERS", "extend_openapi", "routes"]

routes = web.RouteTableDef()

#: The console's files and their content types.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
#: Headers of every console answer.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> web.Response:
    if name not in ASSETS:
        raise NotFound(f"the console has no file {name!r}")
    data = files("caxton.ui").joinpath(name).read_bytes()
    return web.Response(body=data, headers={"Content-Type": ASSETS[name], **SECURITY_HEADERS})


@routes.get("/ui")
@routes.get("/ui/")
@public
async def console_page(request: web.Request) -> web.Response:
    return _asset("index.html")


@routes.get("/ui/{asset}")
@public
async def console_asset(request: web.Request) -> web.Response:
    return _asset(request.match_info["asset"])


@routes.get("/api/v1/whoami")
@requires("read")
async def whoami(request: web.Request) -> web.Response:
    """Who the credentials are and what they may do (the console hides the rest)."""
    identity = request.get(IDENTITY)
    guard = request.config_dict.get(GUARD)
    if guard is None or identity is None:
        permissions = sorted(PERMISSIONS)
        return json_response(
            {"auth_enabled": False, "identity": None, "roles": [], "permissions": permissions}
        )
    allowed = sorted(p for p in PERMISSIONS if guard.roles.allows(identity.roles, p))
    return json_response(
        {
            "auth_enabled": True,
            "identity": identity.name,
            "roles": sorted(identity.roles),
            "permissions": allowed,
        }
    )


def extend_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the console's routes and ``whoami`` to ``document``; return it."""

    def served(operation_id: str, summary: str, types: list[str]) -> dict[str, Any]:
        answer = operation(operation_id, summary, PUBLIC, {200: None}, (404,), tag="console")
        answer["responses"]["200"]["content"] = {t: {"schema": {"type": "string"}} for t in types}
        return answer

    page = served("consolePage", "The web console's page (no data)", ["text/html"])
    asset = {
        **served(
            "consoleAsset",
            "A file of the web console (no data)",
            ["text/html", "text/javascript", "text/css"],
        ),
        "parameters": [
            {
                "name": "asset",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "enum": sorted(ASSETS)},
            }
        ],
    }
    document["paths"].update(
        {
            "/ui": {"get": {**page, "operationId": "consoleRoot"}},
            "/ui/": {"get": page},
            "/ui/{asset}": {"get": asset},
            "/api/v1/whoami": {
                "get": operation(
                    "whoami",
                    "The caller's identity, roles and permissions",
                    "read",
                    {200: "WhoAmI"},
                    tag="health",
                )
            },
        }
    )
    document["components"]["schemas"]["WhoAmI"] = object_schema(
        {
            "auth_enabled": {"type": "boolean"},
            "identity": {"type": "string", "nullable": True},
            "roles": {"type": "array", "items": {"type": "string"}},
            "permissions": {"type": "array", "items": {"type": "string"}},
        },
        ("auth_enabled", "identity", "roles", "permissions"),
    )
    return document
