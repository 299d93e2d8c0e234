"""``GET /api/v1/audit``: the audit log, newest first (permission ``audit``: admin)."""

from __future__ import annotations

from aiohttp import web

from caxton.api.common import query
from caxton.api.keys import GUARD
from caxton.api.openapi import AUDIT_QUERY
from caxton.api.permissions import requires
from caxton.api.responses import json_response
from caxton.errors import NotFound, ValidationError

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/api/v1/audit")
@requires("audit")
async def audit_log(request: web.Request) -> web.Response:
    filters = {
        name: query(request, name, schema)
        for name, schema in AUDIT_QUERY.items()
        if name != "since"
    }
    since = request.query.get("since")
    if since is not None:
        try:
            filters["since"] = float(since)
        except ValueError:
            raise ValidationError(
                f"query parameter since must be Unix seconds, not {since!r}"
            ) from None
        if not 0 <= filters["since"] < float("inf"):
            raise ValidationError(f"query parameter since must be Unix seconds, not {since!r}")
    guard = request.config_dict.get(GUARD)
    if guard is None or guard.audit is None:
        raise NotFound(
            "the audit log is off: it is written when security.auth_enabled and "
            "security.audit.enabled are both true"
        )
    limit = filters.pop("limit")
    entries = guard.audit.query(limit=100 if limit is None else limit, **filters)
    return json_response({"entries": entries})
