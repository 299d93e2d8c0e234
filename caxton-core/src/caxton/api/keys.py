"""Every object stored on the aiohttp application or request, declared once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from caxton.api.ratelimit import TokenBucketLimiter
from caxton.api.resources import CpuSampler
from caxton.api.settings import ApiSettings
from caxton.api.tasks import TaskBoard
from caxton.drivers.auth import Identity
from caxton.http_stats import HttpStats
from caxton.node import Node

if TYPE_CHECKING:
    from caxton.auth.chain import Guard  # imports caxton.api.permissions
    from caxton.tracing import Tracing

NODE = web.AppKey("node", Node)
SETTINGS = web.AppKey("settings", ApiSettings)
#: Set only when ``security.rate_limit_enabled`` is true.
LIMITER = web.AppKey("rate_limiter", TokenBucketLimiter)
#: The OpenAPI document, built once per application.
OPENAPI = web.AppKey("openapi", dict[str, Any])
#: Connections still waiting for their first request head (see :mod:`caxton.api.server`).
AWAITING_FIRST_REQUEST = web.AppKey("awaiting_first_request", set[object])
TASKS = web.AppKey("tasks", TaskBoard)
CPU = web.AppKey("cpu", CpuSampler)
#: The node's request counts and durations (its metrics read them).
HTTP_STATS = web.AppKey("http_stats", HttpStats)
#: Set only when the node traces (observability.enable_tracing).
TRACING: web.AppKey[Tracing] = web.AppKey("tracing")
#: Set only when ``security.auth_enabled`` is true: the node's auth chain and roles.
GUARD: web.AppKey[Guard] = web.AppKey("guard")


REQUEST_ID = web.RequestKey("request_id", str)
#: Who is calling, once the auth chain has said (auth enabled, non-public routes).
IDENTITY = web.RequestKey("identity", Identity)
