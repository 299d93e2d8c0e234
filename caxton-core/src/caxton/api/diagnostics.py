"""The diagnostic endpoints under ``/api/v1/diagnostics/`` and their part of the OpenAPI
document.

Each asks every reachable node (or the one named by ``node``) through the node it
reaches (:func:`caxton.diagnostics.gather.gather`) and answers the cluster's report
(:mod:`caxton.diagnostics.reports`). ``caxton cluster verify --deep`` and ``--node`` are
parameters of ``GET /api/v1/cluster/verify`` (:func:`deep_verification`).
"""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from caxton.api.common import body, flag, path_uuid, query
from caxton.api.keys import NODE
from caxton.api.openapi import (
    MAX_QUERY_NUMBER,
    UUID_PATTERN,
    integer_schema,
    object_schema,
    operation,
    string_schema,
)
from caxton.api.permissions import requires
from caxton.api.responses import json_response
from caxton.diagnostics import reports
from caxton.diagnostics.dump import archive, secret_values
from caxton.diagnostics.gather import check_member, gather
from caxton.diagnostics.local import MAX_PROFILE_SECONDS, MIN_PROFILE_SECONDS
from caxton.errors import Conflict, NotFound, ValidationError

__all__ = ["deep_verification", "extend_openapi", "routes"]

routes = web.RouteTableDef()

#: ``threshold_ms`` of ``agents slow`` when none is given (the runbook's 100ms).
DEFAULT_THRESHOLD_MS = 100
#: The longest conversation id the trace looks up (a message field's limit).
MAX_CONVERSATION_ID = 255
#: ``last`` of ``trace --error-cascade`` when none is given (the runbook's 5m).
DEFAULT_LAST_SECONDS = 300
#: Longest ``analyze messages`` pattern (a bound on what one regular expression costs).
MAX_PATTERN = 200
_NODE = string_schema(255, description="Only this member (default: every reachable one)")
_BOOLEAN = {"type": "boolean"}


def _node(request: web.Request) -> Any:
    return request.config_dict[NODE]


def _nodes(request: web.Request) -> list[str] | None:
    name = query(request, "node", _NODE)
    return [name] if name is not None else None


def _flag(request: web.Request, name: str, default: bool) -> bool:
    return flag(request, name) if name in request.query else default


@routes.get("/api/v1/diagnostics/performance")
@requires("metrics")
async def diagnostics_performance(request: web.Request) -> web.Response:
    probe = _flag(request, "probe", True)
    gathered = await gather(_node(request), "performance", {"probe": probe}, timeout=60.0)
    return json_response(reports.performance(gathered))


@routes.get("/api/v1/diagnostics/agents")
@requires("metrics")
async def diagnostics_slow_agents(request: web.Request) -> web.Response:
    threshold = query(request, "threshold_ms", _THRESHOLD)
    threshold = DEFAULT_THRESHOLD_MS if threshold is None else threshold
    gathered = await gather(_node(request), "agents", nodes=_nodes(request))
    return json_response(reports.slow_agents(gathered, float(threshold)))


@routes.get("/api/v1/diagnostics/memory")
@requires("metrics")
async def diagnostics_memory(request: web.Request) -> web.Response:
    return json_response(await gather(_node(request), "memory", nodes=_nodes(request)))


@routes.post("/api/v1/diagnostics/memory/gc")
@requires("cluster")
async def diagnostics_gc(request: web.Request) -> web.Response:
    data = await body(request, "MemoryGc", optional=True) or {}
    nodes = [data["node"]] if data.get("node") else None
    arguments = {"aggressive": bool(data.get("aggressive", False))}
    return json_response(await gather(_node(request), "gc", arguments, nodes=nodes))


@routes.get("/api/v1/diagnostics/conversations/{conversation_id}")
@requires("read")
async def diagnostics_trace(request: web.Request) -> web.Response:
    conversation_id = request.match_info["conversation_id"]
    if len(conversation_id) > MAX_CONVERSATION_ID:
        raise ValidationError(
            f"conversation_id is longer than {MAX_CONVERSATION_ID} characters; no "
            f"conversation has such an id"
        )
    gathered = await gather(_node(request), "conversation", {"conversation_id": conversation_id})
    return json_response(reports.trace(gathered, conversation_id))


