"""The middlewares every request passes, outermost first.

1. :func:`request_context` gives the request its id (``X-Request-ID``: the client's if
   it is sane, else a new one), times it and writes one structured access-log line.
2. :func:`cors` answers preflights and adds the CORS headers (``security.cors_*``).
3. :func:`rate_limit` applies the client's token bucket (``security.rate_limit_*``).
4. :func:`authenticate` (with ``security.auth_enabled``) asks the auth chain who is
   calling and checks the role against the route's permission (401, 403), and writes
   the audit log (docs/auth.md).
5. :func:`errors` turns every exception into a JSON ``{"error", "details"}`` answer:
   a :class:`~caxton.errors.CaxtonError` into its ``http_status``, aiohttp's own HTTP
   errors (unknown route, wrong method, body too large) into theirs, and anything else
   into a logged 500.
6. :func:`~caxton.api.cluster.refuse_writes_in_partition` refuses routes that change
   cluster state while the node is in a minority partition (503, docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from caxton.api.cluster import refuse_writes_in_partition
from caxton.api.edges import refuse_http09
from caxton.api.keys import (
    AWAITING_FIRST_REQUEST,
    GUARD,
    HTTP_STATS,
    IDENTITY,
    LIMITER,
    REQUEST_ID,
    SETTINGS,
    TRACING,
)
from caxton.api.permissions import PUBLIC, UNDECLARED, required_permission
from caxton.api.responses import error_response
from caxton.auth.audit import AUDITED_PERMISSIONS
from caxton.drivers.auth import Credentials
from caxton.errors import AuthError, CaxtonError, Forbidden, RateLimited
from caxton.http_stats import route_of

__all__ = [
    "AUDITED_PERMISSIONS",
    "MIDDLEWARES",
    "authenticate",
    "cors",
    "errors",
    "rate_limit",
    "request_context",
]

log = logging.getLogger("caxton.api")
access_log = logging.getLogger("caxton.api.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: Paths an orchestrator polls; never rate limited.
RATE_LIMIT_EXEMPT = frozenset({"/health", "/ready"})
#: Response headers a browser script may read.
EXPOSED_HEADERS = (
    REQUEST_ID_HEADER,
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
    "Location",
)
#: Longest Retry-After we announce, seconds (a zero refill rate never refills).
MAX_RETRY_AFTER = 86_400


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    tracing = request.config_dict.get(TRACING)
    if tracing is None:
        return await _request_context(request, handler)
    # The request's span is the current one while it is handled: the messages it sends
    # continue its trace (a client's traceparent header, if any, is its parent).
    with tracing.span(
        f"{request.method} {route_of(request)}",
        tracing.extract(request.headers),
        kind="server",
        **{"http.request.method": request.method, "url.path": request.rel_url.path},
    ) as span:
        response = await _request_context(request, handler)
        span.set_attribute("http.response.status_code", response.status)
        return response


async def _request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    request.config_dict[AWAITING_FIRST_REQUEST].discard(request.protocol)
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    status = 499  # the client went away before an answer was ready
    try:
        response = await handler(request)
        status = response.status
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
    finally:
        duration = time.perf_counter() - started
        request.config_dict[HTTP_STATS].observe(request.method, route_of(request), status, duration)
        entry = {
            "request_id": request_id,
            "method": request.method,
            "path": request.rel_url.path,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "remote": request.remote,
            "user_agent": request.headers.get(hdrs.USER_AGENT, ""),
            "permission": required_permission(request),
            "identity": identity.name if (identity := request.get(IDENTITY)) else None,
        }
        # The fields travel as ``access`` (JSON log lines carry them as their own
        # fields); the message is a readable summary, not JSON to be decoded again.
        access_log.info(
            "%s %s %s %.1f ms",
            entry["method"],
            entry["path"],
            status,
            entry["duration_ms"],
            extra={"request_id": request_id, "access": entry},
        )


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.config_dict[SETTINGS]
    origin = request.headers.get(hdrs.ORIGIN)
    if not settings.cors_enabled or origin is None:
        return await handler(request)
    allowed = "*" in settings.cors_origins or origin in settings.cors_origins
    allow_origin = "*" if "*" in settings.cors_origins else origin
    wanted = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_METHOD)
    if request.method == hdrs.METH_OPTIONS and wanted is not None:
        if not allowed or wanted.upper() not in settings.cors_methods:
            return error_response(
                403,
                "Forbidden",
                f"cross-origin {wanted} from {origin} is not allowed "
                f"(security.cors_origins, security.cors_methods)",
            )
        return web.Response(
            status=204,
            headers={
                hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: allow_origin,
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(settings.cors_methods),
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ", ".join(
                    ("Content-Type", "Authorization", settings.api_key_header, REQUEST_ID_HEADER)
                ),
                hdrs.ACCESS_CONTROL_MAX_AGE: "600",
                hdrs.VARY: "Origin",
            },
        )
    response = await handler(request)
    if allowed:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = allow_origin
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = ", ".join(EXPOSED_HEADERS)
        response.headers.add(hdrs.VARY, "Origin")
    return response


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    limiter = request.config_dict.get(LIMITER)
    if limiter is None or request.path in RATE_LIMIT_EXEMPT:
        return await handler(request)
    decision = limiter.take(request.remote or "unknown")
    headers = {
        "X-RateLimit-Limit": str(limiter.burst),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(_whole_seconds(decision.reset)),
    }
    if not decision.allowed:
        retry_after = _whole_seconds(decision.retry_after)
        exc = RateLimited(
            f"rate limit of {limiter.rate:g} requests/s (burst {limiter.burst}) exceeded; "
            f"retry in {retry_after}s",
            retry_after=retry_after,
        )
        return error_response(
            exc.http_status,
            exc.error,
            exc.details,
            headers={**headers, "Retry-After": str(retry_after)},
        )
    response = await handler(request)
    response.headers.update(headers)
    return response


def _whole_seconds(seconds: float) -> int:
    return MAX_RETRY_AFTER if math.isinf(seconds) else min(MAX_RETRY_AFTER, math.ceil(seconds))


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    guard = request.config_dict.get(GUARD)
    if guard is None:
        return await handler(request)
    permission = required_permission(request)
    if permission == PUBLIC:
        return await handler(request)
    action = getattr(request.match_info.handler, "__name__", request.method)

    def audit(
        result: str,
        status: int,
        details: str = "",
        identity: str | None = None,
        target: str | None = None,
    ) -> None:
        if guard.audit is not None:
            guard.audit.record(
                action,
                result,
                identity=identity,
                target=target or request.rel_url.path,
                source=request.remote,
                request_id=request.get(REQUEST_ID),
                status=status,
                details=details,
            )

    credentials = Credentials(
        headers=request.headers, remote=request.remote, method=request.method, path=request.path
    )
    try:
        identity = await guard.authenticate(credentials)
    except AuthError as exc:
        audit("unauthenticated", exc.http_status, str(exc))
        return error_response(
            exc.http_status,
            exc.error,
            exc.details,
            headers={hdrs.WWW_AUTHENTICATE: guard.challenge},
        )
    except CaxtonError as exc:
        return error_response(exc.http_status, exc.error, exc.details)
    request[IDENTITY] = identity
    try:
        if permission == UNDECLARED:
            raise Forbidden(
                f"{request.method} {request.rel_url.path} declares no permission, so it is "
                f"refused to everyone; its plugin must mark it with @requires or @public"
            )
        guard.authorize(identity, permission)
    except Forbidden as exc:
        audit("denied", exc.http_status, str(exc), identity.name)
        return error_response(exc.http_status, exc.error, exc.details)
    if permission not in AUDITED_PERMISSIONS:
        return await handler(request)
    status, target = 500, None
    try:
        response = await handler(request)
        status, target = response.status, response.headers.get(hdrs.LOCATION)
        return response
    finally:
        result = "success" if status < 400 else "failure"
        audit(result, status, identity=identity.name, target=target)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CaxtonError as exc:
        response = error_response(exc.http_status, exc.error, exc.details)
        if exc.http_status in (408, 413):
            response.force_close()  # the rest of the body is still on the wire
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except asyncio.CancelledError:
        raise
    except ConnectionError:  # the client went away: its access log line (499) says so
        return error_response(499, "Client closed request", "the client went away")
    except Exception:
        request_id = request.get(REQUEST_ID, "-")
        log.exception("request %s: %s %s failed", request_id, request.method, request.rel_url.path)
        return error_response(
            500,
            "Internal server error",
            f"request {request_id} failed on the server; the node log has the details",
        )


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (no route, wrong method, too large) as JSON."""
    headers: dict[str, str] = {}
    if isinstance(exc, web.HTTPNotFound):
        details = (
            f"no route matches {request.method} {request.rel_url.path}; "
            f"the API is described at /api/v1/openapi.json"
        )
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        headers[hdrs.ALLOW] = ", ".join(allowed)
        details = (
            f"{request.method} is not allowed on {request.rel_url.path}; "
            f"allowed: {', '.join(allowed)}"
        )
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        details = (
            f"request body exceeds the limit of {request.config_dict[SETTINGS].max_body_size} bytes"
        )
    else:
        details = exc.text or exc.reason
    response = error_response(exc.status, exc.reason, details, headers=headers)
    if exc.status == 413:
        response.force_close()
    return response


MIDDLEWARES = (
    request_context,
    refuse_http09,
    cors,
    rate_limit,
    authenticate,
    errors,
    refuse_writes_in_partition,
)
