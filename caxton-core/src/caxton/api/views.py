"""``GET /api/v1/cluster/latency``: every node's routing-latency histograms, for the
console's latency chart (:mod:`caxton.cluster.views`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from caxton.api.keys import NODE
from caxton.api.openapi import object_schema, operation, schema_ref
from caxton.api.permissions import requires
from caxton.api.responses import json_response
from caxton.cluster.views import gather

__all__ = ["extend_openapi", "routes"]

routes = web.RouteTableDef()


@routes.get("/api/v1/cluster/latency")
@requires("metrics")
async def cluster_latency(request: web.Request) -> web.Response:
    """Each reachable node's routing-latency histograms (cumulative since it started, at
    the node's ``observability.histogram_buckets``, as its /metrics has them) and its
    count of messages delivered or forwarded; a client takes the difference between two
    readings for the latency of that interval."""
    answers, failed = await gather(request.config_dict[NODE], "latency")
    nodes = [{"node_id": node_id, **answer} for node_id, answer in sorted(answers.items())]
    return json_response({"nodes": nodes, "failed": failed})


def extend_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the latency operation and its schemas to ``document``; return it."""
    document["paths"]["/api/v1/cluster/latency"] = {
        "get": operation(
            "clusterLatency",
            "Every reachable node's routing-latency histograms and message count",
            "metrics",
            {200: "ClusterLatency"},
            (503,),
            tag="cluster",
        )
    }
    histogram = object_schema(
        {
            "buckets": {
                "type": "array",
                "description": "[upper bound in seconds (null: +Inf), cumulative count]",
                "items": {"type": "array", "minItems": 2, "maxItems": 2},
            },
            "count": {"type": "integer"},
            "sum": {"type": "number"},
        },
        ("buckets", "count", "sum"),
    )
    document["components"]["schemas"].update(
        {
            "LatencyHistogram": histogram,
            "NodeLatency": object_schema(
                {
                    "node_id": {"type": "string"},
                    "at": {"type": "number", "description": "Unix time of the reading"},
                    "routing": schema_ref("LatencyHistogram"),
                    "remote_routing": schema_ref("LatencyHistogram"),
                    "messages": {"type": "integer", "description": "Delivered or forwarded"},
                },
                ("node_id", "at", "routing", "remote_routing", "messages"),
            ),
            "ClusterLatency": object_schema(
                {
                    "nodes": {"type": "array", "items": schema_ref("NodeLatency")},
                    "failed": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                ("nodes", "failed"),
            ),
        }
    )
    return document
