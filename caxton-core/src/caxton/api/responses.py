"""JSON answers: compact, as the runbook shows them (``{"status":"healthy"}``)."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

__all__ = ["dumps", "error_response", "json_response"]

dumps = functools.partial(json.dumps, separators=(",", ":"))


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=dumps)


def error_response(
    status: int,
    error: str,
    details: str,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The body of every error: ``{"error": summary, "details": what and what next}``."""
    return json_response({"error": error, "details": details}, status=status, headers=headers)
