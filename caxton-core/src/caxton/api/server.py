"""Building and serving the aiohttp application of a node."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from aiohttp import web

from caxton.api.keys import NODE
from caxton.units import parse_address

if TYPE_CHECKING:
    from caxton.node import Node

routes = web.RouteTableDef()


@routes.get("/api/v1/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "healthy"})


@routes.get("/health")
async def liveness(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


@routes.get("/ready")
async def readiness(request: web.Request) -> web.Response:
    node = request.app[NODE]
    ready = node.state == "running"
    return web.json_response(
        {"status": "ready" if ready else "not-ready", "state": node.state},
        status=200 if ready else 503,
    )


def build_app(node: Node) -> web.Application:
    app = web.Application(client_max_size=node.config["networking"]["max_body_size"])
    app[NODE] = node
    app.add_routes(routes)
    for result in node.hook.caxton_api_routes(node=node):
        for prefix, sub_app in result or ():
            app.add_subapp(prefix, sub_app)
    return app


async def start_api(node: Node, stack: contextlib.AsyncExitStack) -> tuple[str, int]:
    """Serve the node's API on ``networking.bind_address``; return the bound address."""
    host, port = parse_address(node.config["networking"]["bind_address"])
    runner = web.AppRunner(build_app(node), access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    sockets = [s for server in [site._server] if server for s in server.sockets]  # noqa: SLF001
    bound = sockets[0].getsockname()[:2] if sockets else (host, port)
    return str(bound[0]), int(bound[1])
