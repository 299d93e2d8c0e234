"""Rebalance: plan live moves with the placement driver, then carry them out.

:func:`plan` takes the agents the registry shows on the reachable nodes and, from the
most loaded node down, asks the placement strategy (``--strategy``, default the node's
``plugins.placement``; filters and score hooks apply, :func:`caxton.placement.rank_nodes`)
where each agent should run, with the loads as they will be after the moves planned so
far. An agent moves when the strategy's first choice is another node and the move
leaves that node with fewer agents than its current node keeps: so every move narrows
the spread, the plan ends (the sum of squared counts falls at each move), and a
strategy plugin decides *where* while the counts decide *whether*.

:func:`execute` carries the plan out through :func:`caxton.cluster.agent_ops.perform`
(each move on the agent's node, as ``caxton agent move`` does), at most
``max_parallel`` at once, and reports what moved and what did not (with why).

:class:`AutoRebalance` is ``coordination.cluster.rebalance = "on-join"``: when a node
joins or comes back, the lowest live node id that holds the quorum lease waits a few
seconds (the newcomer's load is gossiped), then rebalances, at most once per
``coordination.cluster.rebalance_interval``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from caxton.cluster.placement import node_loads, strategy_named
from caxton.drivers import PlacementRequest
from caxton.drivers.partition import PartitionMode
from caxton.errors import CaxtonError
from caxton.placement import NoPlacement, rank_nodes

if TYPE_CHECKING:
    from caxton.cluster.agent_ops import Caller
    from caxton.cluster.service import Cluster
    from caxton.node import Node

__all__ = ["AutoRebalance", "PlannedMove", "RebalanceReport", "execute", "plan"]

log = logging.getLogger("caxton.cluster")

#: Moves carried out at once unless told otherwise.
DEFAULT_PARALLEL = 4
#: Seconds an automatic rebalance waits after a join (the newcomer's load spreads).
SETTLE_DELAY = 3.0


@dataclass(frozen=True)
class PlannedMove:
    agent: str
    agent_id: str
    source: str
    target: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass
class RebalanceReport:
    strategy: str
    plan: list[PlannedMove]
    moved: list[PlannedMove] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "plan": [m.to_dict() for m in self.plan],
            "moved": [m.to_dict() for m in self.moved],
            "failed": dict(self.failed),
            "seconds": round(self.seconds, 3),
            "before": dict(self.before),
            "after": dict(self.after),
        }


def plan(node: Node, strategy: str | None = None) -> RebalanceReport:
    """The moves that even out the agents over the reachable nodes (none when they are
    within one of each other for a count-based strategy)."""
    cluster: Cluster = node.cluster
    driver = strategy_named(node, strategy)
    loads = {c.node_id: c for c in node_loads(node)}
    agents: dict[str, list[tuple[str, str]]] = {n: [] for n in loads}
    for entry in cluster.registry.entries():
        if entry.agent_id and entry.routable and entry.node_id in agents:
            agents[entry.node_id].append((entry.name, entry.agent_id))
    for listed in agents.values():
        listed.sort()
    counts = {n: len(listed) for n, listed in agents.items()}
    name = strategy or node.host.selected.get("placement") or "least-loaded"
    report = RebalanceReport(str(name), [], before=dict(counts))
    stuck: set[str] = set()  # agents the strategy keeps where they are
    while True:
        movable = [n for n in counts if any(a[1] not in stuck for a in agents[n])]
        if not movable:
            break
        source = max(movable, key=lambda n: (counts[n], n))
        for agent_name, agent_id in [a for a in agents[source] if a[1] not in stuck]:
            target = _best(node, driver, loads, counts, source, agent_name, strategy)
            if target is None or counts[target] + 1 >= counts[source]:
                stuck.add(agent_id)
                continue
            agents[source].remove((agent_name, agent_id))
            agents[target].append((agent_name, agent_id))
            stuck.add(agent_id)  # one move per agent per plan
            counts[source] -= 1
            counts[target] += 1
            report.plan.append(PlannedMove(agent_name, agent_id, source, target))
            break
    report.after = dict(counts)
    return report


def _best(
    node: Node,
    driver: Any,
    loads: dict[str, Any],
    counts: dict[str, int],
    source: str,
    agent: str,
    strategy: str | None,
) -> str | None:
    candidates = [
        dataclasses.replace(load, agents=counts[n] - (1 if n == source else 0))
        for n, load in loads.items()
    ]
    try:
        ranked = rank_nodes(
            node.hook, driver, PlacementRequest(agent_name=agent, strategy=strategy), candidates
        )
    except NoPlacement:
        return None
    return ranked[0].node_id


async def execute(
    node: Node,
    report: RebalanceReport,
    caller: Caller,
    *,
    max_parallel: int = DEFAULT_PARALLEL,
    progress: Callable[[PlannedMove, str | None], None] | None = None,
) -> RebalanceReport:
    """Carry ``report.plan`` out, ``max_parallel`` moves at once; fill in what moved
    and what failed (agent name -> why). ``progress`` is called after each move with
    the error, or None."""
    from caxton.cluster.agent_ops import perform

    started = time.perf_counter()
    limit = asyncio.Semaphore(max(1, max_parallel))

    async def one(move: PlannedMove) -> None:
        async with limit:
            error: str | None = None
            try:
                await perform(node, "move", move.agent_id, caller, to=move.target)
            except CaxtonError as exc:
                error = str(exc)
            if error is None:
                report.moved.append(move)
            else:
                report.failed[move.agent] = error
            if progress is not None:
                progress(move, error)

    await asyncio.gather(*(one(m) for m in report.plan))
    report.seconds = time.perf_counter() - started
    node.cluster.events.record(
        "rebalanced",
        f"Rebalance ({report.strategy}): {len(report.moved)} of {len(report.plan)} agents "
        f"moved in {report.seconds:.1f}s"
        + (f"; not moved: {', '.join(sorted(report.failed))}" if report.failed else ""),
        node_id=node.node_id,
        level="warning" if report.failed else "info",
        details={"moved": len(report.moved), "failed": report.failed},
    )
    return report


class AutoRebalance:
    """``coordination.cluster.rebalance = "on-join"``: rebalance after a (re)join."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        settings = cluster.node.config["coordination.cluster"]
        self.enabled = settings.get("rebalance", "off") == "on-join"
        self.interval = float(settings.get("rebalance_interval", 60.0))
        self._last = -float("inf")
        self._task: asyncio.Task[None] | None = None

    def member_joined(self, node_id: str) -> None:
        if not self.enabled or node_id == self.cluster.node_id:
            return
        if self._task is None or self._task.done():
            self._task = self.cluster._spawn(self._after_join())

    def _leader(self) -> bool:
        """The lowest live node id acts (every node computes the same)."""
        live = [
            m.node_id
            for m in self.cluster.membership.members()
            if self.cluster._live(m.node_id) is not None or m.node_id == self.cluster.node_id
        ]
        return bool(live) and min(live) == self.cluster.node_id

    async def _after_join(self) -> None:
        loop = asyncio.get_running_loop()
        wait = max(SETTLE_DELAY, self._last + self.interval - loop.time())
        await asyncio.sleep(wait)
        cluster = self.cluster
        if not self._leader() or cluster.partition.mode is not PartitionMode.READ_WRITE:
            return
        self._last = loop.time()
        from caxton.cluster.agent_ops import Caller

        try:
            report = plan(cluster.node)
            if report.plan:
                caller = Caller(
                    name=f"node:{cluster.node_id} (rebalance on join)", roles=("operator",)
                )
                await execute(cluster.node, report, caller)
        except CaxtonError as exc:
            log.warning("automatic rebalance failed: %s", exc)
