"""Emergency measures of one node, and their reversals.

The runbook's emergency commands act on every reachable node at once: the node the
operator asks sends the ``emergency`` control operation to each member
(:mod:`caxton.cluster.operations`), and each runs :func:`apply` here and answers what it
did. A node that is not in a cluster runs it alone.

=====================  ===============================================  ====================
action                 what this node does                              undone by
=====================  ===============================================  ====================
``stop``               stops every live agent (no ``agent_shutdown``);  ``start``
                       with ``dump_to`` first writes its agents' state
``start``              starts the agents ``stop`` stopped; with         -
                       ``replay_from`` re-sends the dumped queued
                       messages
``suspend``            suspends the running agents of ``priority``      ``resume``
``shed``               suspends ``percentage`` % of its running         ``resume``
                       agents, lowest priority first
``resume``             resumes the agents ``suspend``/``shed``          -
                       suspended (``priority``: only those)
``breaker-open``       messages to ``agents`` (or all: ``*``) fail      ``breaker-reset``
                       fast with a clear reason
``breaker-reset``      closes breakers, at once or over ``duration``    -
``isolate``            leaves routing and placement (gossiped)          ``rejoin``
=====================  ===============================================  ====================

All of it is kept in memory (:class:`EmergencyState`): a node restarted after an
emergency starts as its store says (agents stopped by ``stop`` stay stopped, suspended
ones stay suspended), with no breaker open and not isolated.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caxton.agents.model import PRIORITIES
from caxton.datadir import expand_user
from caxton.errors import CaxtonError, ServiceUnavailable, ValidationError

if TYPE_CHECKING:
    from caxton.node import Node

__all__ = ["PRIORITIES", "CircuitOpen", "EmergencyState", "apply", "priority_rank"]

log = logging.getLogger("caxton.emergency")

DUMP_FILE = "state.json"


def priority_rank(priority: str) -> int:
    return PRIORITIES.index(priority) if priority in PRIORITIES else 1


class CircuitOpen(ServiceUnavailable):
    """A message to an agent whose circuit breaker is open: refused at once."""

    error = "Circuit breaker open"


@dataclass
class Breaker:
    opened_at: float
    #: While closing gradually: when it started and how long it takes (else None).
    closing_at: float | None = None
    duration: float = 0.0


@dataclass
class EmergencyState:
    """What this node's emergency measures changed, so each can be undone; and the
    router's admission check (:meth:`admission`)."""

    node: Node
    #: Agent ids stopped by ``stop``.
    stopped: set[str] = field(default_factory=set)
    #: Agent id -> why it was suspended (``priority low``, ``shed``).
    suspended: dict[str, str] = field(default_factory=dict)
    #: Agent name (or ``*``) -> breaker.
    breakers: dict[str, Breaker] = field(default_factory=dict)
    #: This node is isolated (``caxton cluster isolate``); gossiped to the others.
    isolated: bool = False
    _random: random.Random = field(default_factory=random.Random)
    _isolated_nodes: frozenset[str] = frozenset()
    _isolated_seen: float = -1.0

    def admission(self, receiver: str) -> CaxtonError | None:
        """The error refusing a message to ``receiver`` now, or None (the router's hook)."""
        reason = self._breaker_refusal(receiver) if self.breakers else None
        if reason is None and self.node.cluster is not None:
            reason = self._isolation_refusal(receiver)
        return None if reason is None else CircuitOpen(reason)

    def _breaker_refusal(self, receiver: str) -> str | None:
        """A breaker closing gradually lets a growing share through: none when the reset
        begins, all once its ``duration`` is over."""
        breakers = self.breakers
        key = receiver if receiver in breakers else "*"
        breaker = breakers.get(key)
        if breaker is None:
            return None
        if breaker.closing_at is not None:
            share = (time.monotonic() - breaker.closing_at) / max(breaker.duration, 1e-9)
            if share >= 1:
                del breakers[key]
                return None
            if self._random.random() < share:
                return None
        scope = "every agent" if key == "*" else f"agent {receiver}"
        return (
            f"circuit breaker open for {scope}: the message to {receiver} is refused at "
            f"once (`caxton circuit-breaker reset` closes it)"
        )

    def isolated_nodes(self) -> frozenset[str]:
        """Members that gossip ``isolated`` (read at most every 0.2 s)."""
        now = time.monotonic()
        if now - self._isolated_seen >= 0.2:
            self._isolated_seen = now
            members = self.node.cluster.membership.members() if self.node.cluster else []
            self._isolated_nodes = frozenset(m.node_id for m in members if m.meta.get("isolated"))
        return self._isolated_nodes

    def _isolation_refusal(self, receiver: str) -> str | None:
        isolated = self.isolated_nodes()
        if not isolated or self.node.router.is_registered(receiver):
            return None
        entries = [e for e in self.node.cluster.registry.lookup(receiver) if e.routable]
        if entries and all(e.node_id in isolated for e in entries):
            where = ", ".join(sorted({e.node_id for e in entries}))
            return (
                f"agent {receiver} runs on node {where}, which is isolated from routing "
                f"(`caxton cluster rejoin {where}` brings it back)"
            )
        return None


