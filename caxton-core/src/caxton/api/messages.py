"""Messages from external clients, conversations, and the contract-net task helper."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from caxton.api.common import body, path_uuid, query, sending_router, service
from caxton.api.keys import GUARD, IDENTITY, NODE, TASKS
from caxton.api.openapi import CONVERSATION_QUERY, SCOPE_SCHEMA
from caxton.api.permissions import requires
from caxton.api.responses import json_response
from caxton.api.tasks import Task
from caxton.cluster.views import gather, local_view, merge_conversation
from caxton.errors import (
    AgentNotFound,
    CaxtonError,
    Conflict,
    Forbidden,
    NotFound,
    ValidationError,
)
from caxton.messaging import Message, new_message_id

__all__ = ["routes"]

log = logging.getLogger("caxton.api")

routes = web.RouteTableDef()

#: Deadline of a task that gives none, ms.
DEFAULT_DEADLINE_MS = 5000


def _client_name() -> str:
    return f"client-{new_message_id()[:12]}"


def _speaking_as(request: web.Request, name: str, field: str) -> None:
    """Refuse ``name`` when it is an agent's and the caller may not speak for agents.

    An agent's allow-list is about sender names: a REST caller that could pick any
    name would get past it. So naming a deployed agent (on this node or, from the
    cluster registry, on another) needs the ``impersonate`` permission (admins). With
    auth off there is no caller to check: the API then only listens on loopback
    unless an operator opted in.
    """
    identity = request.get(IDENTITY)
    guard = request.config_dict.get(GUARD)
    if identity is None or guard is None or not _is_agent(request, name):
        return
    try:
        guard.authorize(identity, "impersonate")
    except Forbidden:
        raise Forbidden(
            f"{field} {name!r} is a deployed agent: sending in an agent's name needs the "
            f"'impersonate' permission, which {identity.name!r} lacks (leave {field} out "
            f"to send as a client)"
        ) from None


def _is_agent(request: web.Request, name: str) -> bool:
    node = request.app[NODE]
    if node.agents is not None and name in node.agents:
        return True
    cluster = getattr(node, "cluster", None)
    return cluster is not None and bool(cluster.registry.lookup(name))


@routes.post("/api/v1/messages")
@requires("send")
async def send_message(request: web.Request) -> web.Response:
    data = await body(request, "SendMessage")
    router = sending_router(request)
    wait_ms = data.pop("wait_ms", 0)
    if data.get("sender") is None:
        data["sender"] = _client_name()
    elif isinstance(data["sender"], str):
        _speaking_as(request, data["sender"], "sender")
    message = Message.from_dict(data)
    if wait_ms:
        reply = await router.request(message, wait_ms / 1000)
        return json_response(
            {
                "status": "replied",
                "message_id": message.message_id,
                "conversation_id": message.conversation_id,
                "sender": message.sender,
                "reply": reply.to_dict(),
            }
        )
    await router.send(message)
    return json_response(
        {
            "status": "accepted",
            "message_id": message.message_id,
            "conversation_id": message.conversation_id,
            "sender": message.sender,
        },
        status=202,
    )


@routes.get("/api/v1/conversations")
@requires("read")
async def list_conversations(request: web.Request) -> web.Response:
    """The conversations the router knows, most recently active first; with
    ``scope=cluster`` every reachable node's, each once."""
    service(request, "router")
    params = {name: query(request, name, schema) for name, schema in CONVERSATION_QUERY.items()}
    args = {"participant": params["participant"], "limit": params["limit"] or 100}
    node = request.config_dict[NODE]
    if params["scope"] != "cluster":
        return json_response({"conversations": await local_view(node, "conversations", args)})
    answers, failed = await gather(node, "conversations", args)
    newest: dict[str, dict[str, Any]] = {}
    for node_id, conversations in answers.items():
        for conversation in conversations:
            seen = newest.get(conversation["conversation_id"])
            if seen is None or conversation["updated_at"] > seen["updated_at"]:
                newest[conversation["conversation_id"]] = {**conversation, "node_id": node_id}
    found = sorted(newest.values(), key=lambda c: c["updated_at"], reverse=True)
    return json_response({"conversations": found[: args["limit"]], "failed": failed})


@routes.get("/api/v1/conversations/{conversation_id}")
@requires("read")
async def get_conversation(request: web.Request) -> web.Response:
    conversation_id = request.match_info["conversation_id"]
    if len(conversation_id) > 255:
        raise ValidationError(
            f"conversation id is {len(conversation_id)} characters long; the limit is 255"
        )
    service(request, "router")
    node = request.config_dict[NODE]
    args = {"conversation_id": conversation_id}
    if query(request, "scope", SCOPE_SCHEMA) == "cluster":
        conversation = merge_conversation((await gather(node, "conversation", args))[0])
        where = "on any reachable node"
    else:
        conversation = await local_view(node, "conversation", args)
        where = "on this node"
    if conversation is None:
        raise NotFound(
            f"Conversation not found: {conversation_id}",
            details=f"no conversation {conversation_id!r} {where}: it never existed "
            f"or it expired (after an hour idle)",
        )
    return json_response(conversation)


@routes.post("/api/v1/tasks")
@requires("send")
async def create_task(request: web.Request) -> web.Response:
    data = await body(request, "CreateTask")
    participants = tuple(data["participants"])
    initiator = data.get("initiator") or _client_name()
    _speaking_as(request, initiator, "initiator")
    if initiator in participants:
        raise ValidationError(f"the initiator {initiator!r} is also a participant")
    task = request.config_dict[TASKS].add(
        Task(
            initiator=initiator,
            participants=participants,
            content=data["content"],
            deadline_ms=data.get("deadline_ms", DEFAULT_DEADLINE_MS),
            result_timeout_ms=data.get("result_timeout_ms"),
            language=data.get("language"),
            ontology=data.get("ontology"),
        )
    )
    return json_response(
        task.to_dict(), status=201, headers={"Location": f"/api/v1/tasks/{task.id}"}
    )


@routes.get("/api/v1/tasks/{task_id}")
@requires("read")
async def get_task(request: web.Request) -> web.Response:
    task = request.config_dict[TASKS].get(path_uuid(request, "task_id"))
    return json_response(task.to_dict())


@routes.post("/api/v1/tasks/{task_id}/distribute")
@requires("send")
async def distribute_task(request: web.Request) -> web.Response:
    board = request.config_dict[TASKS]
    task_id = path_uuid(request, "task_id")
    router = sending_router(request)
    task = board.begin(task_id)
    try:
        task.outcome = await router.contract_net(
            task.initiator,
            task.participants,
            task.content,
            deadline=task.deadline_ms / 1000,
            result_timeout=(
                task.result_timeout_ms / 1000 if task.result_timeout_ms is not None else None
            ),
            language=task.language,
            ontology=task.ontology,
        )
    except AgentNotFound as exc:
        task.state = "failed"
        task.error = str(exc)
        raise Conflict(
            f"task {task.id} cannot be distributed: {exc}",
            details=f"{exc}: every participant must be a deployed agent; "
            f"create a new task with existing agents",
        ) from None
    except CaxtonError as exc:
        task.state = "failed"
        task.error = str(exc)
        raise
    except BaseException:
        task.state = "failed"
        task.error = "the round was interrupted"
        raise
    task.state = "awarded" if task.outcome.winner is not None else "no-winner"
    return json_response(task.to_dict())
