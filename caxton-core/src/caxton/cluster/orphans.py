"""Agents that run on no node while their owner lives: a holder restarts them.

A failover (:mod:`caxton.cluster.failover`) restarts the agents of a node that *failed*.
An agent can also end up running nowhere while its node lives: a takeover fences the
owner (the owner promises the next generation and removes its copy; under a one-way cut
its answer is lost) and then does not get a majority of every replica set it must ask;
when the owner is seen again, the failover that was pending is dropped, since the node
did not fail after all. The fault campaign's long runs lost every id a ledger
acknowledged after that (docs/reliability.md).

So every node looks, each :data:`LOOK_INTERVAL`, at the replicas it keeps. One whose
agent no live node's registry entry names is *orphaned* when its owner, asked directly
(``owns``), does not host it and has promised, or this node has promised, a generation
above the replica's (a takeover began: the owner's copy was fenced, not removed by an
operator), and no node that proposed such a promise (a would-be owner, asked in turn)
hosts it either. The replica's taker (its first live holder, :meth:`Failover.taker`)
then restarts it through the normal takeover (:meth:`Ownership.take`: a majority of
every replica set in force promises a new generation, the highest state among them is
kept), once the agent has been an orphan for :data:`GRACE` (a takeover or a live move
under way finishes first), and again with a growing backoff until it runs somewhere.
Every decision not to act is logged with its reason (an ``orphan-held-back`` event
when the reason changes) and looked at again, after 0.5 s doubling to 8 s.

Safety does not rest on any of these observations: the takeover is fenced, so a copy
that still runs somewhere unseen is fenced by it, never doubled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from caxton.cluster.ownership import Fence
from caxton.drivers.membership import MemberStatus
from caxton.drivers.partition import PartitionMode
from caxton.errors import CaxtonError, NotFound

if TYPE_CHECKING:
    from caxton.cluster.failover import Failover, Replica

__all__ = ["GRACE", "LOOK_INTERVAL", "Orphans"]

log = logging.getLogger("caxton.cluster")

#: Seconds between two looks at the replicas kept here.
LOOK_INTERVAL = 1.0
#: Seconds an agent must have run nowhere before a holder restarts it.
GRACE = 2.0
#: Seconds a node has to answer ``owns``.
OWNS_TIMEOUT = 1.0
#: Would-be owners asked in turn (each may name later ones) before giving up.
HOPS = 4
#: Seconds before a restart that did not complete is tried again, doubling up to the max.
RETRY_FIRST = 0.5
RETRY_MAX = 8.0


@dataclass
class _Orphan:
    """An agent kept here that no registry entry shows running."""

    since: float
    reason: str = ""
    attempts: int = 0
    next_try: float = 0.0
    backoff: float = RETRY_FIRST


class Orphans:
    """Restarts the agents whose replica this node keeps and that run on no node."""

    def __init__(self, failover: Failover) -> None:
        self.failover = failover
        self.cluster = failover.cluster
        self.node_id = failover.node_id
        self._seen: dict[str, _Orphan] = {}

    def start(self) -> None:
        self.cluster._spawn(self._loop())

    async def _loop(self) -> None:
        while self.failover.started:
            await asyncio.sleep(LOOK_INTERVAL)
            try:
                await self.look()
            except CaxtonError as exc:
                log.warning("looking for agents that run on no node failed: %s", exc)

    async def look(self) -> None:
        """Look once at every replica kept here; restart the orphans this node takes."""
        failover = self.failover
        if not failover.enabled or not failover.ownership.enabled or self.cluster.stopping_all:
            return
        unseen = [r for r in list(failover.replicas.values()) if not self._seen_running(r)]
        for agent_id in set(self._seen) - {r.agent_id for r in unseen}:
            del self._seen[agent_id]
        now = time.monotonic()
        for replica in unseen:
            orphan = self._seen.setdefault(replica.agent_id, _Orphan(now))
            if now < orphan.next_try:
                continue
            reason = await self.why_not(replica)
            if reason is None and now - orphan.since < GRACE:
                reason = f"it has run on no node for less than {GRACE:g}s"
            elif reason is not None:
                # Asked again later and later (a replica kept of an agent its owner
                # removed costs a question every RETRY_MAX, not every look).
                orphan.next_try = now + orphan.backoff
                orphan.backoff = min(orphan.backoff * 2, RETRY_MAX)
            if reason is not None:
                self._held_back(replica, orphan, reason)
                continue
            orphan.attempts += 1
            failover._taking.add(replica.agent_id)
            self.cluster._spawn(self._restart(replica, orphan))

    def _seen_running(self, replica: Replica) -> bool:
        """Whether a live node's registry entry (or this node) shows the agent."""
        agents = self.failover.node.agents
        if agents is not None and replica.agent_id in agents:
            return True
        return any(
            entry.agent_id == replica.agent_id
            and (entry.node_id == self.node_id or self.cluster._live(entry.node_id) is not None)
            for entry in self.cluster.registry.lookup(replica.name)
        )

    async def why_not(self, replica: Replica) -> str | None:
        """Why this node may not restart ``replica``'s agent now (None: it may)."""
        failover = self.failover
        owner = replica.owner
        if replica.agent_id in failover._taking:
            return "a takeover of it is under way here"
        taker = failover.taker(replica)
        if taker != self.node_id:
            return f"{taker or 'no live holder'} restarts it (its first live holder)"
        mode = self.cluster.partition.mode
        if mode is not PartitionMode.READ_WRITE:
            return f"node {self.node_id} is {mode.value}"
        if owner in failover._redistributions:
            return f"the failover of {owner} restarts it"
        if self.cluster._live(owner) is None:
            self._owner_gone(owner)
            return f"its owner {owner} is not live: its failover restarts it"
        answer = await self._owns(owner, replica.agent_id)
        if answer is None:
            return f"its owner {owner} does not answer (it may still run it)"
        hosted, promised, proposers = answer
        if hosted:
            return f"its owner {owner} runs it (generation {hosted})"
        fence = failover.ownership.fences.get(replica.agent_id, Fence())
        if max(promised, fence.promised) <= replica.generation:
            return (
                f"its owner {owner} does not run it and no takeover promised a generation "
                f"above {replica.generation}: it was removed there"
            )
        asked = {owner, self.node_id}
        todo = proposers + sorted({m[0] for _, m in fence.proposals if m})
        for _ in range(HOPS):
            todo = [p for p in dict.fromkeys(todo) if p not in asked]
            if not todo:
                return None
            later: list[str] = []
            for node_id in todo:
                asked.add(node_id)
                if self.cluster._live(node_id) is None:
                    continue  # failed: its own failover covers what it ran
                found = await self._owns(node_id, replica.agent_id)
                if found is None:
                    return f"{node_id}, which proposed a newer generation, does not answer"
                if found[0]:
                    return f"{node_id} runs it (generation {found[0]})"
                later += found[2]
            todo = later
        return None

    async def _owns(self, node_id: str, agent_id: str) -> tuple[int, int, list[str]] | None:
        """``node_id``'s answer to ``owns`` (:meth:`Ownership.on_owns`), None if none."""
        member = self.cluster._live(node_id)
        if member is None:
            return None
        body = self.failover.trust.seal({"agent_id": agent_id})
        try:
            answer: Any = await self.cluster._control(member.address, OWNS_TIMEOUT, "owns", body)
        except CaxtonError as exc:
            log.debug("asking %s whether it runs %s failed: %s", node_id, agent_id, exc)
            return None
        if not (
            isinstance(answer, list)
            and len(answer) == 3
            and isinstance(answer[0], int)
            and isinstance(answer[1], int)
            and isinstance(answer[2], list)
        ):
            return None
        return answer[0], answer[1], [str(p) for p in answer[2]]

    def _owner_gone(self, owner: str) -> None:
        """An owner that failed while no failover here covers it (this node started
        after it failed, or its failover was dropped): start one, with its checks."""
        try:
            status = self.cluster._member(owner).status
        except NotFound:
            return
        if status is MemberStatus.FAILED:
            self.failover._node_failed(owner, ())

    def _held_back(self, replica: Replica, orphan: _Orphan, reason: str) -> None:
        if reason == orphan.reason:
            return
        orphan.reason = reason
        log.info("not restarting %s (runs on no node) yet: %s", replica.name, reason)
        self.cluster.events.record(
            "orphan-held-back",
            f"Agent '{replica.name}' of {replica.owner} runs on no node; not restarted on "
            f"{self.node_id} yet: {reason}; looking again",
            node_id=replica.owner,
            level="debug",
            details={"agent": replica.name, "reason": reason},
        )

    async def _restart(self, replica: Replica, orphan: _Orphan) -> None:
        failover = self.failover
        try:
            taken = await failover._take(replica, True)
        finally:
            failover._taking.discard(replica.agent_id)
        if taken:
            self._seen.pop(replica.agent_id, None)
            self.cluster.events.record(
                "agent-restarted",
                f"Agent '{replica.name}' ran on no node (its owner {replica.owner} lost its "
                f"copy to a takeover that did not complete): restarted on {self.node_id} "
                f"at generation {failover.generation(replica.agent_id)}",
                node_id=self.node_id,
                level="warning",
            )
            return
        orphan.next_try = time.monotonic() + orphan.backoff
        orphan.backoff = min(orphan.backoff * 2, RETRY_MAX)
        self._held_back(
            replica,
            orphan,
            f"restart {orphan.attempts} did not complete (see migration-failed); trying "
            f"again in {orphan.next_try - time.monotonic():.1f}s",
        )
