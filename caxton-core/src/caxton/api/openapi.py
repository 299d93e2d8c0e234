"""The OpenAPI 3 document of the REST API, served at ``/api/v1/openapi.json``.

The document is built per node (the resource-limit maxima are that node's ceilings)
and it is also what the server validates requests with (:mod:`caxton.api.validation`),
so what it says is valid is what the server accepts. A test walks the router and this
document and fails if either has an operation the other lacks.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from caxton import __version__
from caxton.agents.model import MAX_NAME_LENGTH, AgentState
from caxton.api.permissions import PERMISSIONS, PUBLIC
from caxton.drivers.sandbox import ResourceLimits
from caxton.messaging import Performative, Priority
from caxton.messaging.message import MAX_FIELD_LENGTH

if TYPE_CHECKING:
    from caxton.node import Node

__all__ = [
    "AUDIT_QUERY",
    "CONVERSATION_QUERY",
    "DEAD_LETTER_QUERY",
    "DRAIN_TIMEOUT_SCHEMA",
    "LIST_QUERY",
    "MAX_WAIT_MS",
    "SCOPE_SCHEMA",
    "STATE_SCHEMA",
    "build_openapi",
    "schema_ref",
    "with_tags",
]

#: Longest a client may ask the API to wait (reply, drain, contract-net deadline), ms.
MAX_WAIT_MS = 3_600_000
#: Most receivers or participants in one request.
MAX_RECIPIENTS = 1000
#: The largest number a numeric query parameter (a Unix time, a sequence number) takes.
MAX_QUERY_NUMBER = 10**15 - 1

_CONTROL = r"\x00-\x1f\x7f-\x9f"
#: An agent name: 1-64 characters once blanks around it are trimmed, no control
#: characters. (Agents themselves apply the same rule: caxton.agents.validate_name.)
NAME_PATTERN = (
    rf"^[ \t\r\n]*[^ {_CONTROL}]"
    rf"(?:[^{_CONTROL}]{{0,{MAX_NAME_LENGTH - 2}}}[^ {_CONTROL}])?[ \t\r\n]*$"
)
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

#: Schema of an agent state (the ``state`` filter of the agent list, ``Agent.state``).
STATE_SCHEMA: dict[str, Any] = {"type": "string", "enum": [s.value for s in AgentState]}
#: The query parameters of ``GET /api/v1/audit``, by name.
AUDIT_QUERY: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 10_000},
    "identity": {"type": "string", "minLength": 1, "maxLength": 256},
    "action": {"type": "string", "minLength": 1, "maxLength": 256},
    "result": {"type": "string", "enum": ["success", "failure", "denied", "unauthenticated"]},
    "since": {"type": "number", "minimum": 0},
}
#: ``?scope=``: this node (the default) or every reachable node of the cluster.
SCOPE_SCHEMA: dict[str, Any] = {
    "type": "string",
    "enum": ["local", "cluster"],
    "description": "local (the default): this node's; cluster: every reachable node's",
}
#: Query parameters of ``GET /api/v1/conversations``.
CONVERSATION_QUERY: dict[str, dict[str, Any]] = {
    "participant": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_FIELD_LENGTH,
        "description": "Only the conversations this agent or client took part in",
    },
    "limit": {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "description": "At most this many (default 100)",
    },
    "scope": SCOPE_SCHEMA,
}
#: The query parameters of ``GET /api/v1/agents``, by name (each with a description).
LIST_QUERY: dict[str, dict[str, Any]] = {
    "scope": {
        "type": "string",
        "enum": ["local", "cluster"],
        "description": "local (the default): this node's agents; cluster: every node's",
    },
    "name": {
        "$ref": "#/components/schemas/AgentName",
        "description": "Only agents whose name matches this glob (*, ?, [seq])",
    },
    "state": {**STATE_SCHEMA, "description": "Only agents in this state"},
    "node": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "description": "Only agents on this node",
    },
    "limit": {
        "type": "integer",
        "minimum": 1,
        "maximum": 10_000,
        "description": "At most this many agents (X-Total-Count has how many matched)",
    },
    "offset": {
        "type": "integer",
        "minimum": 0,
        "maximum": 1_000_000,
        "description": "Skip this many matching agents first",
    },
}
#: Query parameters of ``GET /api/v1/queues/dead-letters``.
DEAD_LETTER_QUERY: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 10_000},
    "message_id": {"type": "string", "minLength": 1, "maxLength": 256},
    "receiver": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_FIELD_LENGTH,
        "description": "Only the dead letters to this receiver",
    },
    "scope": SCOPE_SCHEMA,
}
#: Schema of ``?drain_timeout_ms=`` of the stop action.
DRAIN_TIMEOUT_SCHEMA: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_MS}

LIMIT_DESCRIPTIONS = {
    "max_memory_bytes": "Linear memory an instance may grow to, bytes",
    "max_fuel": "Fuel (wasm instructions, roughly) per delivery",
    "max_execution_time_ms": "Wall-clock time per delivery, ms",
    "max_table_elements": "Elements of each wasm table",
    "max_instances": "Instances of the module (pool)",
    "max_message_bytes": "Largest message the agent may send or receive, bytes",
}
#: The earlier runtime's name of ``max_execution_time_ms``.
LIMIT_ALIASES = {"max_cpu_millis": "max_execution_time_ms"}


def schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def string_schema(max_length: int = MAX_FIELD_LENGTH, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length, **extra}


def integer_schema(minimum: int, maximum: int, description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum, "maximum": maximum}
    if description:
        schema["description"] = description
    return schema


def object_schema(
    properties: dict[str, Any], required: tuple[str, ...] = (), *, closed: bool = True, **extra: Any
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    schema.update(extra)
    return schema


def _schemas(ceiling: ResourceLimits) -> dict[str, Any]:
    ceilings = dataclasses.asdict(ceiling)
    limit_inputs = {
        key: {
            **integer_schema(1, ceilings[key], LIMIT_DESCRIPTIONS[key]),
            "x-maximum-hint": "this node's ceiling (see runtime.* in the config)",
        }
        for key in LIMIT_DESCRIPTIONS
    }
    for alias, key in LIMIT_ALIASES.items():
        limit_inputs[alias] = {
            **limit_inputs[key],
            "description": f"Alias of {key} (the earlier runtime's name)",
        }
    name = {
        "type": "string",
        "minLength": 1,
        "maxLength": 256,
        "pattern": NAME_PATTERN,
        "x-pattern-message": (
            "{where} must be 1-64 characters after trimming blanks, without control characters"
        ),
        "description": "1-64 characters after trimming blanks; no control characters",
        "example": "production-agent-1",
    }
    agent_name = string_schema()
    message_fields: dict[str, Any] = {
        "performative": {"type": "string", "enum": sorted({p.value for p in Performative})},
        "sender": string_schema(description="Default: a temporary client-... endpoint"),
        "receiver": agent_name,
        "receivers": {
            "type": "array",
            "items": agent_name,
            "minItems": 1,
            "maxItems": MAX_RECIPIENTS,
        },
        "content": {"description": "Any JSON value"},
        "language": string_schema(),
        "ontology": string_schema(),
        "protocol": string_schema(),
        "conversation_id": string_schema(),
        "reply_with": string_schema(),
        "in_reply_to": string_schema(),
        "reply_by": {"type": "number", "minimum": 0, "description": "Unix time, seconds"},
        "message_id": string_schema(),
        "priority": {"type": "string", "enum": [p.name.lower() for p in Priority]},
        "traceparent": string_schema(
            description="W3C trace context; set by nodes that trace (docs/observability.md)"
        ),
    }
    message_out = {
        **message_fields,
        "receiver": {"type": "string"},
        "sender": {"type": "string"},
        "performative": {"type": "string"},
        "priority": {"type": "string"},
        "message_id": {"type": "string"},
    }
    for key in ("language", "ontology", "protocol", "conversation_id", "reply_with"):
        message_out[key] = {"type": "string"}
    message_out["in_reply_to"] = {"type": "string"}
    message_out["traceparent"] = {"type": "string"}
    message_out["receivers"] = {"type": "array", "items": {"type": "string"}}
    return {
        "Error": object_schema(
            {
                "error": {"type": "string", "description": "Short summary"},
                "details": {"type": "string", "description": "What happened and what to do"},
            },
            ("error", "details"),
        ),
        "Health": object_schema({"status": {"type": "string", "enum": ["healthy"]}}, ("status",)),
        "Liveness": object_schema({"status": {"type": "string", "enum": ["alive"]}}, ("status",)),
        "Readiness": object_schema(
            {
                "status": {"type": "string", "enum": ["ready", "not-ready"]},
                "state": {"type": "string"},
                "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
            },
            ("status", "state", "checks"),
        ),
        "AgentName": name,
        "ResourceLimitsInput": object_schema(limit_inputs),
        "ResourceLimits": object_schema(
            {key: {"type": "integer", "minimum": 1} for key in LIMIT_DESCRIPTIONS},
            tuple(LIMIT_DESCRIPTIONS),
            closed=False,
        ),
        "DeployAgent": object_schema(
            {
                "name": schema_ref("AgentName"),
                "wasm_module": {
                    "type": "string",
                    "format": "byte",
                    "minLength": 1,
                    "description": "The compiled module, base64",
                    "example": "AGFzbQEAAAA=",
                },
                "resource_limits": schema_ref("ResourceLimitsInput"),
                "start": {"type": "boolean", "description": "Start it at once (default true)"},
                "placement_strategy": string_schema(
                    64, description="Placement driver to rank nodes"
                ),
                "prefer_nodes": {
                    "type": "array",
                    "items": string_schema(),
                    "maxItems": 64,
                    "description": "Nodes to favour, best first",
                },
                "target_node": string_schema(description="Deploy on exactly this node"),
                "replace": {
                    "type": "boolean",
                    "description": "Remove the agent of this name first, wherever it runs "
                    "(needs the remove permission too); without it a name that runs anywhere "
                    "in the cluster is refused with 409",
                },
                "priority": {
                    "type": "string",
                    "enum": ["low", "normal", "high", "critical"],
                    "description": "Priority class: low ones are suspended or shed first "
                    "in an emergency (default normal)",
                },
                "allowed_senders": {
                    "type": "array",
                    "items": string_schema(256),
                    "maxItems": 256,
                    "description": (
                        "Agent names or patterns (client-* for REST clients) allowed to "
                        "message this agent; others get refuse. Default: "
                        "security.agent_policy, else everyone"
                    ),
                },
            },
            ("name", "wasm_module"),
            example={
                "name": "production-agent-1",
                "wasm_module": "AGFzbQEAAAA=",
                "resource_limits": {
                    "max_memory_bytes": 10485760,
                    "max_fuel": 1000000,
                    "max_execution_time_ms": 5000,
                },
            },
        ),
        "MoveAgent": object_schema(
            {"to": string_schema(255, description="The node to move the agent to")},
            ("to",),
        ),
        "MovedAgent": object_schema(
            {
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string"},
                "node_id": {"type": "string", "description": "Where it runs now"},
                "moved_from": {"type": "string"},
                "generation": {"type": "integer", "description": "Its placement generation"},
                "seconds": {"type": "number", "description": "How long the move took"},
            },
            ("id", "name", "node_id", "moved_from"),
            closed=False,
        ),
        "UpdateAgent": object_schema(
            {
                "wasm_module": {"type": "string", "format": "byte", "minLength": 1},
                "resource_limits": schema_ref("ResourceLimitsInput"),
            },
            minProperties=1,
        ),
        "Agent": object_schema(
            {
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string"},
                "state": STATE_SCHEMA,
                "node_id": {"type": "string"},
                "module_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "limits": schema_ref("ResourceLimits"),
                "capabilities": {"type": "object"},
                "restart_policy": {"type": "object"},
                "counters": {"type": "object", "additionalProperties": {"type": "integer"}},
                "last_error": {"type": "string", "nullable": True},
                "priority": {"type": "string"},
                "created_at": {"type": "number"},
                "updated_at": {"type": "number"},
                "replication": object_schema(
                    {
                        "durability": {"type": "string", "enum": ["quorum", "local", "async"]},
                        "generation": {"type": "integer"},
                        "holders": {"type": "array", "items": {"type": "string"}},
                        "replicated": {"type": "boolean"},
                        "acknowledged": {
                            "type": "object",
                            "additionalProperties": {"type": "integer"},
                        },
                    },
                    ("durability", "generation", "holders", "replicated"),
                    description="On a clustered node: where the agent is replicated "
                    "(holders: the other nodes of its replica set, in takeover order; "
                    "replicated: every holder confirmed its replica; acknowledged: the "
                    "state version each holder confirmed; generation: the fencing "
                    "generation its owner writes with)",
                ),
            },
            ("id", "name", "state", "node_id", "module_sha256", "limits", "created_at"),
            closed=False,
        ),
        "AgentList": {"type": "array", "items": schema_ref("Agent")},
        "SendMessage": object_schema(
            {
                **message_fields,
                "wait_ms": integer_schema(
                    0, MAX_WAIT_MS, "Wait this long for the reply (0: do not wait)"
                ),
            },
            ("performative",),
            anyOf=[{"required": ["receiver"]}, {"required": ["receivers"]}],
        ),
        "Message": object_schema(
            message_out,
            ("performative", "sender", "receiver", "message_id", "priority"),
            closed=False,
        ),
        "SendResult": object_schema(
            {
                "status": {"type": "string", "enum": ["accepted", "replied"]},
                "message_id": {"type": "string"},
                "conversation_id": {"type": "string", "nullable": True},
                "sender": {"type": "string"},
                "reply": schema_ref("Message"),
            },
            ("status", "message_id", "sender"),
            closed=False,
        ),
        "Conversation": object_schema(
            {
                "conversation_id": {"type": "string"},
                "protocol": {"type": "string", "nullable": True},
                "initiator": {"type": "string"},
                "participants": {"type": "array", "items": {"type": "string"}},
                "state": {"type": "string"},
                "roles": {"type": "object", "additionalProperties": {"type": "string"}},
                "message_count": {"type": "integer"},
                "started_at": {"type": "number"},
                "updated_at": {"type": "number"},
                "expires_at": {"type": "number"},
                "messages": {
                    "type": "array",
                    "description": "Its first messages as the node(s) saw them, oldest first",
                    "items": object_schema(
                        {
                            "at": {"type": "number"},
                            "sender": {"type": "string"},
                            "receiver": {"type": "string"},
                            "performative": {"type": "string"},
                            "message_id": {"type": "string"},
                            "node_id": {"type": "string"},
                        },
                        ("at", "sender", "receiver", "performative", "message_id"),
                        closed=False,
                    ),
                },
            },
            ("conversation_id", "state", "participants"),
            closed=False,
        ),
        "ConversationList": object_schema(
            {
                "conversations": {"type": "array", "items": schema_ref("Conversation")},
                "failed": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "With scope=cluster: the nodes that did not answer, and why",
                },
            },
            ("conversations",),
        ),
        "CreateTask": object_schema(
            {
                "content": {"description": "The task, any JSON value, sent in the cfp"},
                "participants": {
                    "type": "array",
                    "items": agent_name,
                    "minItems": 1,
                    "maxItems": MAX_RECIPIENTS,
                    "uniqueItems": True,
                },
                "initiator": string_schema(description="Default: a temporary client-... endpoint"),
                "deadline_ms": integer_schema(1, MAX_WAIT_MS, "How long bids are collected"),
                "result_timeout_ms": integer_schema(
                    1, MAX_WAIT_MS, "How long the winner has to report (default: deadline_ms)"
                ),
                "language": string_schema(),
                "ontology": string_schema(),
            },
            ("content", "participants"),
        ),
        "Task": object_schema(
            {
                "id": {"type": "string", "format": "uuid"},
                "state": {
                    "type": "string",
                    "enum": ["created", "distributing", "awarded", "no-winner", "failed"],
                },
                "initiator": {"type": "string"},
                "participants": {"type": "array", "items": {"type": "string"}},
                "content": {},
                "deadline_ms": {"type": "integer"},
                "created_at": {"type": "number"},
                "conversation_id": {"type": "string", "nullable": True},
                "winner": {"type": "string", "nullable": True},
                "proposals": {"type": "object", "additionalProperties": schema_ref("Message")},
                "refusals": {"type": "object", "additionalProperties": schema_ref("Message")},
                "no_answer": {"type": "array", "items": {"type": "string"}},
                "result": {**schema_ref("Message"), "nullable": True},
                "error": {"type": "string", "nullable": True},
            },
            ("id", "state", "initiator", "participants", "deadline_ms", "created_at"),
            closed=False,
        ),
        "QueueStats": object_schema(
            {
                "agents": {"type": "object", "additionalProperties": {"type": "object"}},
                "priorities": {"type": "object", "additionalProperties": {"type": "integer"}},
                "dead_letters": {"type": "integer", "minimum": 0},
                "totals": {"type": "object"},
            },
            ("agents", "priorities", "dead_letters"),
            closed=False,
        ),
        "DeadLetter": object_schema(
            {
                "node_id": {"type": "string", "description": "With scope=cluster: its node"},
                "message_id": {"type": "string", "nullable": True},
                "receiver": {"type": "string", "nullable": True},
                "reason": {"type": "string"},
                "at": {"type": "number"},
                "message": {"type": "object"},
            },
            ("message_id", "receiver", "reason", "at", "message"),
            closed=False,
        ),
        "DeadLetters": object_schema(
            {
                "dead_letters": {"type": "array", "items": schema_ref("DeadLetter")},
                "failed": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            ("dead_letters",),
            closed=False,
        ),
        "Drain": object_schema({"timeout_ms": integer_schema(0, MAX_WAIT_MS, "Default 60000")}),
        "DrainResult": object_schema(
            {
                "drained": {"type": "boolean"},
                "remaining": {"type": "integer", "minimum": 0},
                "timeout_ms": {"type": "integer"},
            },
            ("drained", "remaining", "timeout_ms"),
            closed=False,
        ),
        "NodeResources": object_schema(
            {
                "node_id": {"type": "string"},
                "cpu_percent": {"type": "number", "minimum": 0},
                "cpu_count": {"type": "integer", "minimum": 1},
                "load_average": {"type": "array", "items": {"type": "number"}},
                "memory_rss_bytes": {"type": "integer", "minimum": 0},
                "memory_total_bytes": {"type": "integer", "minimum": 0},
                "agents": {"type": "integer", "minimum": 0},
                "agents_by_state": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                },
                "max_agents": {"type": "integer"},
                "uptime_seconds": {"type": "number", "minimum": 0},
            },
            ("node_id", "cpu_percent", "memory_rss_bytes", "agents"),
            closed=False,
        ),
        "Resources": object_schema(
            {"nodes": {"type": "array", "items": schema_ref("NodeResources")}},
            ("nodes",),
            closed=False,
        ),
        "EmergencyStop": object_schema(
            {
                "all_agents": {"type": "boolean", "enum": [True]},
                "cluster": {"type": "boolean", "description": "Every reachable node"},
                "preserve_state": {"type": "boolean"},
                "dump_to": string_schema(
                    4096,
                    description="With preserve_state: write the agents' state here first "
                    "(a directory on each node's host)",
                ),
            },
            ("all_agents",),
        ),
        "EmergencyStopResult": object_schema(
            {
                "stopped": {"type": "integer", "minimum": 0},
                "nodes": {"type": "object", "description": "node id -> what it did"},
                "failed": {"type": "object", "description": "node id -> why it did not"},
            },
            ("stopped",),
            closed=False,
        ),
        "AuditEntry": object_schema(
            {
                "time": {"type": "number"},
                "identity": {"type": "string", "nullable": True},
                "action": {"type": "string"},
                "target": {"type": "string", "nullable": True},
                "result": AUDIT_QUERY["result"],
                "status": {"type": "integer", "nullable": True},
                "source": {"type": "string", "nullable": True},
                "request_id": {"type": "string", "nullable": True},
                "details": {"type": "string"},
            },
            ("time", "identity", "action", "target", "result", "source", "request_id"),
            closed=False,
        ),
        "AuditLog": object_schema(
            {"entries": {"type": "array", "items": schema_ref("AuditEntry")}},
            ("entries",),
            closed=False,
        ),
    }


_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No content",
    400: "Invalid request (see details)",
    401: "No valid credentials (with security.auth_enabled)",
    403: "The caller's role lacks this operation's permission",
    404: "Not found",
    408: "The request body arrived too slowly",
    409: "Conflict with the current state",
    413: "Request body too large",
    422: "The content cannot be processed: a damaged or mismatched backup (see details)",
    429: "Rate limited: retry after Retry-After seconds",
    502: "Another node or a backup destination failed (see details)",
    503: "Not available now",
    504: "No reply in time",
}
_RATE_HEADERS = {
    "X-RateLimit-Limit": {"schema": {"type": "integer"}, "description": "Bucket size"},
    "X-RateLimit-Remaining": {"schema": {"type": "integer"}, "description": "Tokens left"},
    "X-RateLimit-Reset": {
        "schema": {"type": "integer"},
        "description": "Seconds until the bucket is full",
    },
}


def _responses(
    ok: dict[int, str | None], errors: tuple[int, ...], links: dict[str, Any] | None = None
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, schema in ok.items():
        entry: dict[str, Any] = {"description": _STATUS_TEXT[status]}
        if schema is not None:
            entry["content"] = {"application/json": {"schema": schema_ref(schema)}}
        if links:
            entry["links"] = links
        responses[str(status)] = entry
    for status in (*errors, 429):
        entry = {
            "description": _STATUS_TEXT[status],
            "content": {"application/json": {"schema": schema_ref("Error")}},
        }
        if status == 429:
            entry["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"},
                **_RATE_HEADERS,
            }
        responses[str(status)] = entry
    return responses


def operation(
    operation_id: str,
    summary: str,
    permission: str,
    ok: dict[int, str | None],
    errors: tuple[int, ...] = (),
    *,
    body: str | None = None,
    body_required: bool = True,
    parameters: list[dict[str, Any]] | None = None,
    tag: str = "agents",
    links: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if permission != PUBLIC:
        errors = (*errors, 401, 403)
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "x-permission": permission,
        "responses": _responses(ok, errors, links),
    }
    if permission != PUBLIC:
        operation["description"] = f"Permission: `{permission}` ({PERMISSIONS[permission]})."
    else:
        operation["security"] = []
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": schema_ref(body)}},
        }
    return operation


def _links(parameter: str, source: str, *operation_ids: str) -> dict[str, Any]:
    """OpenAPI links: ``source`` (a runtime expression) feeds ``parameter`` of each."""
    return {
        operation_id[0].upper() + operation_id[1:]: {
            "operationId": operation_id,
            "parameters": {parameter: source},
        }
        for operation_id in operation_ids
    }


def query_parameters(schemas: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Optional query parameters, one per ``name: schema`` (a ``description`` in the
    schema describes the parameter)."""
    parameters = []
    for name, schema in schemas.items():
        parameter = {"name": name, "in": "query", "required": False}
        if "description" in schema:
            parameter["description"] = schema["description"]
        parameter["schema"] = {k: v for k, v in schema.items() if k != "description"}
        parameters.append(parameter)
    return parameters


