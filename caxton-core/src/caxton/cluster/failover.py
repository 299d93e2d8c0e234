"""Replicas of this node's agents on peers; a failed node's agents restarted on one survivor.

**Replication.** Each agent deployed here is replicated to ``coordination.cluster.replicas``
peers (ranked by the placement driver and hooks): its module, stored once per sha256 in
the peer's ``modules`` table, and its :class:`~caxton.cluster.placement.DeploySpec`, with
the agent's *placement generation* and the ordered list of its holders. A holder that
already has the module is sent only the spec. The replicas are checked after every
deploy and removal, when members join, fail or leave, and every few seconds (a hot
swap changes the module): a holder that failed is replaced, a holder that came back is
told which replicas it should still keep (``holdings``).

**Failover.** When a member is declared *failed* (not when it leaves: a graceful leave
drains), SWIM has only said *when* to look; whether to act is decided from direct
contact (:mod:`caxton.cluster.lease`). A survivor restarts the failed node's agents only
when it holds the quorum lease itself (it is read-write), its own last round trip with
the failed node is at least ``partition.detection_timeout + partition.lease_drift_margin``
old, and a quorum of the known members answers now that theirs is too
(:meth:`Failover._holding_back`): then the failed node's lease has lapsed on its own
clock, so it refuses writes. Until then the survivor records why it holds back
(``Not redistributing N agents of n2 yet: ...``, once per reason) and looks again
(0.25 s doubling to 2 s, or when the lease must have lapsed), for as long as some of
the agents run nowhere and the node has not come back; ``cluster status`` lists these
pending failovers. Each agent the failed node hosted is restarted by exactly
one survivor: the first live node in the agent's holder list. Every holder has the same
list, so they all agree without talking; the taker deploys the agent under the same id
through :func:`~caxton.cluster.placement.deploy_local`, one generation higher, and the
registry spreads it. Every survivor records the progress for ``caxton cluster watch``.

**One copy.** If two nodes end up hosting the same agent (a failed node restarted with
its data, a healed partition, two survivors with different views), the registry shows
the same name and id on both, and the nodes compare placements (``claim``): the higher
generation wins, then the lower node id; the other removes its copy and logs it.

See docs/cluster.md, "Placement and failover".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from caxton import hookimpl
from caxton.cluster import wire
from caxton.cluster.lease import quorum_of
from caxton.cluster.orphans import Orphans
from caxton.cluster.ownership import OPS as OWNERSHIP_OPS
from caxton.cluster.ownership import Fence, Ownership
from caxton.cluster.placement import DeploySpec, deploy_local, error_answer, node_loads, on_deploy
from caxton.cluster.registry import ROUTABLE_STATES, AgentEntry
from caxton.cluster.trust import PeerTrust
from caxton.drivers import PlacementRequest
from caxton.drivers.partition import PartitionMode
from caxton.errors import AgentNotFound, CaxtonError, ValidationError
from caxton.placement import NoPlacement, rank_nodes

if TYPE_CHECKING:
    from caxton.agents import Agent
    from caxton.cluster.registry import Change
    from caxton.cluster.service import Cluster
    from caxton.drivers.membership import Member
    from caxton.drivers.transport import Frame
    from caxton.node import Node

__all__ = ["OPS", "Failover", "Replica", "wins"]

log = logging.getLogger("caxton.cluster")

#: The control ops :class:`Failover` answers (all sealed: :mod:`caxton.cluster.trust`).
OPS = frozenset({"deploy", "replica", "holdings", "claim"}) | OWNERSHIP_OPS
#: Seconds after which a survivor warns that a failed node's agents do not all run
#: somewhere again (it goes on trying).
REDISTRIBUTE_TIMEOUT = 30.0
#: Seconds before a failover held back is looked at again, doubling up to RETRY_MAX.
RETRY_FIRST = 0.25
RETRY_MAX = 2.0
#: Seconds between two checks of this node's replicas (catches hot swaps).
RECONCILE_INTERVAL = 5.0
#: Seconds a replica or claim request may take (sending a module included).
REPLICA_TIMEOUT = 15.0
#: Seconds between an agent's key/value change and its replicas being brought up to
#: date (changes in between go together).
KV_SYNC_DELAY = 0.1
#: Seconds a member has to answer the quorum check that precedes a failover.
QUORUM_TIMEOUT = 1.0


def wins(generation: int, node_id: str, other_generation: int, other_node: str) -> bool:
    """Does the placement ``(generation, node_id)`` win over the other one?"""
    return generation > other_generation or (
        generation == other_generation and node_id < other_node
    )


@dataclass(frozen=True)
class Replica:
    """Another node's agent, kept here so that it can be restarted if that node fails."""

    agent_id: str
    name: str
    owner: str
    generation: int
    module_sha256: str
    spec: DeploySpec
    #: The nodes holding a replica, in takeover order.
    holders: tuple[str, ...]

    def to_wire(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "name": self.name,
            "generation": self.generation,
            "module_sha256": self.module_sha256,
            "spec": self.spec.to_wire(),
            "holders": list(self.holders),
        }

    def record(self) -> dict[str, Any]:
        """The store's row (:meth:`caxton.store.Store.put_replica`)."""
        return {**self.to_wire(), "owner": self.owner}

    @classmethod
    def from_wire(cls, owner: str, data: Any) -> Replica:
        try:
            holders = data["holders"]
            replica = cls(
                agent_id=str(data["agent_id"]),
                name=str(data["name"]),
                owner=owner,
                generation=int(data["generation"]),
                module_sha256=str(data["module_sha256"]),
                spec=DeploySpec.from_wire(data["spec"]),
                holders=tuple(str(h) for h in holders),
            )
        except (KeyError, TypeError, ValueError):
            raise ValidationError("malformed replica") from None
        if len(replica.module_sha256) != 64 or not isinstance(holders, list):
            raise ValidationError("malformed replica")
        return replica


