"""Agent operations through any node: carried out on the node that runs the agent.

A REST request for one agent (get, update, remove, start, stop, suspend, resume, move,
its logs and its key/value state) may reach any node. :func:`perform` runs it here when
the agent runs here; otherwise it finds the agent's node in the cluster registry and
sends the operation there as the CONTROL op ``agent`` (:mod:`caxton.cluster.wire`),
sealed (:mod:`caxton.cluster.trust`) and carrying the caller: their identity, roles,
request id and address.

The node that runs the agent trusts the peer (the seal), not the peer's verdict: with
``security.auth_enabled`` it checks the caller's roles against its *own* role table,
refuses a caller without an identity (auth off on the forwarding node), refuses writes
while it is in a minority partition, and writes its own audit entry (source
``node:<forwarder>``). The forwarding node's middleware has checked and audits too, so
an operation is checked and audited on both nodes.

:func:`list_cluster` answers ``GET /api/v1/agents?scope=cluster``: every node's agents,
asked of each node with the ``agent`` op's ``list`` action (same checks); a node that
does not answer contributes its agents as the registry knows them (``source:
"registry"``: name, id, node and state only).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from caxton.agents import state_access
from caxton.auth.audit import AUDITED_PERMISSIONS
from caxton.cluster import wire
from caxton.cluster.placement import FRAME_OVERHEAD, NodeUnreachable, RemoteError, error_answer
from caxton.drivers.auth import Identity
from caxton.drivers.membership import MemberStatus
from caxton.drivers.transport import Frame
from caxton.errors import (
    AgentNotFound,
    CaxtonError,
    Conflict,
    Forbidden,
    PayloadTooLarge,
    ServiceUnavailable,
    TransportError,
    ValidationError,
)
from caxton.plugins import error_line

if TYPE_CHECKING:
    from caxton.agents.model import Agent
    from caxton.agents.runtime import AgentRuntime
    from caxton.cluster.service import Cluster
    from caxton.node import Node

__all__ = ["ACTIONS", "OPS", "Caller", "describe", "list_cluster", "on_control", "perform"]

log = logging.getLogger("caxton.cluster")

#: The control ops this module answers.
OPS = frozenset({"agent"})
#: Action -> the permission it needs (as its REST route declares).
ACTIONS: Mapping[str, str] = {
    "get": "read",
    "list": "read",
    "update": "update",
    "start": "update",
    "stop": "update",
    "suspend": "update",
    "resume": "update",
    "remove": "remove",
    "logs": "read",
    # The agent's key/value state (caxton.agents.state_access): keys and sizes are
    # there for every reader; values only for those who may change the agent.
    "state": "read",
    "state-get": "update",
    "state-put": "update",
    "state-delete": "update",
    "move": "update",
}
#: Action -> the REST handler's name, which is the audit log's action.
AUDIT_ACTIONS: Mapping[str, str] = {
    "get": "get_agent",
    "list": "list_agents",
    "update": "update_agent",
    "start": "start_agent",
    "stop": "stop_agent",
    "suspend": "suspend_agent",
    "resume": "resume_agent",
    "remove": "remove_agent",
    "logs": "agent_logs",
    "state": "agent_state",
    "state-get": "get_agent_state_key",
    "state-put": "put_agent_state_key",
    "state-delete": "delete_agent_state_key",
    "move": "move_agent",
}
#: Seconds an operation may take on the other node, on top of any drain it asks for.
REMOTE_TIMEOUT = 15.0
#: Seconds a move may take on top (quiesce, takeover, hand-over: caxton.cluster.moves).
MOVE_TIMEOUT = 30.0
#: Seconds each node has to answer a cluster-wide listing.
LIST_TIMEOUT = 3.0

_REACHABLE = (MemberStatus.ALIVE, MemberStatus.SUSPECT)


@dataclass(frozen=True)
class Caller:
    """Who asked, as the node that received the request authenticated them.

    ``name`` is None when that node does not authenticate (``security.auth_enabled``
    off); a node that does refuses such a caller.
    """

    name: str | None = None
    roles: tuple[str, ...] = ()
    driver: str = ""
    request_id: str | None = None
    remote: str | None = None

    @classmethod
    def of(
        cls, identity: Identity | None, request_id: str | None = None, remote: str | None = None
    ) -> Caller:
        if identity is None:
            return cls(request_id=request_id, remote=remote)
        roles = tuple(sorted(identity.roles))
        return cls(identity.name, roles, identity.driver, request_id, remote)

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "roles": list(self.roles),
            "driver": self.driver,
            "request_id": self.request_id,
            "remote": self.remote,
        }

    @classmethod
    def from_wire(cls, data: Any) -> Caller:
        if not isinstance(data, Mapping):
            raise ValidationError("malformed agent operation: no caller")
        name, roles = data.get("name"), data.get("roles") or []
        if (name is not None and not isinstance(name, str)) or not isinstance(roles, list):
            raise ValidationError("malformed agent operation: bad caller")

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        return cls(name, tuple(str(r) for r in roles), text("driver") or "",
                   text("request_id"), text("remote"))  # fmt: skip

    @property
    def identity(self) -> Identity | None:
        if self.name is None:
            return None
        return Identity(self.name, frozenset(self.roles), self.driver)


# -- the node that received the request ---------------------------------------------


async def perform(
    node: Node, action: str, agent_id: str, caller: Caller, **options: Any
) -> dict[str, Any] | None:
    """Run ``action`` on the agent ``agent_id``, here or on its node.

    Returns the agent as its node reports it (None for ``remove``).
    :class:`~caxton.errors.AgentNotFound` when no node the registry knows runs it.
    """
    cluster: Cluster | None = node.cluster
    host = None
    if not _hosts(node, agent_id) and cluster is not None:
        host = host_of(cluster, agent_id)
    if cluster is None or host is None:
        # Here, or nowhere the registry knows of (run_local says Agent not found).
        result = await run_local(node, action, agent_id, options)
        return result if isinstance(result, dict) else None
    answer = await _ask(
        cluster,
        host,
        {"action": action, "agent_id": agent_id, "options": options, "caller": caller.to_wire()},
        REMOTE_TIMEOUT
        + float(options.get("drain_timeout") or 0.0)
        + (MOVE_TIMEOUT if action == "move" else 0.0),
        len(options.get("wasm") or b""),
    )
    result = _unpack(host, answer)
    return result if isinstance(result, dict) else None


def host_of(cluster: Cluster, agent_id: str) -> str | None:
    """The node the registry says runs ``agent_id`` (None: none it knows)."""
    for entry in cluster.registry.entries():
        if entry.agent_id == agent_id and entry.node_id != cluster.node_id:
            return entry.node_id
    return None


async def list_cluster(node: Node, caller: Caller) -> list[dict[str, Any]]:
    """Every node's agents with their node (``source``: ``node`` or ``registry``)."""
    local = [{**a.to_dict(), "source": "node"} for a in _manager(node).list()]
    cluster: Cluster | None = node.cluster
    if cluster is None:
        return local
    body = {"action": "list", "agent_id": "", "options": {}, "caller": caller.to_wire()}
    peers = [
        m
        for m in cluster.membership.members()
        if m.node_id != node.node_id and m.status in _REACHABLE
    ]

    async def ask(node_id: str) -> list[dict[str, Any]]:
        try:
            agents = _unpack(node_id, await _ask(cluster, node_id, body, LIST_TIMEOUT))
        except Forbidden:
            raise
        except CaxtonError as exc:
            log.info("listing the agents of %s from its registry entry: %s", node_id, exc)
            return _from_registry(cluster, node_id)
        if not isinstance(agents, list):
            return _from_registry(cluster, node_id)
        return [{**a, "source": "node"} for a in agents if isinstance(a, dict)]

    answered = {m.node_id for m in peers}
    found = local
    for agents in await asyncio.gather(*(ask(m.node_id) for m in peers)):
        found += agents
    for entry in cluster.registry.entries():  # failed, left or not yet seen nodes
        if entry.node_id not in answered and entry.node_id != node.node_id:
            answered.add(entry.node_id)
            found += _from_registry(cluster, entry.node_id)
    return sorted(found, key=lambda a: (str(a.get("node_id")), str(a.get("name"))))


