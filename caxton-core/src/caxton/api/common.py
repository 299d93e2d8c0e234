"""Helpers the route modules share: services, validated input, path ids."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from caxton.api.bodies import EMPTY, read_json
from caxton.api.keys import NODE, OPENAPI
from caxton.api.openapi import UUID_PATTERN
from caxton.api.validation import check
from caxton.errors import Conflict, ServiceUnavailable, ValidationError

__all__ = ["body", "flag", "path_uuid", "query", "sending_router", "service"]

_INTEGER = re.compile(r"-?[0-9]{1,18}")


def service(request: web.Request, name: str) -> Any:
    """``node.<name>`` (``agents``, ``router``), or a 503 while it is not running."""
    node = request.config_dict[NODE]
    value = getattr(node, name, None)
    if value is None:
        raise ServiceUnavailable(
            f"the {name} service of node {node.node_id} is not running (node state: "
            f"{node.state}); retry when /ready answers 200"
        )
    return value


def sending_router(request: web.Request) -> Any:
    """``node.router``, to send a client's new message; a 503 while this node leaves the
    cluster: the leave waits for the messages it accepted to be handed over, which new
    ones arriving all the time would put off until its drain timeout (the client sends
    through another node, as it does for a node that is not ready)."""
    router = service(request, "router")
    node = request.config_dict[NODE]
    cluster = getattr(node, "cluster", None)
    if cluster is not None and cluster.leaving:
        raise ServiceUnavailable(
            f"node {node.node_id} is leaving the cluster and takes no new messages; "
            f"send through another node"
        )
    return router


def _components(request: web.Request) -> dict[str, Any]:
    components: dict[str, Any] = request.config_dict[OPENAPI]["components"]["schemas"]
    return components


async def body(request: web.Request, schema: str, *, optional: bool = False) -> Any:
    """The JSON body, checked against ``#/components/schemas/<schema>``.

    ``None`` when ``optional`` and the body is empty.
    """
    value = await read_json(request, optional=optional)
    if value is EMPTY:
        return None
    check(value, {"$ref": f"#/components/schemas/{schema}"}, _components(request))
    return value


def query_text(request: web.Request, name: str) -> str | None:
    """The text of query parameter ``name`` (None when absent); given twice is a 400."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ValidationError(f"query parameter {name} is given {len(values)} times; give it once")
    return values[0] if values else None


def query(request: web.Request, name: str, schema: dict[str, Any]) -> Any:
    """Query parameter ``name`` (None when absent), checked and converted per ``schema``."""
    raw = query_text(request, name)
    if raw is None:
        return None
    value: Any = raw
    if schema.get("type") == "integer":
        if not _INTEGER.fullmatch(raw):
            raise ValidationError(f"query parameter {name} must be an integer, not {raw!r}")
        value = int(raw)
    check(value, schema, _components(request), f"query parameter {name}")
    return value


def flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter: ``true`` or ``false`` (absent: false)."""
    raw = query_text(request, name)
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise ValidationError(f"query parameter {name} must be true or false, not {raw!r}")
    return raw == "true"


def path_uuid(request: web.Request, name: str) -> str:
    """Path parameter ``name``, which must be a UUID (400 otherwise), lower-cased."""
    value = request.match_info[name]
    check(
        value,
        {"type": "string", "pattern": UUID_PATTERN, "x-pattern-message": "{where} must be a UUID"},
        {},
        f"{name} {value!r}",
    )
    return value.lower()


#: What a node that does not cluster is told to do instead (409 of :func:`clustered`).
START_A_CLUSTER = (
    "start nodes with `caxton server start --bootstrap` and `--join HOST:PORT` (or "
    "coordination.cluster_enabled = true)"
)


def clustered(request: web.Request, what: str, instead: str = START_A_CLUSTER) -> Any:
    """The node's cluster service; a 409 naming ``what`` needs one (and what to do
    ``instead``) when the node does not cluster."""
    node = request.config_dict[NODE]
    cluster = getattr(node, "cluster", None)
    if cluster is None:
        raise Conflict(
            f"node {node.node_id} is not part of a cluster, so it cannot {what}; {instead}"
        )
    return cluster