def _state(node: Node) -> EmergencyState:
    state: EmergencyState | None = node.emergency
    if state is None:
        raise ServiceUnavailable(f"node {node.node_id} is not running")
    return state


def _manager(node: Node) -> Any:
    if node.agents is None:
        raise ServiceUnavailable(f"node {node.node_id} is not running")
    return node.agents


async def apply(node: Node, body: Mapping[str, Any]) -> dict[str, Any]:
    """Run one emergency ``action`` here; what this node did (see the module table)."""
    action = body.get("action")
    handler = ACTIONS.get(str(action))
    if handler is None:
        raise ValidationError(
            f"unknown emergency action {action!r}; known: {', '.join(sorted(ACTIONS))}"
        )
    result: dict[str, Any] = await handler(node, body)
    log.warning("emergency %s on node %s: %s", action, node.node_id, result)
    return {"node_id": node.node_id, "action": action, **result}


# -- stop and start ---------------------------------------------------------------------


async def _stop(node: Node, body: Mapping[str, Any]) -> dict[str, Any]:
    manager = _manager(node)
    state = _state(node)
    dump = None
    if body.get("dump_to"):
        dump = str(await dump_state(node, dump_directory(body["dump_to"], "dump_to")))
    live = {a.id for a in manager.list() if a.state.value in ("running", "suspended", "ready")}
    stopped = await manager.emergency_stop_all()
    state.stopped |= live
    return {"stopped": stopped, "dump": dump}


async def _start(node: Node, body: Mapping[str, Any]) -> dict[str, Any]:
    manager = _manager(node)
    state = _state(node)
    started = []
    for agent_id in sorted(state.stopped):
        if agent_id in manager:
            try:
                agent = await manager.start_agent(agent_id)
            except CaxtonError as exc:
                log.warning("emergency start: agent %s: %s", agent_id, exc)
                continue
            started.append(agent.name)
    state.stopped.clear()
    replayed = 0
    if body.get("replay_from"):
        replayed = await replay_dump(node, dump_directory(body["replay_from"], "replay_from"))
    return {"started": sorted(started), "replayed": replayed}


class DumpFailed(CaxtonError):
    """The state dump could not be written; nothing was stopped."""

    http_status = 422
    error = "State dump failed"


def dump_directory(value: Any, name: str) -> Path:
    """``value`` as an existing absolute directory (not ``/``) on this node's host."""
    text = str(value)
    if "\x00" in text or not text.startswith("/") or text.rstrip("/") == "":
        raise ValidationError(f"{name} must be an absolute directory path other than /")
    path = Path(text)
    if not path.is_dir():
        raise ValidationError(f"{name} {text} is not an existing directory on this node's host")
    return path


async def dump_state(node: Node, directory: Path) -> Path:
    """Write this node's agents' state to ``directory/NODE_ID/``: a full backup (restorable
    with ``caxton backup restore``) and ``state.json`` (each agent's key/value state,
    its conversations and the messages queued for it, readable, and re-sent by
    ``caxton emergency start --replay-from``)."""
    import asyncio

    manager, router, store = _manager(node), node.router, node.store
    await store.flush()
    kv = await store.load_all_kv()
    conversations = [c.to_dict() for c in router.conversations()]
    agents = [
        {
            "id": agent.id,
            "name": agent.name,
            "state": agent.state.value,
            "priority": agent.priority,
            "kv": {
                base64.b64encode(k).decode(): base64.b64encode(v).decode()
                for k, v in sorted(kv.get(agent.id, {}).items())
            },
            "conversations": [c for c in conversations if agent.name in c.get("participants", ())],
            "queued": [m.to_dict() for m in router.queued(agent.name)],
        }
        for agent in manager.list()
    ]
    document = {"node_id": node.node_id, "at": time.time(), "agents": agents}
    try:
        return await asyncio.to_thread(_write_dump, node, directory, document)
    except (OSError, ValueError) as exc:
        raise DumpFailed(f"cannot write the state dump to {directory}: {exc}") from None


def _write_dump(node: Node, directory: Path, document: dict[str, Any]) -> Path:
    from caxton.backup.archive import make_backup, private_file
    from caxton.datadir import private_directory

    target = expand_user(directory) / node.node_id
    private_directory(target)
    path, _ = make_backup(node.store.path, target, node_id=node.node_id, note="emergency stop dump")
    document["backup"] = path.name
    partial = target / f".{DUMP_FILE}.{os.getpid()}.partial"
    with private_file(partial) as out:
        out.write(json.dumps(document, indent=2, default=str).encode())
    os.replace(partial, target / DUMP_FILE)
    return target


