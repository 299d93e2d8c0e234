"""Deploying on the node the placement driver picks, this one or another.

- :class:`DeploySpec`: what a deploy takes besides the module (limits, capabilities,
  restart policy, allow-list, whether to start, the agent id).
- :func:`deploy_local`: the one way an agent is deployed on this node. The REST route,
  the ``deploy`` control op (a deploy placed here by another node) and failover all
  go through it.
- :func:`node_loads` and :func:`choose_node`: the live members, with the load they
  gossip, ranked by the placement driver and the ``caxton_placement_filter`` /
  ``caxton_placement_score`` hooks (:func:`caxton.placement.rank_nodes`).
- :func:`place`: choose, then deploy here or send the module and the spec to the
  chosen node (CONTROL op ``deploy``, sealed: :mod:`caxton.cluster.trust`), whose
  answer is the agent as that node reports it, or its own error passed through.

See docs/cluster.md, "Placement and failover".
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from caxton.agents.model import capabilities_to_dict, validate_name
from caxton.drivers import NodeLoad, PlacementRequest, PlacementStrategy
from caxton.drivers.membership import MemberStatus
from caxton.errors import (
    CaxtonError,
    Conflict,
    PayloadTooLarge,
    ServiceUnavailable,
    TransportError,
    ValidationError,
)
from caxton.placement import rank_nodes
from caxton.plugins import PluginHost, error_line

if TYPE_CHECKING:
    from caxton.agents import Agent
    from caxton.cluster.service import Cluster
    from caxton.node import Node

__all__ = [
    "DeploySpec",
    "NodeUnreachable",
    "RemoteError",
    "UnknownNode",
    "choose_node",
    "deploy_local",
    "node_loads",
    "place",
]

log = logging.getLogger("caxton.cluster")

#: Seconds a node placing an agent elsewhere waits for the deploy (compiling included).
DEPLOY_TIMEOUT = 30.0
#: Room left in a transport frame for the spec and the framing around the module.
FRAME_OVERHEAD = 64 * 1024

_REACHABLE = (MemberStatus.ALIVE, MemberStatus.SUSPECT)


class UnknownNode(ValidationError):
    error = "Unknown node"


class NodeUnreachable(Conflict):
    error = "Node not reachable"


class RemoteError(CaxtonError):
    """An error another node answered with, passed through with its status and title."""

    def __init__(self, status: int, error: str, message: str, details: str | None = None):
        super().__init__(message, details=details)
        self.http_status = status
        self.error = error


@dataclass(frozen=True)
class DeploySpec:
    """Everything a deploy takes besides the module's bytes."""

    name: str
    limits: Mapping[str, int] | None = None
    capabilities: Mapping[str, Any] | None = None
    restart_policy: Mapping[str, Any] | None = None
    start: bool = True
    #: The agent's own allow-list; None: ``security.agent_policy`` (or everyone).
    allowed_senders: Sequence[str] | None = None
    #: Keep this id (failover moves an agent under its id); None: a new one.
    agent_id: str | None = None
    #: Priority class: low, normal, high or critical (caxton.emergency).
    priority: str = "normal"

    @classmethod
    def of_agent(cls, agent: Agent, allowed_senders: Sequence[str] | None) -> DeploySpec:
        """The spec that deploys ``agent`` again, elsewhere, under the same id."""
        return cls(
            name=agent.name,
            limits=dataclasses.asdict(agent.limits),
            capabilities=capabilities_to_dict(agent.capabilities),
            restart_policy=dataclasses.asdict(agent.restart_policy),
            allowed_senders=list(allowed_senders) if allowed_senders is not None else None,
            agent_id=agent.id,
            priority=agent.priority,
        )

    def to_wire(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("limits", "capabilities", "restart_policy"):
            if data[key] is not None:
                data[key] = dict(data[key])
        if self.allowed_senders is not None:
            data["allowed_senders"] = list(self.allowed_senders)
        return data

    @classmethod
    def from_wire(cls, data: Any) -> DeploySpec:
        """The spec another node sent; ValidationError when it is malformed."""
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise ValidationError("malformed deployment spec: no agent name")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(f"malformed deployment spec: unknown {', '.join(unknown)}")
        for key in ("limits", "capabilities", "restart_policy"):
            if data.get(key) is not None and not isinstance(data[key], Mapping):
                raise ValidationError(f"malformed deployment spec: {key} is not a table")
        senders = data.get("allowed_senders")
        if senders is not None and not (
            isinstance(senders, list) and all(isinstance(s, str) for s in senders)
        ):
            raise ValidationError("malformed deployment spec: allowed_senders")
        agent_id = data.get("agent_id")
        if agent_id is not None and not isinstance(agent_id, str):
            raise ValidationError("malformed deployment spec: agent_id")
        if not isinstance(data.get("priority", "normal"), str):
            raise ValidationError("malformed deployment spec: priority")
        return cls(**{**data, "start": bool(data.get("start", True))})


async def deploy_local(
    node: Node, spec: DeploySpec, wasm: bytes, kv: Mapping[bytes, bytes] | None = None
) -> Agent:
    """Deploy on this node: the allow-list first (in place before the agent can
    receive anything, restored if the deploy fails), then the agent manager.
    ``kv``: the key/value state to start with (a failover's replica)."""
    manager = node.agents
    if manager is None:
        raise ServiceUnavailable(f"the agents service of node {node.node_id} is not running")
    policy = node.context.services.get("agent_policy")
    name = validate_name(spec.name)  # before the allow-list row is queued for the store
    claimed: set[str] = set()
    cluster = node.cluster
    if spec.agent_id is None and cluster is not None:
        # A new agent (a failover or a move carries its id): one per name in the cluster.
        spec = dataclasses.replace(spec, agent_id=str(uuid.uuid4()))
        claimed = await cluster.names.claim(name, spec.agent_id)
    previous = policy.deployed_senders(name) if policy is not None else None
    if policy is not None:
        policy.set(name, spec.allowed_senders)
    try:
        agent: Agent = await manager.deploy(
            spec.name,
            wasm,
            limits=spec.limits,
            capabilities=spec.capabilities,
            restart_policy=spec.restart_policy,
            start=spec.start,
            agent_id=spec.agent_id,
            kv=kv,
            priority=spec.priority,
        )
    except BaseException:
        if policy is not None:
            policy.set(name, previous)
        if claimed:
            await cluster.names.release(name, str(spec.agent_id), claimed)
        raise
    return agent


# -- choosing the node ------------------------------------------------------------------


def node_loads(node: Node) -> list[NodeLoad]:
    """This node and every reachable member, with the load they gossip."""
    cluster = node.cluster
    if cluster is None:
        agents = len(node.agents) if node.agents is not None else 0
        return [NodeLoad(node.node_id, agents=agents)]
    loads = []
    for member in cluster.membership.members():
        if member.status not in _REACHABLE and member.node_id != node.node_id:
            continue
        meta = dict(member.meta)
        if meta.get("isolated"):
            continue  # taken out of placement (caxton cluster isolate)
        labels = meta.get("labels")
        loads.append(
            NodeLoad(
                member.node_id,
                agents=_number(meta.get("agents"), int),
                cpu_percent=_number(meta.get("cpu"), float),
                memory_bytes=_number(meta.get("memory"), int),
                region=str(meta.get("region") or ""),
                zone=str(meta.get("zone") or ""),
                labels={str(k): str(v) for k, v in labels.items()}
                if isinstance(labels, Mapping)
                else {},
            )
        )
    return sorted(loads, key=lambda load: load.node_id)


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    try:
        return kind(value or 0)
    except (TypeError, ValueError):
        return kind(0)


def strategy_named(node: Node, name: str | None) -> PlacementStrategy:
    """The node's placement driver, or the installed one ``name`` asks for."""
    selected = node.host.selected.get("placement")
    if name is None or name == selected:
        driver: PlacementStrategy = node.placement
        return driver
    cache: dict[str, PlacementStrategy] = node.context.services.setdefault(
        "placement_strategies", {}
    )
    if name not in cache:
        cls = node.host.driver_class("placement", name)  # DriverNotFound names the installed
        try:
            # The driver's own config section, validated as for the selected driver.
            values = PluginHost.driver_config(cls, node.config)
            cache[name] = cls(values, node.context)  # type: ignore[assignment]
        except CaxtonError:
            raise
        except Exception as exc:
            raise ValidationError(
                f"placement strategy '{name}' failed to load: {error_line(exc)}"
            ) from exc
    return cache[name]


def choose_node(node: Node, request: PlacementRequest) -> str:
    """The node ``request`` places the agent on.

    :class:`UnknownNode` for a ``target_node`` that is not a member,
    :class:`NodeUnreachable` for one that failed or left,
    :class:`caxton.placement.NoPlacement` when filters leave nothing. ``prefer_nodes``
    is a preference: nodes there that are unknown or down are passed over.
    """
    members = _members(node)
    target = request.target_node
    if target is not None and target not in members:
        raise UnknownNode(
            f"unknown node '{target}': the cluster's nodes are {', '.join(sorted(members))}"
        )
    if target is not None and members[target] not in _REACHABLE_NAMES:
        raise NodeUnreachable(
            f"node '{target}' is not reachable: it is {members[target]}; choose another "
            f"target_node or leave it out to let the placement strategy choose"
        )
    strategy = strategy_named(node, request.strategy)
    ranked = rank_nodes(node.hook, strategy, request, node_loads(node))
    return ranked[0].node_id


_REACHABLE_NAMES = frozenset(status.value for status in _REACHABLE) | {"local"}


def _members(node: Node) -> dict[str, str]:
    """node id -> status of every member this node knows, itself included."""
    if node.cluster is None:
        return {node.node_id: "local"}
    found = {m.node_id: m.status.value for m in node.cluster.membership.members()}
    found[node.node_id] = "local"
    return found


# -- deploying there ------------------------------------------------------------------


async def place(
    node: Node, spec: DeploySpec, wasm: bytes, request: PlacementRequest
) -> tuple[dict[str, Any], bool]:
    """Deploy where ``request`` places the agent: ``(the agent as its node reports
    it, whether it is this node)``."""
    chosen = choose_node(node, request)
    if chosen == node.node_id:
        return (await deploy_local(node, spec, wasm)).to_dict(), True
    cluster: Cluster = node.cluster
    return await deploy_remote(cluster, chosen, spec, wasm), False


async def deploy_remote(
    cluster: Cluster, node_id: str, spec: DeploySpec, wasm: bytes
) -> dict[str, Any]:
    """Send ``spec`` and ``wasm`` to ``node_id`` and return the agent it deployed."""
    member = cluster._live(node_id)
    if member is None:
        raise NodeUnreachable(f"node '{node_id}' is not reachable (failed or left)")
    max_frame = int(cluster.node.config.get("transport.max_frame_size") or 16 * 1024 * 1024)
    if len(wasm) + FRAME_OVERHEAD > max_frame:
        raise PayloadTooLarge(
            f"the module ({len(wasm)} bytes) is too large to send to node '{node_id}': "
            f"transport.max_frame_size is {max_frame} bytes; deploy it on that node's API"
        )
    sealed = cluster.failover.trust.seal({"spec": spec.to_wire(), "wasm": wasm})
    try:
        answer = await cluster._control(member.address, DEPLOY_TIMEOUT, "deploy", sealed)
    except TransportError as exc:
        raise NodeUnreachable(
            f"node '{node_id}' is not reachable: {exc}; if it answered late the agent may "
            f"be deployed there all the same (caxton agents list --by-node)"
        ) from None
    return unpack_answer(node_id, answer)


def unpack_answer(node_id: str, answer: Any) -> dict[str, Any]:
    """The agent of an ``["ok", agent]`` answer; raise the error of an ``["error", ...]``."""
    if isinstance(answer, list) and len(answer) == 2 and answer[0] == "ok":
        agent: dict[str, Any] = answer[1]
        if isinstance(agent, dict):
            return agent
    if isinstance(answer, list) and len(answer) == 5 and answer[0] == "error":
        _, status, error, message, details = answer
        status = int(status) if isinstance(status, int) and 400 <= status < 600 else 502
        raise RemoteError(status, str(error), f"node '{node_id}': {message}", details)
    raise RemoteError(502, "Bad answer", f"node '{node_id}' gave a malformed answer to the deploy")


async def on_deploy(node: Node, sender: str, body: Any) -> list[Any]:
    """Deploy what ``sender`` placed here; the answer :func:`unpack_answer` reads."""
    try:
        if not isinstance(body, Mapping) or not isinstance(body.get("wasm"), bytes):
            raise ValidationError("malformed deploy request: no module")
        spec = DeploySpec.from_wire(body.get("spec"))
        if node.cluster is not None:  # a minority node takes no deploys, local or placed
            node.cluster.partition.check_write(f"deploying agent '{spec.name}'")
        agent = await deploy_local(node, spec, body["wasm"])
    except CaxtonError as exc:
        return error_answer(exc)
    except Exception as exc:  # a bug here must reach the client as an error, not a hang
        log.exception("deploying an agent placed here by %s failed", sender)
        return ["error", 502, "Remote deploy failed", error_line(exc), None]
    log.info("deployed agent %s (%s), placed here by node %s", agent.name, agent.id, sender)
    return ["ok", agent.to_dict()]


def error_answer(exc: CaxtonError) -> list[Any]:
    return ["error", exc.http_status, exc.error, str(exc), exc.details]
