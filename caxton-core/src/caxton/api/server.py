"""Building and serving the aiohttp application of a node.

:func:`build_app` assembles the routes (core's and those plugins return from
``caxton_api_routes``, mounted as sub-applications), the middlewares
(:mod:`caxton.api.middleware`) and the per-application state (:mod:`caxton.api.keys`).
:func:`start_api` serves it on ``networking.bind_address`` with the timeouts of
:class:`~caxton.api.settings.ApiSettings`:

- at most ``max_connections`` connections are open at once, and a connection must
  deliver its first complete request head within ``header_timeout`` (slow-header
  clients are cut off); see :class:`ConnectionGuard`;
- a request body must arrive within ``body_timeout`` (:mod:`caxton.api.bodies`);
- an idle keep-alive connection is closed after ``keepalive_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from caxton.api import (
    agent_state,
    agents,
    audit,
    backups,
    cluster,
    cluster_moves,
    diagnostics,
    emergency,
    lifecycle,
    messages,
    system,
    ui,
    views,
)
from caxton.api.edges import ProtocolLog, with_expect_check
from caxton.api.keys import (
    AWAITING_FIRST_REQUEST,
    CPU,
    GUARD,
    HTTP_STATS,
    LIMITER,
    NODE,
    OPENAPI,
    SETTINGS,
    TASKS,
    TRACING,
)
from caxton.api.middleware import MIDDLEWARES
from caxton.api.openapi import build_openapi, with_tags
from caxton.api.ratelimit import TokenBucketLimiter
from caxton.api.resources import CpuSampler
from caxton.api.settings import ApiSettings
from caxton.api.tasks import TaskBoard
from caxton.errors import ConfigError
from caxton.http_stats import HttpStats
from caxton.units import parse_address

if TYPE_CHECKING:
    from caxton.config import Config
    from caxton.node import Node

__all__ = ["ConnectionGuard", "api_ssl_context", "build_app", "start_api"]

log = logging.getLogger("caxton.api")

#: Seconds between two warnings about refused connections.
REFUSAL_LOG_INTERVAL = 10.0

#: Seconds a connection may linger after an answer that left its body unread.
LINGERING_TIME = 1.0
#: Longest request line accepted (aiohttp's default is 8190): room for an agent's
#: longest key (1 KiB, caxton.api.agent_state) percent-encoded in a path or query.
MAX_REQUEST_LINE = 17 * 1024
#: Core's route tables, in the order they are added.
CORE_ROUTES = (
    system.routes,
    agents.routes,
    agent_state.routes,
    messages.routes,
    audit.routes,
    cluster.routes,
    cluster_moves.routes,
    backups.routes,
    emergency.routes,
    views.routes,
    diagnostics.routes,
    lifecycle.routes,
)


def build_app(node: Node, settings: ApiSettings | None = None) -> web.Application:
    settings = settings or ApiSettings.from_config(node.config)
    app = web.Application(client_max_size=settings.max_body_size, middlewares=MIDDLEWARES)
    app[NODE] = node
    app[SETTINGS] = settings
    if settings.rate_limit_enabled:
        app[LIMITER] = TokenBucketLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    guard = getattr(getattr(node, "context", None), "services", {}).get("auth")
    if guard is not None:
        app[GUARD] = guard
    document = build_openapi(node)
    for part in (
        cluster,
        cluster_moves,
        backups,
        emergency,
        agent_state,
        views,
        diagnostics,
        lifecycle,
    ):
        document = part.extend_openapi(document)
    if node.config["api"]["ui"]:
        app.add_routes(ui.routes)
        document = ui.extend_openapi(document)
    app[OPENAPI] = with_tags(document)
    app[AWAITING_FIRST_REQUEST] = set()
    app[TASKS] = TaskBoard()
    app[CPU] = CpuSampler()
    stats = getattr(node, "http_stats", None)
    app[HTTP_STATS] = stats if isinstance(stats, HttpStats) else HttpStats()
    tracing = getattr(node, "tracing", None)
    if tracing is not None:
        app[TRACING] = tracing
    for table in CORE_ROUTES:  # Expect: 100-continue is checked against the body limit
        app.add_routes(with_expect_check(table))
    for result in node.hook.caxton_api_routes(node=node):
        for prefix, sub_app in result or ():
            app.add_subapp(prefix, sub_app)
    return app


class ConnectionGuard:
    """Protocol factory that bounds connections: how many, and how slow to start.

    - Past ``max_connections`` open connections, a new one is accepted and closed at
      once (logged at most every :data:`REFUSAL_LOG_INTERVAL` seconds).
    - aiohttp has no header-read timeout of its own: a client trickling a request head
      one byte at a time would hold its connection until the keep-alive timeout. The
      guard puts each new connection in ``awaiting``, the ``request_context`` middleware
      takes it out when its first request arrives, and connections still in it
      ``header_timeout`` seconds after accepting are closed. (A connection stays in the
      set at most that long, so the set cannot grow without bound.)
    """

    def __init__(
        self,
        server: web.Server,
        *,
        header_timeout: float,
        max_connections: int,
        awaiting: set[object],
    ) -> None:
        self.server = server
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.awaiting = awaiting
        self.refused = 0
        self._last_refusal_log = -math.inf

    def __call__(self) -> asyncio.BaseProtocol:
        loop = asyncio.get_running_loop()
        if len(self.server.connections) >= self.max_connections:
            self.refused += 1
            if loop.time() - self._last_refusal_log >= REFUSAL_LOG_INTERVAL:
                self._last_refusal_log = loop.time()
                log.warning(
                    "API: %d connections open (networking.max_connections); refusing new "
                    "ones (%d refused so far)",
                    len(self.server.connections),
                    self.refused,
                )
            return _Refuse()
        handler = self.server()
        if self.header_timeout > 0:
            self.awaiting.add(handler)
            loop.call_later(self.header_timeout, self._expire, handler)
        return handler

    def _expire(self, handler: RequestHandler) -> None:
        if handler in self.awaiting:
            self.awaiting.discard(handler)
            handler.force_close()


class _Refuse(asyncio.Protocol):
    """Closes the connection it is given."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def api_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The API's TLS context (``networking.tls_*``), or None without TLS."""
    networking = config["networking"]
    if not networking["tls_enabled"]:
        return None
    cert, key = networking["tls_cert_path"], networking["tls_key_path"]
    if not cert or not key:
        raise ConfigError(
            "networking.tls_enabled is true but networking.tls_cert_path or "
            "networking.tls_key_path is not set"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the API's TLS certificate {cert}: {exc}") from exc
    return context


async def start_api(node: Node, stack: contextlib.AsyncExitStack) -> tuple[str, int]:
    """Serve the node's API on ``networking.bind_address``; return the bound address."""
    host, port = parse_address(node.config["networking"]["bind_address"])
    settings = ApiSettings.from_config(node.config)
    app = build_app(node, settings)
    runner = web.AppRunner(
        app,
        access_log=None,
        logger=ProtocolLog(),  # malformed requests: one rate-limited line, no traceback
        keepalive_timeout=settings.keepalive_timeout,
        # After answering a request whose body was not read (413, 408), read and drop
        # what the client still sends for at most this long, then close.
        lingering_time=LINGERING_TIME,
        max_line_size=MAX_REQUEST_LINE,
        shutdown_timeout=5.0,
    )
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    assert runner.server is not None
    factory = ConnectionGuard(
        runner.server,
        header_timeout=settings.header_timeout,
        max_connections=settings.max_connections,
        awaiting=app[AWAITING_FIRST_REQUEST],
    )
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            factory, host, port, ssl=api_ssl_context(node.config), reuse_address=True, backlog=1024
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot serve the API on {host}:{port}: {exc.strerror or exc} "
            f"(networking.bind_address; is another node using the port?)"
        ) from exc

    # Pushed after runner.cleanup, so it runs first: stop accepting, then let the
    # runner close the open connections and the application.
    stack.callback(server.close)
    bound = server.sockets[0].getsockname()[:2]
    return str(bound[0]), int(bound[1])