@dataclass
class _Redistribution:
    """A failed node's agents not yet seen running elsewhere."""

    node_id: str
    started: float
    pending: dict[str, str]  # agent id -> name
    #: Agent id -> its registry state when the node failed (a stopped one stays stopped).
    states: dict[str, str] = dataclasses.field(default_factory=dict)
    #: The failed node's lease has lapsed and a quorum confirmed it: takers may act.
    decided: bool = False
    #: Why this node held back the last time it looked ("" when it did not).
    waiting: str = ""
    attempts: int = 0
    overdue: bool = False


class Failover:
    """Replication and failover of one node (built by :class:`~caxton.cluster.Cluster`)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.node: Node = cluster.node
        self.node_id = cluster.node_id
        settings = self.node.config["coordination.cluster"]
        self.enabled = bool(settings.get("failover", True))
        self.copies = int(settings.get("replicas", 2))
        self.max_size = int(settings.get("replica_max_size", 8 * 1024 * 1024))
        #: "local": the agents' key/value state stays on this node (not replicated).
        self.durability = str(settings.get("durability", "quorum"))
        self.trust = PeerTrust(self.node)
        #: Replicas of other nodes' agents kept here, by agent id.
        self.replicas: dict[str, Replica] = {}
        #: Placement generation of the agents hosted here, by agent id.
        self.generations: dict[str, int] = {}
        #: Holders of the agents hosted here, by agent id (takeover order).
        self.holders: dict[str, tuple[str, ...]] = {}
        self._pushed: dict[str, tuple[Any, ...]] = {}
        #: Changes to each local agent's key/value state (part of what is replicated).
        self._kv_versions: dict[str, int] = {}
        self._kv_sync: asyncio.TimerHandle | None = None
        self._kv_too_large: set[str] = set()
        self._too_large: set[str] = set()
        self._dropping: set[str] = set()
        self._stale: set[str] = set()
        self._claims: set[tuple[str, str]] = set()
        self._joined: set[str] = set()
        self._redistributions: dict[str, _Redistribution] = {}
        #: Agents this node is restarting now (failover).
        self._taking: set[str] = set()
        self._reconcile_task: asyncio.Task[None] | None = None
        self._again = False
        self._plugin_name = f"caxton.failover.{self.node_id}"
        self.amnesic = False
        #: Agents removed from this node since it started (its holdings while amnesic).
        self._removed: set[str] = set()
        self.started = False
        #: Quorum replication of the agents' state and fenced takeovers (durability
        #: "quorum"); see caxton.cluster.ownership.
        self.ownership = Ownership(self)
        #: Agents kept here that run on no node while their owner lives.
        self.orphans = Orphans(self)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Load the replicas and generations kept here; take part in the hooks."""
        store = self.node.store
        for row in await store.load_replicas():
            try:
                replica = Replica.from_wire(str(row["owner"]), row)
            except ValidationError:
                log.warning("ignoring an unreadable replica of agent %s", row.get("name"))
                continue
            self.replicas[replica.agent_id] = replica
        self.generations = await store.load_placements()
        #: A new or lost data directory: this node does not know which of its agents
        #: peers may keep replicas of, so it tells holders only which to drop (those it
        #: removed), never "keep only these", until a rebuild (caxton.cluster.rebuild)
        #: has taken them back: replicas of a lost directory's agents survive its return.
        self.amnesic = bool(getattr(store, "created", False))
        await self.ownership.start()
        self.node.host.register(self, name=self._plugin_name)
        if self.node.agents is not None and self.durability == "async":
            self.node.agents.kv_listener = self._kv_changed
        self.started = True
        self.cluster._spawn(self._reconcile_loop())
        self.orphans.start()
        self.schedule_reconcile()

    def close(self) -> None:
        self.started = False
        self.ownership.close()
        if self._kv_sync is not None:
            self._kv_sync.cancel()
        if self.node.agents is not None and self.node.agents.kv_listener == self._kv_changed:
            self.node.agents.kv_listener = None
        with contextlib.suppress(Exception):
            self.node.host.pm.unregister(name=self._plugin_name)

    def generation(self, agent_id: str) -> int:
        """The placement generation of an agent hosted here (1: never moved)."""
        return self.generations.get(agent_id, 1)

    def pushed_to(self, agent_id: str) -> tuple[str, ...]:
        """The holders that all confirmed the latest replica of an agent hosted here."""
        pushed = self._pushed.get(agent_id)
        return tuple(pushed[0]) if pushed else ()

    # -- hooks: this node's agents and the members ------------------------------------

    @hookimpl
    def caxton_agent_deployed(self, node: Node, agent: Agent) -> None:
        if node is not self.node:
            return
        generation = self.generations.setdefault(agent.id, 1)
        node.store.put_placement(agent.id, agent.name, generation)
        replica = self.replicas.pop(agent.id, None)
        if replica is not None:  # hosted here now: the replica is superseded
            node.store.delete_replica(replica.agent_id, replica.module_sha256)
        self.schedule_reconcile()

    @hookimpl
    def caxton_agent_removed(self, node: Node, agent: Agent) -> None:
        if node is not self.node:
            return
        self.generations.pop(agent.id, None)
        self.ownership.owned.pop(agent.id, None)
        # Its key/value rows are gone with it: a promise answered from here must not
        # offer "the state of generation g" with nothing in it (the promise stays).
        # A copy a live move removed keeps them (this node may hold the new owner's),
        # and so does a fenced copy (the holder copy of its generation).
        if not self.ownership.keeps_state(agent.id):
            self.ownership.forget_state(agent.id)
        node.store.delete_placement(agent.id)
        self._pushed.pop(agent.id, None)
        holders = self.holders.pop(agent.id, ())
        # A stale copy removed after a claim leaves the replicas to the new owner.
        if agent.id in self._stale:
            self._stale.discard(agent.id)
            return
        self._removed.add(agent.id)
        for holder in holders:
            self.cluster._spawn(self._send_holdings(holder))

    @hookimpl
    def caxton_member_joined(self, node: Node, member: Member) -> None:
        if node is self.node and member.node_id != self.node_id:
            self._joined.add(member.node_id)
            # Back before its agents all ran elsewhere: claims settle the rest.
            self._redistributions.pop(member.node_id, None)
            self.schedule_reconcile()

    @hookimpl
    def caxton_member_left(self, node: Node, member: Member) -> None:
        if node is self.node:
            self.schedule_reconcile()

    @hookimpl
    def caxton_member_failed(self, node: Node, member: Member) -> None:
        if node is not self.node or member.node_id == self.node_id:
            return
        # Called before the cluster drops the member's agents from the registry (hooks
        # run before membership listeners): keep what it hosted, act on the next turn,
        # after "Node ... detected as failed" is recorded.
        entries = self.cluster.registry.entries(member.node_id)
        loop = self.cluster._get_loop()
        loop.call_soon(self._node_failed, member.node_id, entries)
        self.schedule_reconcile()

    # -- failover ---------------------------------------------------------------------

    def _node_failed(self, failed: str, entries: Sequence[AgentEntry]) -> None:
        if not self.started or not self.enabled or self.cluster.stopping_all:
            return
        replicas = [r for r in self.replicas.values() if r.owner == failed]
        # Names a plugin announced without an agent id are endpoints, not agents.
        agents = {e.agent_id: e.name for e in entries if e.agent_id}
        agents.update((r.agent_id, r.name) for r in replicas)
        if not agents:
            return
        redistribution = self._redistributions.get(failed)
        if redistribution is not None:  # failed again before it was done: more to do
            redistribution.pending.update(agents)
            return
        redistribution = _Redistribution(failed, time.monotonic(), dict(agents))
        redistribution.states = {e.agent_id: e.state for e in entries}
        self._redistributions[failed] = redistribution
        self.cluster._spawn(self._redistribute(redistribution))

    async def _redistribute(self, redistribution: _Redistribution) -> None:
        """Restart the failed node's agents this node should take, once its lease has
        lapsed on its own clock; try again until all of them run somewhere (or the node
        is back), and say why each time it holds back."""
        failed = redistribution.node_id
        events = self.cluster.events
        backoff = RETRY_FIRST
        while self.started and self._redistributions.get(failed) is redistribution:
            for entry in self.cluster.registry.entries():
                self._seen_running(entry)
            if not redistribution.pending:
                return
            todo = self._to_take(redistribution)
            wait = backoff
            if todo or not redistribution.decided:
                reason, wait = await self._holding_back(failed, backoff)
                redistribution.attempts += 1
                if reason is not None:
                    if reason != redistribution.waiting:
                        log.warning("not redistributing the agents of %s yet: %s", failed, reason)
                        events.record(
                            "redistribution-skipped",
                            f"Not redistributing {len(redistribution.pending)} agents of "
                            f"{failed} yet: {reason}; trying again",
                            node_id=failed,
                            level="warning",
                            details={"agents": len(redistribution.pending), "reason": reason},
                        )
                    redistribution.waiting = reason
                else:
                    redistribution.waiting = ""
                    if not redistribution.decided:
                        redistribution.decided = True
                        events.record(
                            "redistributing",
                            f"Redistributing {len(redistribution.pending)} agents from {failed}",
                            node_id=failed,
                            details={"agents": len(redistribution.pending)},
                        )
                    for replica in todo:
                        self._taking.add(replica.agent_id)
                        self.cluster._spawn(self._take_once(redistribution, replica))
            elapsed = time.monotonic() - redistribution.started
            if elapsed >= REDISTRIBUTE_TIMEOUT and not redistribution.overdue:
                redistribution.overdue = True
                names = sorted(redistribution.pending.values())
                events.record(
                    "redistribution-incomplete",
                    f"{len(names)} agents of {failed} were not redistributed after "
                    f"{REDISTRIBUTE_TIMEOUT:g}s: {', '.join(names)} (no live node holding "
                    f"their replica could take them; see coordination.cluster.replicas); "
                    f"still trying",
                    node_id=failed,
                    level="warning",
                )
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, RETRY_MAX)

    def _to_take(self, redistribution: _Redistribution) -> list[Replica]:
        """The failed node's agents this node holds, should take, and is not taking."""
        return [
            replica
            for agent_id in redistribution.pending
            if (replica := self.replicas.get(agent_id)) is not None
            and agent_id not in self._taking
            and self.taker(replica) == self.node_id
        ]

    async def _take_once(self, redistribution: _Redistribution, replica: Replica) -> None:
        state = redistribution.states.get(replica.agent_id, "running")
        try:
            await self._take(replica, state in ROUTABLE_STATES)
        finally:
            self._taking.discard(replica.agent_id)

    async def _holding_back(self, failed: str, backoff: float) -> tuple[str | None, float]:
        """Why this node may not restart ``failed``'s agents now (None: it may), and
        the seconds until it is worth asking again.

        It may when it is read-write itself (it holds the quorum lease), its own last
        round trip with ``failed`` is at least ``detection_timeout + lease_drift_margin``
        old, and a quorum of the known members (this node included) answers now that
        theirs is too: then ``failed`` cannot have had round trips with a quorum within
        its lease, whatever its clock says (see :mod:`caxton.cluster.lease`).
        """
        mode = self.cluster.partition.mode
        if mode is not PartitionMode.READ_WRITE:
            decision = self.cluster.partition.decision
            why = decision.reason if decision is not None else ""
            return f"node {self.node_id} is {mode.value} ({why})", backoff
        lease = self.cluster.lease
        limit = lease.settings.failover_after
        silent = lease.silent_for(failed)
        if silent < limit:
            return (
                f"{failed} may still hold its lease on its own clock (last round trip "
                f"{silent:.1f}s ago; it lapses after {limit:g}s, partition.detection_timeout "
                f"+ partition.lease_drift_margin)",
                limit - silent + 0.01,
            )
        silences, quorum = await self.silences(failed, enough=limit)
        confirmed = sum(s >= limit for s in silences)
        if confirmed < quorum:
            # Members that answered but heard from it more recently: ask again when
            # enough of them will have been silent long enough (no backoff to wait out).
            ordered = sorted(silences, reverse=True)
            soon = len(ordered) >= quorum and ordered[quorum - 1] >= 0
            return (
                f"only {confirmed} nodes answer that {failed} was silent for {limit:g}s, "
                f"quorum {quorum}",
                limit - ordered[quorum - 1] + 0.01 if soon else backoff,
            )
        return None, backoff

    async def silences(self, failed: str, *, enough: float = math.inf) -> tuple[list[float], int]:
        """Seconds since each known member that answers now (this node included) last
        had a round trip with ``failed`` (``inf``: never), and the quorum.

        Stops asking once a quorum of the answers is at least ``enough`` seconds: the
        failover needs no more, and a member that does not answer (on the far side of
        the partition but not yet declared failed here) would hold it back for the
        whole ``QUORUM_TIMEOUT`` (the unanswered requests are cancelled)."""
        lease = self.cluster.lease
        known = lease.known()
        quorum = quorum_of(known, lease.quorum_size)

        async def ask(node_id: str) -> float | None:
            try:
                member = self.cluster._member(node_id)
                silent = await self.cluster._control(
                    member.address, QUORUM_TIMEOUT, "silence", failed
                )
            except CaxtonError:
                return None
            if silent is None:
                return math.inf
            return float(silent) if isinstance(silent, int | float) else None

        others = [n for n in known if n not in (self.node_id, failed) and self.cluster._live(n)]
        silences = [lease.silent_for(failed)]
        asking = [asyncio.ensure_future(ask(n)) for n in others]
        try:
            for answered in asyncio.as_completed(asking):
                silent = await answered
                if silent is not None:
                    silences.append(silent)
                if sum(s >= enough for s in silences) >= quorum:
                    break
        finally:
            for task in asking:
                task.cancel()
        return silences, quorum

    def pending(self) -> list[dict[str, Any]]:
        """The failed nodes whose agents do not all run again yet (``cluster status``)."""
        now = time.monotonic()
        return [
            {
                "node_id": r.node_id,
                "agents": sorted(r.pending.values()),
                "seconds": round(now - r.started, 3),
                "decided": r.decided,
                "waiting": r.waiting,
                "attempts": r.attempts,
            }
            for r in self._redistributions.values()
        ]

    def taker(self, replica: Replica) -> str | None:
        """The survivor that restarts ``replica``'s agent: its first live holder."""
        for holder in replica.holders:
            if holder == self.node_id or (
                holder != replica.owner and self.cluster._live(holder) is not None
            ):
                return holder
        return None

    async def _take(
        self,
        replica: Replica,
        start: bool,
        *,
        kv: Mapping[bytes, bytes] | None = None,
        moved: bool = False,
    ) -> bool:
        """Restart another node's agent here, under its id, one generation higher (a
        failover, or a live move: :mod:`caxton.cluster.moves`). ``kv``: the state to
        start with when it is not replicated by quorum (a move sends it along); by
        default the replica's; ``moved``: a live move, whose source may stay a holder
        (:meth:`Ownership.take`). True once it is deployed here."""
        agents = self.node.agents
        if agents is None or replica.agent_id in agents:
            return False
        for entry in self.cluster.registry.lookup(replica.name):
            if entry.agent_id == replica.agent_id and entry.node_id != replica.owner:
                return False  # already running elsewhere
        wasm = await self.node.store.load_module(replica.module_sha256)
        events = self.cluster.events
        if wasm is None:
            events.record(
                "migration-failed",
                f"Agent '{replica.name}' of {replica.owner} cannot be restarted on "
                f"{self.node_id}: its module {replica.module_sha256[:12]} is missing",
                node_id=replica.owner,
                level="warning",
            )
            return False
        if self.ownership.enabled:
            taken = await self.ownership.take(replica, moved=moved)
            if taken is None or replica.agent_id in agents:
                return False
            generation, kv, holders = taken
        else:
            generation = replica.generation + 1
            holders = tuple(h for h in replica.holders if h != self.node_id)
            if kv is None:
                kv = await self.node.store.load_kv(replica.agent_id)
        self.generations[replica.agent_id] = generation
        self.holders[replica.agent_id] = holders
        spec = dataclasses.replace(replica.spec, agent_id=replica.agent_id, start=start)
        try:
            await deploy_local(self.node, spec, wasm, kv)
        except CaxtonError as exc:
            self.generations.pop(replica.agent_id, None)
            self.holders.pop(replica.agent_id, None)
            events.record(
                "migration-failed",
                f"Agent '{replica.name}' of {replica.owner} could not be restarted on "
                f"{self.node_id}: {exc}",
                node_id=replica.owner,
                level="warning",
            )
            return False
        self._migrated(replica.owner, replica.agent_id, replica.name, self.node_id)
        return True

    def _seen_running(self, entry: AgentEntry) -> None:
        """A registry entry: is it one of a failed node's agents, running again?"""
        for failed, redistribution in list(self._redistributions.items()):
            if entry.node_id != failed and entry.agent_id in redistribution.pending:
                self._migrated(failed, entry.agent_id, entry.name, entry.node_id)

    def _migrated(self, failed: str, agent_id: str, name: str, where: str) -> None:
        redistribution = self._redistributions.get(failed)
        if redistribution is None or redistribution.pending.pop(agent_id, None) is None:
            return
        events = self.cluster.events
        events.record("agent-migrated", f"Agent '{name}' migrated to {where}", node_id=where)
        if not redistribution.pending:
            del self._redistributions[failed]
            took = time.monotonic() - redistribution.started
            events.record(
                "redistributed",
                f"All agents successfully redistributed ({took:.1f}s)",
                node_id=failed,
                details={"seconds": round(took, 3)},
            )

    # -- one copy: claims ---------------------------------------------------------------

    def registry_changed(self, changes: Sequence[Change]) -> None:
        """Peers' registry entries changed (called by the cluster)."""
        if not self.started:
            return
        agents = self.node.agents
        for kind, entry in changes:
            if kind == "unregistered" or entry.node_id == self.node_id:
                continue
            self._seen_running(entry)
            if agents is None or not entry.agent_id or entry.name not in agents:
                continue
            if agents.get(entry.name).id == entry.agent_id:
                self.cluster._spawn(self._claim(entry.node_id, entry.name, entry.agent_id))

    async def _claim(self, peer: str, name: str, agent_id: str) -> None:
        """Compare placements with ``peer``, which also hosts ``agent_id``."""
        key = (agent_id, peer)
        if key in self._claims:
            return
        self._claims.add(key)
        try:
            member = self.cluster._live(peer)
            if member is None:
                return
            mine = self.generation(agent_id)
            body = {"agent_id": agent_id, "name": name, "generation": mine}
            answer = await self.cluster._control(
                member.address, REPLICA_TIMEOUT, "claim", self.trust.seal(body)
            )
            if isinstance(answer, int) and not wins(mine, self.node_id, answer, peer):
                await self._drop_stale(name, agent_id, peer, answer)
        except CaxtonError as exc:
            log.warning("could not compare the placement of %s with %s: %s", name, peer, exc)
        finally:
            self._claims.discard(key)

    def _on_claim(self, sender: str, body: Any) -> int | None:
        if not isinstance(body, Mapping):
            raise ValidationError("malformed claim")
        agent_id, name, theirs = body.get("agent_id"), body.get("name"), body.get("generation")
        if not (isinstance(agent_id, str) and isinstance(name, str) and isinstance(theirs, int)):
            raise ValidationError("malformed claim")
        if not self._hosts(name, agent_id):
            return None
        mine = self.generation(agent_id)
        if not wins(mine, self.node_id, theirs, sender):
            self.cluster._spawn(self._drop_stale(name, agent_id, sender, theirs))
        return mine

    def _hosts(self, name: str, agent_id: str) -> bool:
        agents = self.node.agents
        return agents is not None and name in agents and agents.get(name).id == agent_id

    async def _drop_stale(self, name: str, agent_id: str, winner: str, generation: int) -> None:
        """Another node's placement of this agent won: remove the copy here; the
        messages queued for it are forwarded to the winner."""
        if not self._hosts(name, agent_id) or agent_id in self._dropping:
            return
        self._dropping.add(agent_id)
        self._stale.add(agent_id)
        router = self.node.router
        if router is not None and router.is_registered(name):
            # What queued for this copy goes to the winning one, not to dead letters.
            router.hand_over(name)
        try:
            await self.node.agents.remove(agent_id)
        except AgentNotFound:
            return
        finally:
            self._dropping.discard(agent_id)
        self.cluster.events.record(
            "agent-deduplicated",
            f"Agent '{name}' runs on {winner} (placement {generation}): removed the stale "
            f"copy on {self.node_id}",
            node_id=winner,
            level="warning",
        )

    # -- replication: this node's agents on peers ---------------------------------------

    def schedule_reconcile(self) -> None:
        """Check the replicas of this node's agents soon (coalesced)."""
        if not self.started:
            return
        if self._reconcile_task is not None and not self._reconcile_task.done():
            self._again = True
            return
        self._reconcile_task = self.cluster._spawn(self._reconcile_until_settled())

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL)
            self.schedule_reconcile()

    async def _reconcile_until_settled(self) -> None:
        await asyncio.sleep(0)  # let the deploy or event that asked finish first
        while True:
            self._again = False
            try:
                await self.reconcile()
            except CaxtonError as exc:
                log.warning("replicating this node's agents failed: %s", exc)
            if not self._again:
                return

    async def reconcile(self) -> None:
        """Give every agent here ``replicas`` live holders with its current spec."""
        agents = self.node.agents
        if agents is None or not self.started:
            return
        joined, self._joined = self._joined, set()
        if self.copies > 0:
            jobs = [self._replicate(agent) for agent in agents.list()]
            await asyncio.gather(*jobs)
        for node_id in joined:
            await self._send_holdings(node_id)

    def _choose_holders(self, agent: Agent) -> tuple[str, ...]:
        if self.trust.mode is None:
            # Peers refuse replicas from a node they cannot authenticate (PeerTrust.open):
            # no holder can be had, so the replica set is this node alone and a quorum
            # write is a local commit, instead of replies held for holders that refuse.
            return ()
        return self._rank_holders(agent.name, self.holders.get(agent.id, ()), ())

    def holders_for(
        self, agent_id: str, members: Sequence[str], *, keep_owner: bool = False
    ) -> tuple[str, ...]:
        """The holders a takeover of ``agent_id`` proposes, its replica set in force
        being ``members`` (the owner first): the live ones of them, then others. The
        owner is left out unless ``keep_owner`` (a live move: it holds the state, and
        keeping it spares a replica set change and the whole state to a new holder)."""
        replica = self.replicas.get(agent_id)
        name = replica.name if replica is not None else agent_id
        if self.trust.mode is None:
            return ()
        if keep_owner:
            return self._rank_holders(name, (*members[1:], *members[:1]), ())
        return self._rank_holders(name, members[1:], members[:1])

    def _rank_holders(
        self, name: str, current: Sequence[str], exclude: Sequence[str]
    ) -> tuple[str, ...]:
        """``current``'s live members (in order), then the live nodes placement ranks
        best, up to ``replicas`` holders; never this node or ``exclude``."""

        def eligible(node_id: str) -> bool:
            return (
                node_id != self.node_id
                and node_id not in exclude
                and self.cluster._live(node_id) is not None
            )

        holders = [h for h in dict.fromkeys(current) if eligible(h)][: self.copies]
        if len(holders) < self.copies:
            request = PlacementRequest(agent_name=name)
            candidates = [
                load
                for load in node_loads(self.node)
                if load.node_id not in holders and eligible(load.node_id)
            ]
            if candidates:
                try:
                    ranked = rank_nodes(self.node.hook, self.node.placement, request, candidates)
                except NoPlacement:  # a strategy that ranks only this node ("local")
                    ranked = sorted(candidates, key=lambda c: (c.agents, c.node_id))
                holders += [c.node_id for c in ranked][: self.copies - len(holders)]
        return tuple(holders)

    async def _replicate(self, agent: Agent) -> None:
        if agent.id in self._dropping or agent.id in self._too_large:
            return
        holders = self._choose_holders(agent)
        ownership = self.ownership
        if (
            ownership.enabled
            and holders != self.holders.get(agent.id, holders)
            and ownership.config(agent.id) is not None
            and not await ownership.reconfigure(agent.id, holders)
        ):
            # The replica set in force stays until a majority of it agrees to move.
            holders = self.holders.get(agent.id, ())
        replica = self.replica_of(agent, holders)
        spec = replica.spec
        kv_version = self._kv_versions.get(agent.id, 0)
        key = (holders, replica.generation, agent.module_sha256, _canonical(spec), kv_version)
        if self._pushed.get(agent.id) == key:
            return
        self.holders[agent.id] = holders
        if not holders:
            return
        results = await asyncio.gather(*(self._push(replica, h) for h in holders))
        if self.generation(agent.id) != replica.generation or agent.id not in self.holders:
            return  # removed or moved meanwhile
        if all(results):
            self._pushed[agent.id] = key
            self.cluster.events.record(
                "agent-replicated",
                f"Agent '{agent.name}' replicated to {', '.join(holders)}",
                node_id=self.node_id,
                level="debug",
            )

    def replica_of(self, agent: Agent, holders: tuple[str, ...]) -> Replica:
        """The replica of ``agent`` (hosted here) that ``holders`` keep."""
        policy = self.node.context.services.get("agent_policy")
        senders = policy.deployed_senders(agent.name) if policy is not None else None
        spec = DeploySpec.of_agent(agent, senders)
        return Replica(
            agent.id,
            agent.name,
            self.node_id,
            self.generation(agent.id),
            agent.module_sha256,
            spec,
            holders,
        )

    async def _push(self, replica: Replica, holder: str) -> bool:
        member = self.cluster._live(holder)
        if member is None:
            return False
        body = replica.to_wire()
        kv = self._kv_snapshot(replica)
        if kv is not None:
            body["kv"] = kv
        try:
            answer = await self.cluster._control(
                member.address, REPLICA_TIMEOUT, "replica", self.trust.seal(body)
            )
            if answer == "module":
                wasm = await self.node.store.load_module(replica.module_sha256)
                if wasm is None:
                    return False
                if len(wasm) > self.max_size:
                    self._too_large.add(replica.agent_id)
                    self.cluster.events.record(
                        "not-replicated",
                        f"Agent '{replica.name}' is not replicated: its module ({len(wasm)} "
                        f"bytes) exceeds coordination.cluster.replica_max_size; it cannot "
                        f"fail over",
                        node_id=self.node_id,
                        level="warning",
                    )
                    return False
                answer = await self.cluster._control(
                    member.address,
                    REPLICA_TIMEOUT,
                    "replica",
                    self.trust.seal({**body, "wasm": wasm}),
                )
        except CaxtonError as exc:
            log.debug("replicating %s to %s failed: %s", replica.name, holder, exc)
            return False
        if answer not in ("ok", "stale"):
            log.warning("node %s refused the replica of %s: %s", holder, replica.name, answer)
            return False
        return True

    async def _on_replica(self, owner: str, body: Any) -> str:
        replica = Replica.from_wire(owner, body)
        if self._hosts(replica.name, replica.agent_id) and wins(
            self.generation(replica.agent_id), self.node_id, replica.generation, owner
        ):
            return "stale"  # this node's placement is newer: a claim settles it
        if replica.generation < self.ownership.promised(replica.agent_id):
            return "stale"  # a newer owner was promised: this one is fenced
        existing = self.replicas.get(replica.agent_id)
        if (
            existing is not None
            and existing.owner != owner
            and wins(existing.generation, existing.owner, replica.generation, owner)
        ):
            return "stale"
        wasm = body.get("wasm") if isinstance(body, Mapping) else None
        store = self.node.store
        if wasm is None:
            if not await store.has_module(replica.module_sha256):
                return "module"
        elif not isinstance(wasm, bytes) or len(wasm) > self.max_size:
            raise ValidationError(
                f"replica module refused: larger than this node's "
                f"coordination.cluster.replica_max_size ({self.max_size} bytes)"
            )
        elif hashlib.sha256(wasm).hexdigest() != replica.module_sha256:
            raise ValidationError("replica module refused: its bytes do not match its sha256")
        store.put_replica(replica.record(), wasm)
        self.replicas[replica.agent_id] = replica
        if isinstance(body, Mapping) and "kv" in body:
            await self._keep_kv(replica.agent_id, body["kv"])
        return "ok"

    # -- key/value state ------------------------------------------------------------------

    def _kv_changed(self, agent_id: str) -> None:
        """An agent here changed its key/value state: bring its replicas up to date soon."""
        self._kv_versions[agent_id] = self._kv_versions.get(agent_id, 0) + 1
        if self._kv_sync is None and self.started:
            self._kv_sync = self.cluster._get_loop().call_later(KV_SYNC_DELAY, self._kv_due)

    def _kv_due(self) -> None:
        self._kv_sync = None
        self.schedule_reconcile()

    def _kv_snapshot(self, replica: Replica) -> list[list[bytes]] | None:
        """The agent's whole key/value state, to send with its replica; None when it
        has none or it is larger than ``replica_max_size`` (then it does not move)."""
        agents = self.node.agents
        if agents is None or replica.agent_id not in agents or self.durability != "async":
            return None  # quorum: caxton.cluster.ownership replicates it; local: it stays
        runtime = agents.runtime(replica.agent_id)
        kv = runtime.kv
        if not kv:
            return [] if self._kv_versions.get(replica.agent_id) else None
        if runtime.kv_bytes > self.max_size:
            if replica.agent_id not in self._kv_too_large:
                self._kv_too_large.add(replica.agent_id)
                self.cluster.events.record(
                    "kv-not-replicated",
                    f"Agent '{replica.name}' key/value state exceeds "
                    f"coordination.cluster.replica_max_size: a failover starts it empty",
                    node_id=self.node_id,
                    level="warning",
                )
            return None
        self._kv_too_large.discard(replica.agent_id)
        return [[k, v] for k, v in kv.items()]

    async def _keep_kv(self, agent_id: str, items: Any) -> None:
        """Make this node's copy of a replicated agent's key/value state ``items``."""
        if not isinstance(items, list) or not all(
            isinstance(i, list) and len(i) == 2 and all(isinstance(x, bytes) for x in i)
            for i in items
        ):
            raise ValidationError("malformed replica key/value state")
        agents = self.node.agents
        if agents is not None and agent_id in agents:
            return  # it runs here: its own state is the one that counts
        store = self.node.store
        wanted = {bytes(k): bytes(v) for k, v in items}
        for key, value in (await store.load_kv(agent_id)).items():
            if key not in wanted:
                store.kv_delete(agent_id, key)
            elif wanted[key] == value:
                del wanted[key]
        for key, value in wanted.items():
            store.kv_put(agent_id, key, value)

    async def _send_holdings(self, node_id: str) -> None:
        """Tell ``node_id`` which of this node's agents it should keep replicas of."""
        member = self.cluster._live(node_id)
        if member is None:
            return
        body: dict[str, list[str]]
        if self.amnesic:
            body = {"drop": sorted(self._removed)}
        else:
            keep = sorted(agent_id for agent_id, hs in self.holders.items() if node_id in hs)
            # An agent moving there now: the replica it was sent is what the move takes.
            keep += [a for a, target in self.cluster.moves.moving.items() if target == node_id]
            # An agent whose copy here a takeover fenced is not this node's to drop:
            # the takeover may have failed, and the holders' copies restart it.
            keep += self.ownership.lost()
            body = {"keep": keep}
        try:
            await self.cluster._control(
                member.address, REPLICA_TIMEOUT, "holdings", self.trust.seal(body)
            )
        except CaxtonError as exc:
            log.debug("telling %s its replicas failed: %s", node_id, exc)

    def _on_holdings(self, owner: str, body: Any) -> bool:
        """``{"keep": ids}``: drop the owner's other replicas; ``{"drop": ids}`` (an
        owner that lost its data directory): drop only these."""
        keep = body.get("keep") if isinstance(body, Mapping) else None
        drop = body.get("drop") if isinstance(body, Mapping) else None
        if not isinstance(keep, list) and not isinstance(drop, list):
            raise ValidationError("malformed holdings")
        kept, dropped = set(keep or ()), set(drop or ())
        for replica in [r for r in self.replicas.values() if r.owner == owner]:
            gone = replica.agent_id in dropped if drop is not None else replica.agent_id not in kept
            fence = self.ownership.fences.get(replica.agent_id)
            if gone and drop is None and fence is not None and self._taken_from(replica, fence):
                continue  # not the owner's to drop any more (caxton.cluster.orphans)
            if gone:
                del self.replicas[replica.agent_id]
                self.node.store.delete_replica(replica.agent_id, replica.module_sha256)
                agents = self.node.agents
                if fence is not None and fence.generation > replica.generation:
                    continue  # the state here is a newer owner's: that one decides
                if agents is None or replica.agent_id not in agents:
                    self.node.store.delete_agent(replica.agent_id)  # its key/value copy
                    self.ownership.forget_state(replica.agent_id)
        return True

    @staticmethod
    def _taken_from(replica: Replica, fence: Fence) -> bool:
        """Whether this node promised a takeover of ``replica``'s agent a generation
        above its owner's (not the owner's own move of its replica set): the owner's
        copy may have been fenced by it, so its list of what to keep no longer covers
        the agent, which may run nowhere now; only a takeover decides."""
        return fence.promised > replica.generation and not fence.proposed_by(replica.owner)

    # -- control ops --------------------------------------------------------------------

    async def on_control(self, frame: Frame, op: str, args: Sequence[Any]) -> bytes:
        """Answer one of :data:`OPS` (the cluster dispatches them here)."""
        answer: Any
        try:
            sender, body = self.trust.open(op, frame.sender, args[0] if args else None)
            if op == "deploy":
                answer = await on_deploy(self.node, sender, body)
            elif op == "replica":
                answer = await self._on_replica(sender, body)
            elif op == "holdings":
                answer = self._on_holdings(sender, body)
            elif op == "writes":
                answer = await self.ownership.on_writes(sender, body)
            elif op == "promise":
                answer = await self.ownership.on_promise(sender, body)
            elif op == "owns":
                answer = self.ownership.on_owns(body)
            elif op == "state":
                answer = await self.ownership.on_state(sender, body)
            else:
                answer = self._on_claim(sender, body)
        except CaxtonError as exc:
            if op != "deploy":
                log.warning("refused cluster operation '%s' from %s: %s", op, frame.sender, exc)
            answer = error_answer(exc)
        return wire.pack(answer)


def _canonical(spec: DeploySpec) -> str:
    return json.dumps(spec.to_wire(), sort_keys=True, default=str)