def path_id(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "format": "uuid", "pattern": UUID_PATTERN},
    }


#: Errors any operation that reads a JSON body may answer.
_BODY_ERRORS = (400, 408, 413)


def _paths() -> dict[str, Any]:
    agent_id = path_id("agent_id", "The agent's id (a UUID, as returned by deploy)")
    task_id = path_id("task_id", "The task's id")
    lifecycle = {
        action: {
            "post": operation(
                f"{action}Agent",
                f"{action.capitalize()} the agent",
                "update",
                {200: "Agent"},
                (400, 404, 409, 503),
                parameters=[agent_id]
                + (
                    [
                        {
                            "name": "drain_timeout_ms",
                            "in": "query",
                            "required": False,
                            "description": "Let in-flight conversations finish first (ms)",
                            "schema": DRAIN_TIMEOUT_SCHEMA,
                        }
                    ]
                    if action == "stop"
                    else []
                ),
            )
        }
        for action in ("start", "stop", "suspend", "resume")
    }
    return {
        "/health": {
            "get": operation("liveness", "Liveness", PUBLIC, {200: "Liveness"}, tag="health")
        },
        "/ready": {
            "get": operation(
                "readiness",
                "Readiness: state store open, plugins started, cluster joined when asked",
                PUBLIC,
                {200: "Readiness"},
                (503,),
                tag="health",
            )
        },
        "/api/v1/health": {
            "get": operation("health", "API health", PUBLIC, {200: "Health"}, tag="health")
        },
        "/api/v1/openapi.json": {
            "get": {
                **operation("openapi", "This document", PUBLIC, {200: None}, tag="health"),
            }
        },
        "/api/v1/agents": {
            "get": operation(
                "listAgents",
                "List agents",
                "read",
                {200: "AgentList"},
                (400,),
                parameters=query_parameters(LIST_QUERY),
            ),
            "post": operation(
                "deployAgent",
                "Deploy an agent",
                "deploy",
                {201: "Agent"},
                (*_BODY_ERRORS, 409, 503),
                body="DeployAgent",
                links=_links(
                    "agent_id",
                    "$response.body#/id",
                    "getAgent",
                    "updateAgent",
                    "startAgent",
                    "stopAgent",
                    "suspendAgent",
                    "resumeAgent",
                    "removeAgent",
                ),
            ),
        },
        "/api/v1/agents/{agent_id}": {
            "get": operation(
                "getAgent",
                "Get one agent",
                "read",
                {200: "Agent"},
                (400, 404),
                parameters=[agent_id],
            ),
            "put": operation(
                "updateAgent",
                "Replace the module and/or limits (hot swap: same id, name and state)",
                "update",
                {200: "Agent"},
                (*_BODY_ERRORS, 404, 409, 503),
                body="UpdateAgent",
                parameters=[agent_id],
            ),
            "delete": operation(
                "removeAgent",
                "Stop and remove the agent",
                "remove",
                {204: None},
                (400, 404, 503),
                parameters=[agent_id],
            ),
        },
        "/api/v1/agents/{agent_id}/logs": {
            "get": operation(
                "agentLogs",
                "The agent's own log lines, oldest first, from its node "
                "(follow=true streams them as JSON lines; not described here)",
                "read",
                {200: None},
                (400, 404),
                parameters=[
                    agent_id,
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": "Only lines logged at or after this Unix time",
                        "schema": {"type": "number", "minimum": 0, "maximum": MAX_QUERY_NUMBER},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "description": "Only lines after this sequence number",
                        "schema": integer_schema(0, MAX_QUERY_NUMBER),
                    },
                ],
            )
        },
        **{f"/api/v1/agents/{{agent_id}}/{action}": ops for action, ops in lifecycle.items()},
        "/api/v1/agents/{agent_id}/move": {
            "post": operation(
                "moveAgent",
                "Move the running agent to another node (live migration, a fenced takeover)",
                "update",
                {200: "MovedAgent"},
                (*_BODY_ERRORS, 404, 409, 503),
                body="MoveAgent",
                parameters=[agent_id],
            )
        },
        "/api/v1/messages": {
            "post": operation(
                "sendMessage",
                "Send a FIPA-ACL message; with wait_ms, wait for the reply",
                "send",
                {200: "SendResult", 202: "SendResult"},
                (*_BODY_ERRORS, 404, 503, 504),
                body="SendMessage",
                tag="messages",
            )
        },
        "/api/v1/conversations": {
            "get": operation(
                "listConversations",
                "The conversations the router knows, most recently active first",
                "read",
                {200: "ConversationList"},
                (400, 503),
                parameters=query_parameters(CONVERSATION_QUERY),
                tag="messages",
            )
        },
        "/api/v1/conversations/{conversation_id}": {
            "get": operation(
                "getConversation",
                "What the router knows of a conversation, with its first messages",
                "read",
                {200: "Conversation"},
                (400, 404, 503),
                parameters=[
                    {
                        "name": "conversation_id",
                        "in": "path",
                        "required": True,
                        "schema": string_schema(),
                    },
                    *query_parameters({"scope": SCOPE_SCHEMA}),
                ],
                tag="messages",
            )
        },
        "/api/v1/tasks": {
            "post": operation(
                "createTask",
                "Create a contract-net task (distribute it to run the call for proposals)",
                "send",
                {201: "Task"},
                _BODY_ERRORS,
                body="CreateTask",
                tag="messages",
                links=_links("task_id", "$response.body#/id", "getTask", "distributeTask"),
            )
        },
        "/api/v1/tasks/{task_id}": {
            "get": operation(
                "getTask",
                "Get a task",
                "read",
                {200: "Task"},
                (400, 404),
                parameters=[task_id],
                tag="messages",
            )
        },
        "/api/v1/tasks/{task_id}/distribute": {
            "post": operation(
                "distributeTask",
                "Run the contract-net round: cfp, collect bids, award; returns the winner",
                "send",
                {200: "Task"},
                (400, 404, 409, 503),
                parameters=[task_id],
                tag="messages",
                links=_links(
                    "conversation_id", "$response.body#/conversation_id", "getConversation"
                ),
            )
        },
        "/api/v1/queues": {
            "get": operation(
                "queueStats",
                "Queue depths per agent and priority, dead letters",
                "metrics",
                {200: "QueueStats"},
                (503,),
                tag="operations",
            )
        },
        "/api/v1/queues/dead-letters": {
            "get": operation(
                "deadLetters",
                "Messages this node gave up on, newest first, each with its reason",
                "read",
                {200: "DeadLetters"},
                (400, 503),
                parameters=query_parameters(DEAD_LETTER_QUERY),
                tag="operations",
            )
        },
        "/api/v1/queues/drain": {
            "post": operation(
                "drainQueues",
                "Wait until the queues are empty or the timeout passes",
                "cluster",
                {200: "DrainResult"},
                (*_BODY_ERRORS, 503),
                body="Drain",
                body_required=False,
                tag="operations",
            )
        },
        "/api/v1/resources": {
            "get": operation(
                "resources",
                "Node CPU, memory and agents",
                "metrics",
                {200: "Resources"},
                tag="operations",
            )
        },
        "/api/v1/audit": {
            "get": operation(
                "auditLog",
                "The audit log, newest first (admin)",
                "audit",
                {200: "AuditLog"},
                (400, 404),
                parameters=query_parameters(AUDIT_QUERY),
                tag="operations",
            )
        },
        "/api/v1/emergency/stop": {
            "post": operation(
                "emergencyStop",
                "Stop every agent at once (no agent_shutdown)",
                "cluster",
                {200: "EmergencyStopResult"},
                (*_BODY_ERRORS, 422, 502, 503),
                body="EmergencyStop",
                tag="operations",
            )
        },
    }