def _from_registry(cluster: Cluster, node_id: str) -> list[dict[str, Any]]:
    return [
        {
            "id": e.agent_id,
            "name": e.name,
            "state": e.state,
            "node_id": e.node_id,
            "source": "registry",
        }
        for e in cluster.registry.entries(node_id)
        if e.agent_id
    ]


async def _ask(
    cluster: Cluster, node_id: str, body: dict[str, Any], timeout: float, size: int = 0
) -> Any:
    member = cluster._live(node_id)
    if member is None:
        what = f"agent {body['agent_id']} runs" if body["agent_id"] else "the agents run"
        raise NodeUnreachable(
            f"{what} on node '{node_id}', which is not reachable (failed or left); "
            f"retry once it failed over or came back"
        )
    max_frame = int(cluster.node.config.get("transport.max_frame_size") or 16 * 1024 * 1024)
    if size + FRAME_OVERHEAD > max_frame:
        raise PayloadTooLarge(
            f"the module ({size} bytes) is too large to send to node '{node_id}': "
            f"transport.max_frame_size is {max_frame} bytes; update it on that node's API"
        )
    sealed = cluster.failover.trust.seal(body)
    try:
        return await cluster._control(member.address, timeout, "agent", sealed)
    except TransportError as exc:
        raise NodeUnreachable(f"node '{node_id}' did not answer: {exc}") from None


