"""The API's edges: clients that break HTTP, go away, or announce huge bodies.

- :class:`ProtocolLog` is the logger aiohttp's request handler gets. aiohttp logs a
  request it cannot parse with a full traceback at ERROR (about 1 KB each), so any
  client could grow the log without bound: here each is one WARNING line, within a
  :class:`~caxton.log_budget.LogBudget` (the line after a pause says how many were left
  out), and a client that went away is one INFO line.
- :func:`check_expect` answers ``Expect: 100-continue``: a body over
  ``networking.max_body_size`` is refused with 413 before any ``100 Continue``.
- :func:`refuse_http09` answers an HTTP/0.9 request (aiohttp's parser accepts
  ``GET /``) with 400 and closes the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from caxton.api.keys import SETTINGS
from caxton.api.responses import error_response
from caxton.log_budget import LogBudget

__all__ = ["ProtocolLog", "check_expect", "refuse_http09", "with_expect_check"]

log = logging.getLogger("caxton.api")

#: Malformed-request lines: 10 at once, then one every 6 seconds.
BAD_REQUEST_LINES_PER_SECOND = 1 / 6
BAD_REQUEST_LINES_BURST = 10
#: Longest piece of aiohttp's own description of a malformed request that is logged.
MAX_DESCRIPTION = 160


class ProtocolLog:
    """What aiohttp's request handler logs with (its ``logger`` argument)."""

    def __init__(self) -> None:
        self.budget = LogBudget(BAD_REQUEST_LINES_PER_SECOND, BAD_REQUEST_LINES_BURST)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("exc_info", None)  # a non-HTTP client's first bytes: no traceback
        log.debug(msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else None
        remote = args[0] if msg.startswith("Error handling request from") and args else "?"
        if isinstance(error, HttpProcessingError):
            dropped = self.budget.take()
            if dropped is None:
                return
            what = " ".join(str(error.message or error).split())[:MAX_DESCRIPTION]
            more = f" ({dropped} more left out of the log before this one)" if dropped else ""
            log.warning(
                "API: malformed request from %s refused with %s: %s%s",
                remote,
                error.code,
                what,
                more,
            )
        elif isinstance(error, ConnectionError):
            log.info("API: client %s went away: %s", remote, error)
        else:
            log.error(msg, *args, exc_info=exc_info or True, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        log.warning(msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        log.error(msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        log.info(msg, *args, **kwargs)


async def check_expect(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` only for a body the node would read."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if expect.lower() != "100-continue":
        response = error_response(
            417, "Expectation failed", f"unknown Expect: {expect[:80]!r}; only 100-continue"
        )
        response.force_close()
        return response
    limit = request.config_dict[SETTINGS].max_body_size
    length = request.content_length
    if length is not None and length > limit:
        response = error_response(
            413,
            "Payload too large",
            f"request body of {length} bytes exceeds the limit of {limit} bytes "
            f"(networking.max_body_size)",
        )
        response.force_close()
        return response
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def refuse_http09(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.version >= (1, 0):
        return await handler(request)
    response = error_response(
        400, "Bad request", "HTTP/0.9 is not served: send an HTTP/1.0 or HTTP/1.1 request"
    )
    response.force_close()
    return response


def with_expect_check(table: web.RouteTableDef) -> list[web.AbstractRouteDef]:
    """``table``'s routes, each answering ``Expect`` with :func:`check_expect`."""
    routes: list[web.AbstractRouteDef] = []
    for route in table:
        if isinstance(route, web.RouteDef):
            route = web.RouteDef(
                route.method,
                route.path,
                route.handler,
                {**route.kwargs, "expect_handler": check_expect},
            )
        routes.append(route)
    return routes