@routes.get("/api/v1/diagnostics/errors")
@requires("read")
async def diagnostics_errors(request: web.Request) -> web.Response:
    last = query(request, "last", _LAST)
    last = DEFAULT_LAST_SECONDS if last is None else last
    gathered = await gather(_node(request), "errors", {"since": time.time() - last})
    return json_response(reports.error_cascade(gathered, float(last)))


@routes.get("/api/v1/diagnostics/messages")
@requires("read")
async def diagnostics_messages(request: web.Request) -> web.Response:
    """``analyze messages``: the routed messages and error events of the last seconds on
    every node whose text the regular expression ``pattern`` finds."""
    text = query(request, "pattern", _PATTERN)
    if text is None:
        raise ValidationError("query parameter pattern is required (a regular expression)")
    try:
        pattern = re.compile(text)
    except (re.error, OverflowError, RecursionError) as exc:  # a{9999999999}: OverflowError
        raise ValidationError(f"pattern {text!r} is not a regular expression: {exc}") from None
    last = query(request, "last", _LAST)
    last = DEFAULT_LAST_SECONDS if last is None else last
    gathered = await gather(_node(request), "messages", {"since": time.time() - last})
    return json_response(reports.message_patterns(gathered, pattern, float(last)))


@routes.post("/api/v1/diagnostics/profile")
@requires("cluster")
async def diagnostics_profile(request: web.Request) -> web.Response:
    data = await body(request, "ProfileRequest", optional=True) or {}
    node = _node(request)
    recorder = node.diagnostics
    running = recorder.running_profile()
    if running is not None:
        raise Conflict(
            f"profile {running} is still running on node {node.node_id}; "
            f"GET /api/v1/diagnostics/profile/{running} for it, then start another"
        )
    seconds = float(data.get("seconds", 10))
    agent = data.get("agent")
    target = data.get("node") or (_agent_node(node, agent) if agent else None)
    if agent and target is None:
        raise NotFound(f"Agent not found: {agent}")
    if target is not None:
        check_member(node, target)
    nodes = [target] if target else None
    work = gather(
        node, "profile", {"seconds": seconds, "agent": agent}, nodes=nodes, timeout=seconds + 15
    )
    profile_id = recorder.start_profile(work)
    return json_response(
        {"profile_id": profile_id, "status": "running", "seconds": seconds}, status=202
    )


@routes.get("/api/v1/diagnostics/profile/{profile_id}")
@requires("cluster")
async def diagnostics_profile_result(request: web.Request) -> web.Response:
    profile_id = path_uuid(request, "profile_id")
    return json_response(_node(request).diagnostics.profile_result(profile_id))


def _agent_node(node: Any, agent: str) -> str | None:
    """The node running ``agent`` (by name), when this node or the cluster's registry
    knows it."""
    cluster = node.cluster
    if cluster is None:
        return node.node_id if node.agents is not None and agent in node.agents else None
    entries = cluster.registry.lookup(agent)
    return entries[0].node_id if entries else None


@routes.get("/api/v1/diagnostics/config")
@requires("cluster")
async def diagnostics_config(request: web.Request) -> web.Response:
    node = _node(request)
    nodes = _nodes(request) or [node.node_id]
    gathered = await gather(node, "config", nodes=nodes)
    return json_response(gathered["nodes"][0])


@routes.get("/api/v1/diagnostics/analyze")
@requires("metrics")
async def diagnostics_analyze(request: web.Request) -> web.Response:
    return json_response(reports.analyze(await gather(_node(request), "load")))


@routes.get("/api/v1/diagnostics/gossip")
@requires("metrics")
async def diagnostics_gossip(request: web.Request) -> web.Response:
    return json_response(reports.analyze_gossip(await gather(_node(request), "gossip")))


@routes.get("/api/v1/diagnostics/dump")
@requires("cluster")
async def diagnostics_dump(request: web.Request) -> web.Response:
    node = _node(request)
    gathered = await gather(node, "bundle", timeout=30.0)
    data = archive(gathered, node.node_id, secret_values(node.config))
    name = f"caxton-debug-{node.node_id}-{int(time.time())}.tar.gz"
    return web.Response(
        body=data,
        headers={
            "Content-Type": "application/gzip",
            "Content-Disposition": f'attachment; filename="{name}"',
        },
    )