def _unpack(node_id: str, answer: Any) -> Any:
    """The result of an ``["ok", result]`` answer; raise the error of an ``["error", ...]``."""
    if isinstance(answer, list) and len(answer) == 2 and answer[0] == "ok":
        return answer[1]
    if isinstance(answer, list) and len(answer) == 5 and answer[0] == "error":
        _, status, error, message, details = answer
        status = int(status) if isinstance(status, int) and 400 <= status < 600 else 502
        message = f"node '{node_id}': {message}"
        details = f"node '{node_id}': {details}" if details else message
        if status == 403:
            raise Forbidden(message, details=details)
        raise RemoteError(status, str(error), message, details)
    raise RemoteError(502, "Bad answer", f"node '{node_id}' gave a malformed answer")


# -- the node that runs the agent ---------------------------------------------------


async def run_local(
    node: Node, action: str, agent_id: str, options: Mapping[str, Any]
) -> dict[str, Any] | list[dict[str, Any]] | None:
    """Carry out ``action`` on this node's agent ``agent_id`` (by id only)."""
    manager = _manager(node)
    if action == "list":
        return [describe(node, agent) for agent in manager.list()]
    if action not in ACTIONS:
        raise ValidationError(f"unknown agent action {action!r}")
    try:
        agent = manager.get(agent_id)
    except AgentNotFound:
        agent = None
    if agent is None or agent.id != agent_id:
        raise AgentNotFound(agent_id)
    if action == "get":
        return describe(node, agent)
    if action == "logs":  # the agent's own log lines (caxton.agents.agent_logs)
        lines = manager.runtime(agent_id).logbook.since(
            float(options.get("since") or 0.0), int(options.get("after") or 0)
        )
        return {"agent": agent.name, "lines": [line.to_dict(agent.name) for line in lines]}
    if action.startswith("state"):
        return await _state(manager.runtime(agent_id), action, options)
    if action == "remove":
        await manager.remove(agent_id)
        return None
    if action == "move":  # live migration: caxton.cluster.moves
        if node.cluster is None:
            raise Conflict(
                f"node {node.node_id} is not part of a cluster: there is no node to move "
                f"agent '{agent.name}' to"
            )
        return dict(await node.cluster.moves.move(agent_id, str(options.get("to") or "")))
    if action == "update":
        wasm = options.get("wasm")
        changed = await manager.update(
            agent_id, wasm=bytes(wasm) if wasm is not None else None, limits=options.get("limits")
        )
    elif action == "stop":
        changed = await manager.stop_agent(
            agent_id, drain_timeout=float(options.get("drain_timeout") or 0.0)
        )
    elif action == "start":
        changed = await manager.start_agent(agent_id)
    elif action == "suspend":
        changed = await manager.suspend(agent_id)
    else:
        changed = await manager.resume(agent_id)
    return dict(changed.to_dict())


async def _state(
    runtime: AgentRuntime, action: str, options: Mapping[str, Any]
) -> dict[str, Any] | None:
    key = bytes(options.get("key") or b"")
    if action == "state":
        after = options.get("after")
        return state_access.list_keys(
            runtime,
            prefix=key,
            after=bytes(after) if after is not None else None,
            limit=int(options.get("limit") or state_access.DEFAULT_LIMIT),
        )
    if action == "state-get":
        return state_access.read_key(runtime, key)
    if action == "state-put":
        return await state_access.write_key(runtime, key, bytes(options.get("value") or b""))
    await state_access.delete_key(runtime, key)
    return None


