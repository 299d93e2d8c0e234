"""The permission each REST route needs, declared where the route is defined.

Every handler is marked with :func:`requires` (or :func:`public`)::

    @routes.post("/api/v1/agents")
    @requires("deploy")
    async def deploy_agent(request: web.Request) -> web.Response: ...

The auth chain (docs/api.md, "Permissions") reads the mark with
:func:`required_permission` and checks it against the caller's role; a route without a
mark is refused, so forgetting to declare one fails closed. Plugin routes mounted
through ``caxton_api_routes`` use the same decorators.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from aiohttp import web

__all__ = [
    "PERMISSIONS",
    "PUBLIC",
    "UNDECLARED",
    "permission_of",
    "public",
    "required_permission",
    "requires",
]

#: Every permission a route may require, with what it allows.
PERMISSIONS: Final[dict[str, str]] = {
    "read": "read agents, conversations, tasks, queues and resources",
    "deploy": "deploy agents",
    "update": "start, stop, suspend, resume and update agents",
    "remove": "remove agents",
    "send": "send messages and run contract-net tasks",
    "impersonate": "send messages and tasks in the name of a deployed agent",
    "metrics": "view metrics",
    "config": "modify configuration",
    "cluster": "manage the cluster: drain queues, backups, emergency procedures",
    "audit": "read the audit log",
}

#: The mark of a route anyone may call (health, readiness, the OpenAPI document).
PUBLIC: Final = "public"
#: What :func:`permission_of` returns for a handler nobody marked.
UNDECLARED: Final = "undeclared"

_ATTRIBUTE = "__caxton_permission__"

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[web.StreamResponse]])


def requires(permission: str) -> Callable[[Handler], Handler]:
    """Mark a handler as needing ``permission`` (one of :data:`PERMISSIONS`)."""
    if permission not in PERMISSIONS:
        raise ValueError(
            f"unknown permission {permission!r}; known permissions: {', '.join(PERMISSIONS)}"
        )

    def mark(handler: Handler) -> Handler:
        setattr(handler, _ATTRIBUTE, permission)
        return handler

    return mark


def public(handler: Handler) -> Handler:
    """Mark a handler as callable without credentials."""
    setattr(handler, _ATTRIBUTE, PUBLIC)
    return handler


def permission_of(handler: object) -> str:
    """The mark of ``handler``: a permission, :data:`PUBLIC` or :data:`UNDECLARED`."""
    permission = getattr(handler, _ATTRIBUTE, UNDECLARED)
    return permission if isinstance(permission, str) else UNDECLARED


def required_permission(request: web.Request) -> str:
    """The mark of the route ``request`` matched.

    Requests that matched no route (answered 404 or 405 by the router) are
    :data:`PUBLIC`: they reach no handler.
    """
    match_info = request.match_info
    if match_info.http_exception is not None:
        return PUBLIC
    return permission_of(match_info.handler)