def build_openapi(node: Node) -> dict[str, Any]:
    agents = getattr(node, "agents", None)
    ceiling = getattr(agents, "limit_ceiling", None) or node.limit_ceiling()
    schemes = _security_schemes(node)
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "Caxton REST API",
            "version": __version__,
            "description": (
                "Operate a Caxton node: deploy and manage agents, send messages, "
                "inspect queues and resources. Errors are JSON {error, details}. "
                "See docs/api.md."
            ),
        },
        "servers": [{"url": "/"}],
        "paths": _paths(),
        "components": {"schemas": _schemas(ceiling)},
    }
    if schemes:
        document["components"]["securitySchemes"] = schemes
        document["security"] = [{scheme: []} for scheme in schemes]
    return document


#: What each tag groups, for the document's ``tags`` list (in this order).
TAG_DESCRIPTIONS = {
    "health": "Liveness, readiness and this document (public)",
    "agents": "Deploy and manage agents; the routes for one agent work through any node",
    "messages": "FIPA-ACL messages, conversations and contract-net tasks",
    "operations": "Queues, resources, emergency stop, the audit log",
    "cluster": "Membership, the agent registry, partitions, leave and remove",
    "backups": "Backups of the node's state store",
    "diagnostics": "Diagnostic reports gathered from every node: performance, slow agents, "
    "memory, traces, profiles, analyses, configuration, the support bundle",
    "console": "The web console's files (public: they hold no data)",
}


def with_tags(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with a ``tags`` list naming every tag its operations use."""
    used = {
        tag
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict)
        for tag in operation.get("tags", ())
    }
    ordered = [t for t in TAG_DESCRIPTIONS if t in used] + sorted(used - set(TAG_DESCRIPTIONS))
    document["tags"] = [
        {"name": tag, "description": TAG_DESCRIPTIONS.get(tag, f"{tag} (a plugin's routes)")}
        for tag in ordered
    ]
    return document


def _security_schemes(node: Node) -> dict[str, Any]:
    """The credentials this node's auth chain accepts; none when auth is off."""
    security = node.config["security"]
    if not security["auth_enabled"]:
        return {}
    chain = node.config["plugins"]["auth"]
    schemes: dict[str, Any] = {}
    if "api-key" in chain:
        schemes["ApiKey"] = {"type": "apiKey", "in": "header", "name": security["api_key_header"]}
    if "jwt" in chain:
        schemes["Bearer"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    return schemes