async def deep_verification(node: Any, shallow: dict[str, Any], only: str | None) -> dict[str, Any]:
    """``GET /api/v1/cluster/verify?deep=true`` (or ``node=N``): the membership and
    registry versions (``shallow``) and what the nodes hold, compared."""
    gathered = await gather(node, "holdings", {"integrity": True}, timeout=30.0)
    deep = reports.verify_deep(gathered, only)
    by_node = {n["node_id"]: n for n in deep["nodes"]}
    nodes = []
    for entry in shallow["nodes"]:
        if only is not None and entry["node_id"] != only:
            continue
        extra = by_node.get(entry["node_id"], {})
        problems = [*entry["problems"], *(extra.get("problems") or ())]
        nodes.append(
            {
                **entry,
                "agents": extra.get("agents"),
                "replicas": extra.get("replicas"),
                "integrity": extra.get("integrity"),
                "agrees": not problems,
                "problems": problems,
            }
        )
    return {
        "consistent": all(n["agrees"] for n in nodes),
        "deep": True,
        "replicas_checked": deep["replicas_checked"],
        "nodes": nodes,
    }


# -------------------------------------------------------------------------
# The OpenAPI document
# -------------------------------------------------------------------------

_THRESHOLD = integer_schema(0, MAX_QUERY_NUMBER, "Milliseconds (default 100)")
_LAST = integer_schema(1, 10**9, f"Seconds back (default {DEFAULT_LAST_SECONDS})")
_PATTERN = string_schema(MAX_PATTERN, description="A regular expression")


def _parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_NODE_PARAMETER = _parameter("node", _NODE, "Only this member")


def _report(*required: str) -> dict[str, Any]:
    return object_schema({key: {} for key in required}, required, closed=False)


def _schemas() -> dict[str, Any]:
    return {
        "Performance": _report("targets", "passed", "throughput_per_second", "nodes"),
        "SlowAgents": _report("threshold_ms", "agents", "unreachable"),
        "NodeReports": _report("nodes", "unreachable"),
        "ConversationTrace": _report("conversation_id", "found", "messages", "unreachable"),
        "ErrorCascade": _report("last_seconds", "root", "cascade", "events", "unreachable"),
        "MessagePatterns": _report(
            "pattern", "last_seconds", "scanned", "matched", "by_kind", "matches", "unreachable"
        ),
        "NodeConfig": _report("node_id", "config", "defaults", "sources"),
        "ClusterAnalysis": _report("agents_per_node", "hot_agents", "suggestions", "nodes"),
        "GossipAnalysis": _report("nodes", "suggestions", "unreachable"),
        "ProfileStarted": _report("profile_id", "status", "seconds"),
        "ProfileResult": object_schema(
            {"profile_id": {"type": "string"}, "status": {"enum": ["running", "done", "failed"]}},
            ("profile_id", "status"),
            closed=False,
        ),
        "MemoryGc": object_schema(
            {
                "aggressive": {"type": "boolean"},
                "node": string_schema(255),
            }
        ),
        "ProfileRequest": object_schema(
            {
                "seconds": {
                    "type": "number",
                    "minimum": MIN_PROFILE_SECONDS,
                    "maximum": MAX_PROFILE_SECONDS,
                },
                "agent": string_schema(255),
                "node": string_schema(255),
            }
        ),
    }