def _read_dump(node: Node, directory: Path) -> dict[str, Any]:
    file = expand_user(directory) / node.node_id / DUMP_FILE
    try:
        document: dict[str, Any] = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValidationError(f"cannot read the dump {file}: {exc}") from None
    return document


async def replay_dump(node: Node, directory: Path) -> int:
    """Re-send the messages a dump found queued on this node; how many."""
    import asyncio

    from caxton.messaging import Message

    document = await asyncio.to_thread(_read_dump, node, directory)
    sent = 0
    for agent in document.get("agents", ()):
        for data in agent.get("queued", ()):
            message = Message.from_dict(data)
            try:
                await node.router.send(message)
            except CaxtonError as exc:
                log.warning("replaying %s to %s: %s", message.message_id, agent["name"], exc)
                continue
            sent += 1
    return sent


# -- suspension by priority, shedding ------------------------------------------------------


async def _suspend(node: Node, body: Mapping[str, Any]) -> dict[str, Any]:
    priority = str(body.get("priority", ""))
    if priority not in PRIORITIES:
        raise ValidationError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
    manager, state = _manager(node), _state(node)
    names = []
    for agent in manager.list():
        if agent.priority == priority and agent.state.value == "running":
            await manager.suspend(agent.id)
            state.suspended[agent.id] = f"priority {priority}"
            names.append(agent.name)
    return {"suspended": sorted(names)}


async def _shed(node: Node, body: Mapping[str, Any]) -> dict[str, Any]:
    try:
        percentage = float(body.get("percentage", 0))
    except (TypeError, ValueError):
        raise ValidationError("percentage must be a number from 1 to 100") from None
    if not 0 < percentage <= 100:
        raise ValidationError("percentage must be a number from 1 to 100")
    manager, state = _manager(node), _state(node)
    running = [a for a in manager.list() if a.state.value == "running"]
    running.sort(key=lambda a: (priority_rank(a.priority), -a.created_at))
    names = []
    for agent in running[: math.ceil(len(running) * percentage / 100)]:
        await manager.suspend(agent.id)
        state.suspended[agent.id] = "shed"
        names.append(agent.name)
    return {"suspended": sorted(names), "running": len(running) - len(names)}


async def _resume(node: Node, body: Mapping[str, Any]) -> dict[str, Any]:
    manager, state = _manager(node), _state(node)
    priority, why = body.get("priority"), body.get("reason")
    names = []
    for agent_id, reason in list(state.suspended.items()):
        if agent_id not in manager:
            del state.suspended[agent_id]
            continue
        agent = manager.get(agent_id)
        if (priority and agent.priority != priority) or (why and not reason.startswith(why)):
            continue
        del state.suspended[agent_id]
        if agent.state.value == "suspended":
            await manager.resume(agent_id)
            names.append(agent.name)
    return {"resumed": sorted(names)}


# -- circuit breakers ------------------------------------------------------------------------


def _agents(body: Mapping[str, Any]) -> list[str]:
    agents = body.get("agents")
    if agents == "*" or agents == ["*"]:
        return ["*"]
    if not isinstance(agents, list) or not agents or not all(isinstance(a, str) for a in agents):
        raise ValidationError("agents must be a list of agent names, or '*' for every agent")
    return list(agents)


async def _breaker_open(node: Node, body: Mapping[str, Any]) -> dict[str, Any]:
    state = _state(node)
    now = time.monotonic()
    for name in _agents(body):
        state.breakers[name] = Breaker(opened_at=now)
    return {"open": sorted(state.breakers)}


async def _breaker_reset(node: Node, body: Mapping[str, Any]) -> dict[str, Any]:
    state = _state(node)
    duration = float(body.get("duration") or 0)
    names = list(state.breakers) if body.get("agents") in (None, "*", ["*"]) else _agents(body)
    now = time.monotonic()
    for name in names:
        breaker = state.breakers.get(name)
        if breaker is None:
            continue
        if duration > 0:
            breaker.closing_at, breaker.duration = now, duration
        else:
            del state.breakers[name]
    return {
        "open": sorted(n for n, b in state.breakers.items() if b.closing_at is None),
        "closing": sorted(n for n, b in state.breakers.items() if b.closing_at is not None),
    }


# -- isolation -------------------------------------------------------------------------------


async def _isolate(node: Node, body: Mapping[str, Any]) -> dict[str, Any]:
    state = _state(node)
    state.isolated = bool(body.get("isolated", True))
    cluster = node.cluster
    if cluster is not None:
        cluster.isolation_changed()
    return {"isolated": state.isolated}


ACTIONS = {
    "stop": _stop,
    "start": _start,
    "suspend": _suspend,
    "shed": _shed,
    "resume": _resume,
    "breaker-open": _breaker_open,
    "breaker-reset": _breaker_reset,
    "isolate": _isolate,
}