async def on_control(node: Node, frame: Frame, args: Sequence[Any]) -> bytes:
    """Answer the ``agent`` op: check, run and audit one operation a peer forwarded."""
    cluster: Cluster = node.cluster
    caller, action, agent_id, status = Caller(), "", "", 200
    try:
        sender, body = cluster.failover.trust.open("agent", frame.sender, args[0] if args else None)
        if not isinstance(body, Mapping) or body.get("action") not in ACTIONS:
            raise ValidationError("malformed agent operation")
        action, agent_id = str(body["action"]), str(body.get("agent_id") or "")
        caller = Caller.from_wire(body.get("caller"))
        options = body.get("options") or {}
        if not isinstance(options, Mapping):
            raise ValidationError("malformed agent operation: bad options")
    except CaxtonError as exc:
        log.warning("refused an agent operation from %s: %s", frame.sender, exc)
        return wire.pack(error_answer(exc))
    permission = ACTIONS[action]
    try:
        _authorize(node, caller, permission, sender)
        if permission != "read":
            cluster.partition.check_write(f"{action} agent {agent_id}")
        answer: list[Any] = ["ok", await run_local(node, action, agent_id, options)]
    except Forbidden as exc:
        _audit(node, action, agent_id, caller, sender, "denied", exc.http_status, str(exc))
        return wire.pack(error_answer(exc))
    except CaxtonError as exc:
        status = exc.http_status
        answer = error_answer(exc)
    except Exception as exc:  # a bug here must reach the client as an error, not a hang
        log.exception("agent operation %s on %s from %s failed", action, agent_id, sender)
        status = 502
        answer = ["error", 502, "Remote operation failed", error_line(exc), None]
    if permission in AUDITED_PERMISSIONS:
        result = "success" if status < 400 else "failure"
        _audit(node, action, agent_id, caller, sender, result, status, "")
    return wire.pack(answer)


def _authorize(node: Node, caller: Caller, permission: str, sender: str) -> None:
    guard = node.context.services.get("auth")
    if guard is None:
        return
    identity = caller.identity
    if identity is None:
        raise Forbidden(
            f"node {node.node_id} requires authentication, but node {sender} forwarded the "
            f"request without an identity: enable security.auth_enabled on every node"
        )
    guard.authorize(identity, permission)


def _audit(
    node: Node,
    action: str,
    agent_id: str,
    caller: Caller,
    sender: str,
    result: str,
    status: int,
    details: str,
) -> None:
    guard = node.context.services.get("auth")
    if guard is None or guard.audit is None:
        return
    guard.audit.record(
        AUDIT_ACTIONS[action],
        result,
        identity=caller.name,
        target=f"/api/v1/agents/{agent_id}" if agent_id else "/api/v1/agents",
        source=f"node:{sender}" + (f" for {caller.remote}" if caller.remote else ""),
        request_id=caller.request_id,
        status=status,
        details=details,
    )


def _hosts(node: Node, agent_id: str) -> bool:
    manager = _manager(node)
    return agent_id in manager and manager.get(agent_id).id == agent_id


def describe(node: Node, agent: Agent) -> dict[str, Any]:
    """A local agent as the API shows it: its record, and on a clustered node where it
    is replicated (the fault campaign's checker reads each agent's replica set from
    the list)."""
    return {**agent.to_dict(), **_replication(node, agent.id)}


def _replication(node: Node, agent_id: str) -> dict[str, Any]:
    """Where an agent's state is replicated, for its detail (on a clustered node only):
    the durability mode, the placement generation its owner writes with, its replica
    holders in takeover order, whether every holder confirmed its replica (module and
    spec), and the state version each holder acknowledged (durability "quorum")."""
    if node.cluster is None:
        return {}
    failover = node.cluster.failover
    holders = failover.holders.get(agent_id, ())
    owned = failover.ownership.owned.get(agent_id)
    return {
        "replication": {
            "durability": failover.durability,
            "generation": failover.generation(agent_id),
            "holders": list(holders),
            "replicated": bool(holders) and failover.pushed_to(agent_id) == holders,
            "acknowledged": dict(owned.acked) if owned is not None else {},
        }
    }


def _manager(node: Node) -> Any:
    manager = node.agents
    if manager is None:
        raise ServiceUnavailable(
            f"the agents service of node {node.node_id} is not running (node state: "
            f"{node.state}); retry when /ready answers 200"
        )
    return manager