def _paths() -> dict[str, Any]:
    node_errors = (400, 404, 502, 503, 504)
    dump = operation(
        "debugDump",
        "A support bundle of every reachable node (gzip-compressed tar; secrets masked)",
        "cluster",
        {200: None},
        tag="diagnostics",
    )
    dump["responses"]["200"]["content"] = {
        "application/gzip": {"schema": {"type": "string", "format": "binary"}}
    }
    return {
        "/api/v1/diagnostics/performance": {
            "get": operation(
                "clusterPerformance",
                "The product documents' targets table, measured on every node",
                "metrics",
                {200: "Performance"},
                (400,),
                parameters=[_parameter("probe", _BOOLEAN, "Run the routing probe (default)")],
                tag="diagnostics",
            )
        },
        "/api/v1/diagnostics/agents": {
            "get": operation(
                "slowAgents",
                "Agents whose recent P99 handling time reaches threshold_ms",
                "metrics",
                {200: "SlowAgents"},
                node_errors,
                parameters=[
                    _parameter("threshold_ms", _THRESHOLD, "Slowest P99 to list"),
                    _NODE_PARAMETER,
                ],
                tag="diagnostics",
            )
        },
        "/api/v1/diagnostics/memory": {
            "get": operation(
                "memoryStats",
                "Memory used per node against its limit, and per agent",
                "metrics",
                {200: "NodeReports"},
                node_errors,
                parameters=[_NODE_PARAMETER],
                tag="diagnostics",
            )
        },
        "/api/v1/diagnostics/memory/gc": {
            "post": operation(
                "memoryGc",
                "Collect garbage on every node (aggressive: free SQLite caches and heap too)",
                "cluster",
                {200: "NodeReports"},
                (*node_errors, 408, 413),
                body="MemoryGc",
                body_required=False,
                tag="diagnostics",
            )
        },
        "/api/v1/diagnostics/conversations/{conversation_id}": {
            "get": operation(
                "traceConversation",
                "A conversation's messages across nodes in order, with timings",
                "read",
                {200: "ConversationTrace"},
                (400,),
                parameters=[
                    {
                        "name": "conversation_id",
                        "in": "path",
                        "required": True,
                        "description": "The conversation",
                        "schema": string_schema(MAX_CONVERSATION_ID),
                    }
                ],
                tag="diagnostics",
            )
        },
        "/api/v1/diagnostics/errors": {
            "get": operation(
                "errorCascade",
                "Crashes, dead letters and failure answers of the last seconds, in order",
                "read",
                {200: "ErrorCascade"},
                (400,),
                parameters=[_parameter("last", _LAST, "Seconds back")],
                tag="diagnostics",
            )
        },
        "/api/v1/diagnostics/messages": {
            "get": operation(
                "analyzeMessages",
                "The routed messages and error events of the last seconds, on every node, "
                "that a regular expression finds (counts by kind, agent and node, and the "
                "newest matches)",
                "read",
                {200: "MessagePatterns"},
                (400,),
                parameters=[
                    {**_parameter("pattern", _PATTERN, "A regular expression"), "required": True},
                    _parameter("last", _LAST, "Seconds back"),
                ],
                tag="diagnostics",
            )
        },
        "/api/v1/diagnostics/profile": {
            "post": operation(
                "startProfile",
                "Start sampling a node's event loop for some seconds (and each agent's "
                "work meanwhile); one profile at a time",
                "cluster",
                {202: "ProfileStarted"},
                (*node_errors, 408, 409, 413),
                body="ProfileRequest",
                body_required=False,
                tag="diagnostics",
            )
        },
        "/api/v1/diagnostics/profile/{profile_id}": {
            "get": operation(
                "profileResult",
                "A profile: running, failed, or done with each node's report",
                "cluster",
                {200: "ProfileResult"},
                (400, 404),
                parameters=[
                    {
                        "name": "profile_id",
                        "in": "path",
                        "required": True,
                        "description": "The id startProfile answered",
                        "schema": {"type": "string", "format": "uuid", "pattern": UUID_PATTERN},
                    }
                ],
                tag="diagnostics",
            )
        },
        "/api/v1/diagnostics/config": {
            "get": operation(
                "nodeConfig",
                "A node's running configuration (secrets masked), its defaults and sources",
                "cluster",
                {200: "NodeConfig"},
                node_errors,
                parameters=[_NODE_PARAMETER],
                tag="diagnostics",
            )
        },
        "/api/v1/diagnostics/analyze": {
            "get": operation(
                "clusterAnalyze",
                "Imbalance, hot agents, queues and gossip load, with suggestions",
                "metrics",
                {200: "ClusterAnalysis"},
                tag="diagnostics",
            )
        },
        "/api/v1/diagnostics/gossip": {
            "get": operation(
                "clusterAnalyzeGossip",
                "Gossip traffic, probe health and convergence per node, with suggestions",
                "metrics",
                {200: "GossipAnalysis"},
                tag="diagnostics",
            )
        },
        "/api/v1/diagnostics/dump": {"get": dump},
    }


def extend_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the diagnostic operations and schemas to ``document``; return it."""
    document["paths"].update(_paths())
    document["components"]["schemas"].update(_schemas())
    return document
