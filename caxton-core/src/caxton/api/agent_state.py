"""``/api/v1/agents/{agent_id}/state``: an agent's key/value state, through any node.

The keys and the size of their values are there for every reader (``read``); a value,
and changing or deleting a key, need ``update``, since the state is the agent's data,
not its description. The agent's node carries each request out
(:mod:`caxton.cluster.agent_ops`, :mod:`caxton.agents.state_access`). A key in the path
is its UTF-8 text, percent-encoded; ``?encoding=base64`` reads it as URL-safe base64
instead, for keys that are not text.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from caxton.agents.state_access import DEFAULT_LIMIT, MAX_LIMIT
from caxton.api.agents import act
from caxton.api.common import body, query
from caxton.api.openapi import (
    integer_schema,
    object_schema,
    operation,
    path_id,
    query_parameters,
    string_schema,
)
from caxton.api.permissions import requires
from caxton.api.responses import json_response
from caxton.api.validation import decode_base64
from caxton.errors import ValidationError
from caxton.sandbox.abi import MAX_KEY_BYTES

__all__ = ["extend_openapi", "routes"]

routes = web.RouteTableDef()

#: Characters of the longest key in base64.
MAX_BASE64_KEY = 4 * ((MAX_KEY_BYTES + 2) // 3)
#: The query parameters of the listing, by name.
LIST_STATE_QUERY: dict[str, dict[str, Any]] = {
    "prefix": {
        **string_schema(MAX_KEY_BYTES),
        "description": "Only keys starting with this text",
    },
    "after": {
        **string_schema(MAX_BASE64_KEY, pattern=r"^[A-Za-z0-9+/]+={0,2}$"),
        "description": "Only keys after this one (the base64 of a key: the answer's next)",
    },
    "limit": integer_schema(1, MAX_LIMIT, f"At most this many keys (default {DEFAULT_LIMIT})"),
}
ENCODING_SCHEMA: dict[str, Any] = {"type": "string", "enum": ["text", "base64"]}


def _key(request: web.Request) -> bytes:
    text = request.match_info["key"]
    encoding = query(request, "encoding", ENCODING_SCHEMA) or "text"
    if encoding == "base64":
        try:
            padded = text.encode("ascii") + b"=" * (-len(text) % 4)
            key = base64.b64decode(padded, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise ValidationError(f"the key {text!r} is not URL-safe base64") from None
    else:
        try:
            key = text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("the key is not valid UTF-8 text") from None
    if not 1 <= len(key) <= MAX_KEY_BYTES:
        raise ValidationError(f"a key is 1 to {MAX_KEY_BYTES} bytes, this one {len(key)}")
    return key


@routes.get("/api/v1/agents/{agent_id}/state")
@requires("read")
async def agent_state(request: web.Request) -> web.Response:
    """The agent's keys with the size of their values, in byte order, paged."""
    params = {name: query(request, name, schema) for name, schema in LIST_STATE_QUERY.items()}
    after = params["after"]
    return json_response(
        await act(
            request,
            "state",
            key=(params["prefix"] or "").encode("utf-8", "surrogatepass"),
            after=decode_base64(after, "after") if after is not None else None,
            limit=params["limit"] or DEFAULT_LIMIT,
        )
    )


@routes.get("/api/v1/agents/{agent_id}/state/{key:.+}")
@requires("update")
async def get_agent_state_key(request: web.Request) -> web.Response:
    return json_response(await act(request, "state-get", key=_key(request)))


@routes.put("/api/v1/agents/{agent_id}/state/{key:.+}")
@requires("update")
async def put_agent_state_key(request: web.Request) -> web.Response:
    key = _key(request)
    data = await body(request, "StateValue")
    if ("value" in data) == ("value_base64" in data):
        raise ValidationError("give the value as text (value) or as base64 (value_base64)")
    if "value" in data:
        value = data["value"].encode("utf-8")
    else:
        value = decode_base64(data["value_base64"], "value_base64")
    return json_response(await act(request, "state-put", key=key, value=value))


@routes.delete("/api/v1/agents/{agent_id}/state/{key:.+}")
@requires("update")
async def delete_agent_state_key(request: web.Request) -> web.Response:
    await act(request, "state-delete", key=_key(request))
    return web.Response(status=204)


def extend_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the state operations and schemas to ``document``; return it."""
    agent_id = path_id("agent_id", "The agent's id (a UUID, as returned by deploy)")
    key = {
        "name": "key",
        "in": "path",
        "required": True,
        "description": "The key: its text, or with encoding=base64 its URL-safe base64",
        "schema": string_schema(MAX_BASE64_KEY),
    }
    encoding = {
        "name": "encoding",
        "in": "query",
        "required": False,
        "description": "How the key is written in the path (default text)",
        "schema": ENCODING_SCHEMA,
    }
    one_key = [agent_id, key, encoding]
    document["paths"].update(
        {
            "/api/v1/agents/{agent_id}/state": {
                "get": operation(
                    "agentState",
                    "The agent's keys and the size of their values, from its node",
                    "read",
                    {200: "StateKeys"},
                    (400, 404, 503),
                    parameters=[agent_id, *query_parameters(LIST_STATE_QUERY)],
                )
            },
            "/api/v1/agents/{agent_id}/state/{key}": {
                "get": operation(
                    "getAgentStateKey",
                    "One key's value",
                    "update",
                    {200: "StateEntry"},
                    (400, 404, 503),
                    parameters=one_key,
                ),
                "put": operation(
                    "putAgentStateKey",
                    "Set a key, as the agent's kv_store would; answered once durable",
                    "update",
                    {200: "StateEntry"},
                    (400, 404, 409, 413, 503, 504),
                    body="StateValue",
                    parameters=one_key,
                ),
                "delete": operation(
                    "deleteAgentStateKey",
                    "Delete a key; answered once durable",
                    "update",
                    {204: None},
                    (400, 404, 409, 503, 504),
                    parameters=one_key,
                ),
            },
        }
    )
    nullable_text = {"type": "string", "nullable": True}
    entry = {
        "key": {**nullable_text, "description": "The key as text (null: not UTF-8)"},
        "key_base64": {"type": "string"},
        "size": {"type": "integer", "description": "Bytes of the value"},
    }
    document["components"]["schemas"].update(
        {
            "StateKeys": object_schema(
                {
                    "agent": {"type": "string"},
                    "keys_total": {"type": "integer"},
                    "bytes": {"type": "integer"},
                    "entries": {"type": "array", "items": object_schema(entry, tuple(entry))},
                    "next": {**nullable_text, "description": "after= for the next page"},
                },
                ("agent", "keys_total", "bytes", "entries", "next"),
            ),
            "StateEntry": object_schema(
                {
                    **entry,
                    "value": {
                        **nullable_text,
                        "description": "The value as text (null: not UTF-8)",
                    },
                    "value_base64": {"type": "string"},
                },
                ("key", "key_base64", "size", "value", "value_base64"),
            ),
            "StateValue": object_schema(
                {
                    "value": {"type": "string", "description": "The value as UTF-8 text"},
                    "value_base64": {"type": "string", "description": "The value, base64"},
                },
                minProperties=1,
                maxProperties=1,
            ),
        }
    )
    return document
