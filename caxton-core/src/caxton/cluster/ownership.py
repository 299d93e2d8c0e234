"""Fenced ownership: an agent's state on a majority of its replica set, stale owners fenced.

With ``coordination.cluster.durability = "quorum"`` (the default) an agent's *replica set*
is its node (the *owner*) plus its replica holders (:mod:`caxton.cluster.failover`).

**Writes.** The key/value changes the node's agents make in one event-loop turn go to
each holder in ONE ``writes`` frame (every agent, every change of the turn; frames are
pipelined, not awaited one by one). An entry carries the agent's id, the owner's
*generation*, the state *version* it brings the holder to, and either the changed keys
(a delta from the version last sent to that holder) or the whole state. A holder applies
it, commits it to SQLite with the promise it keeps for the agent, and answers the
version it now holds. The agent's held outputs (:mod:`caxton.agents.commit`) go once a
majority of the replica set holds the change: the owner itself (committed locally) and
enough holders.

**Fencing.** A holder refuses every write of a generation lower than the one it has
*promised* (answer ``fenced``). A takeover (:meth:`Ownership.take`) first asks the replica
set to promise generation g+1 (``promise``), needs a majority, adopts the highest state
(generation, then version) among the answers, writes it to the new holders at g+1, and
only then is the agent started. (Answers name their state by a digest: the taker reads
the highest from a member only when its own differs, and a holder of that very state
takes g+1 without its bytes.) So once a takeover has its majority, the old owner can
reach no majority any more: the refusals tell it so, and it fences its copy (its held
outputs are dead-lettered with the reason, never released; the copy is removed). An old
owner that still answers (a false failure detection) promises too, which fences it at
once. Promises and versions are committed to SQLite (``agent_fences``) before they are
answered, so a restart does not forget them.

Why nothing acknowledged is lost: an acknowledged change is on a majority of the replica
set, the takeover reads a majority, and two majorities intersect. See
docs/design/0001-fenced-ownership.md and docs/cluster.md, "Durability".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from caxton.agents.commit import Change, DeferredDurability, Durability, LocalDurability
from caxton.drivers.partition import PartitionMode
from caxton.errors import CaxtonError, ValidationError
from caxton.store.migrations import CLUSTER_MIGRATIONS, CLUSTER_NAMESPACE

if TYPE_CHECKING:
    from caxton.agents.runtime import AgentRuntime
    from caxton.cluster.failover import Failover, Replica

__all__ = ["OPS", "Fence", "Ownership", "majority"]

log = logging.getLogger("caxton.cluster")

#: The control ops :class:`Ownership` answers (sealed, :mod:`caxton.cluster.trust`).
OPS = frozenset({"writes", "promise", "owns", "state"})
#: Seconds a holder has to answer a frame of writes, and a member a promise.
WRITE_TIMEOUT = 2.0
PROMISE_TIMEOUT = 2.0
#: Promise rounds a takeover makes at most (each reveals newer replica sets, or meets a
#: competing promise) before it gives up until the next try.
TAKE_ROUNDS = 4
#: How often, and how far apart, a takeover writes its state again to a member still
#: removing the copy the takeover fenced.
GAP_RETRIES = 20
GAP_RETRY_DELAY = 0.05
#: Frames of writes to one holder awaiting their answer at a time (more changes wait
#: and go together in the next frame).
WRITES_IN_FLIGHT = 2
#: Seconds before a holder that missed writes is sent the whole state again.
RESYNC_DELAY = 0.2
#: An owner's versions start this far above the last one it committed, whenever it
#: (re)starts owning an agent: writes it sent before a crash and never committed itself
#: can then never be taken for newer than what it sends after.
VERSION_JUMP = 1 << 32

Items = list[list[bytes]]


def majority(size: int) -> int:
    return size // 2 + 1


Members = tuple[str, ...]
#: A replica set's configuration: its generation and its members (the owner first).
Config = tuple[int, Members]
#: Promises a member remembers above the generation of the state it holds.
MAX_PROPOSALS = 8


@dataclass
class Fence:
    """What this node keeps of one agent: the highest generation it promised, the
    generation and version of the state it holds, the replica set of that generation
    (``members``, the owner first: the set its owner writes to), and the sets proposed
    with the promises it made above that generation (``proposals``): a takeover reads
    them to find the replica set in force, whatever its own records say."""

    promised: int = 0
    generation: int = 0
    version: int = 0
    members: Members = ()
    proposals: tuple[Config, ...] = ()

    def config(self) -> list[Any]:
        """What a promise answer tells of this fence: ``[generation, members, proposals]``."""
        return [
            self.generation,
            list(self.members),
            [[g, list(m)] for g, m in self.proposals],
        ]

    def promise(self, generation: int, proposed: Members) -> Fence:
        """This fence once ``generation`` is promised with the set ``proposed``."""
        proposals = tuple(p for p in self.proposals if p[0] > self.generation)
        if proposed:
            proposals = (*proposals, (generation, proposed))[-MAX_PROPOSALS:]
        return Fence(
            max(self.promised, generation), self.generation, self.version, self.members, proposals
        )

    def proposed_by(self, node_id: str) -> bool:
        """Whether the generation promised last was proposed by ``node_id`` (an owner
        whose earlier move of its replica set did not complete)."""
        return any(g == self.promised and m[:1] == (node_id,) for g, m in self.proposals)

    def holding(self, generation: int, version: int, members: Members | None = None) -> Fence:
        """This fence once it holds the state of ``generation`` at ``version``."""
        if members is None:
            members = self.members if generation == self.generation else ()
        proposals = tuple(p for p in self.proposals if p[0] > generation)
        return Fence(max(self.promised, generation), generation, version, members, proposals)


@dataclass
class _Owned:
    """The owner's side of one agent replicated here in quorum mode."""

    runtime: AgentRuntime
    generation: int
    #: Wire version = offset + the runtime's version.
    offset: int
    holders: tuple[str, ...]
    #: Version each holder has been sent (None: send the whole state next).
    sent: dict[str, int | None] = field(default_factory=dict)
    #: Version each holder said it holds.
    acked: dict[str, int] = field(default_factory=dict)
    #: Generation each refusing holder has promised.
    refused: dict[str, int] = field(default_factory=dict)
    #: Version committed to this node's SQLite, and the one known on a majority.
    local: int = 0
    committed: int = 0
    #: The generation this owner is moving its replica set to (0: none): refusals up
    #: to it are its own promise round, not a new owner.
    pending: int = 0
    #: The last generation it proposed for a new replica set (the next one goes higher).
    tried: int = 0

    @property
    def version(self) -> int:
        return self.offset + self.runtime.version

    def members(self, node_id: str) -> Members:
        return (node_id, *self.holders)

    def needed(self) -> int:
        """Holders whose acknowledgement a change needs besides this node's own."""
        return majority(len(self.holders) + 1) - 1


class Ownership:
    """Quorum replication, fencing and fenced takeovers of one node's agents."""

    def __init__(self, failover: Failover) -> None:
        self.failover = failover
        self.cluster = failover.cluster
        self.node = failover.node
        self.node_id = failover.node_id
        self.enabled = failover.durability == "quorum"
        self.fences: dict[str, Fence] = {}
        #: Holder copies of other nodes' agents' state (loaded on first write).
        self.states: dict[str, dict[bytes, bytes]] = {}
        self.owned: dict[str, _Owned] = {}
        self._lock = asyncio.Lock()
        self._resync: set[str] = set()
        self._resync_handle: asyncio.TimerHandle | None = None
        #: Write entries waiting for a frame to each holder, and the frames in flight.
        self._outbox: dict[str, list[list[Any]]] = {}
        self._in_flight: dict[str, int] = {}
        self._previous: Durability | None = None
        #: Agents taken over here: the generation and the holders that took the state
        #: the agent starts with (version 0), so the first writes to them are deltas.
        self._primed: dict[str, tuple[int, set[str]]] = {}
        #: Agents hosted here that a live move hands to another node
        #: (:mod:`caxton.cluster.moves`): a promise for them does not fence and remove
        #: the copy here; the move stops it, hands its messages over and removes it.
        self.handing_over: set[str] = set()
        #: Fenced copies being removed: their key/value rows stay, a holder copy of the
        #: generation they had (:meth:`fence`).
        self._keeping: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        store = self.node.store
        store.register_migrations(CLUSTER_NAMESPACE, CLUSTER_MIGRATIONS)
        await store.migrate()
        await store.flush()
        rows = await store.connection.execute_fetchall(
            "SELECT agent_id, promised, generation, version, members, proposals FROM agent_fences"
        )
        self.fences = {
            str(a): Fence(
                int(p), int(g), int(v), _members(json.loads(m)), _proposals(json.loads(q))
            )
            for a, p, g, v, m, q in rows
        }
        agents = self.node.agents
        if self.enabled and agents is not None:
            self._previous = agents.outputs.use(self)

    def close(self) -> None:
        if self._resync_handle is not None:
            self._resync_handle.cancel()
        agents = self.node.agents
        if self._previous is not None and agents is not None:
            previous = self._previous
            if isinstance(previous, DeferredDurability):  # what a stopping node drains
                previous = LocalDurability(self.node.store, agents.outputs)
            agents.outputs.durability = previous

    def promised(self, agent_id: str) -> int:
        fence = self.fences.get(agent_id)
        return fence.promised if fence is not None else 0

    def _persist(self, agent_id: str, fence: Fence) -> None:
        self.fences[agent_id] = fence
        self.node.store.enqueue(
            "INSERT OR REPLACE INTO agent_fences"
            " (agent_id, promised, generation, version, members, proposals)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                agent_id,
                fence.promised,
                fence.generation,
                fence.version,
                json.dumps(list(fence.members)),
                json.dumps([[g, list(m)] for g, m in fence.proposals]),
            ),
        )

    def forget_state(self, agent_id: str) -> None:
        """The holder copy of ``agent_id``'s state was deleted (the promise and the
        proposals stay: a takeover may still need them to find the current set)."""
        self.states.pop(agent_id, None)
        fence = self.fences.get(agent_id)
        if fence is not None:
            self._persist(agent_id, Fence(fence.promised, 0, 0, (), fence.proposals))

    def config(self, agent_id: str) -> Config | None:
        """The replica set established for the current generation of an agent hosted
        here (None: none yet, the first state write establishes it)."""
        fence = self.fences.get(agent_id)
        generation = self.failover.generation(agent_id)
        if fence is None or fence.generation != generation or not fence.members:
            return None
        return generation, fence.members

    # -- the owner: output commit by quorum ------------------------------------------

    def commit(self, changes: Sequence[Change]) -> None:
        """:class:`~caxton.agents.commit.Durability`: replicate one turn's changes."""
        batches: dict[str, list[list[Any]]] = {}
        local: list[Change] = []
        owned_now: list[tuple[_Owned, int]] = []
        for change in changes:
            if change.runtime.fenced is not None:
                continue  # its outputs are dead-lettered; nothing of it is written any more
            owned = self._owned(change.runtime)
            if owned is None:
                local.append(change)
                continue
            version = owned.offset + change.version
            agent_id = change.runtime.agent.id
            fence = self.fences.get(agent_id, Fence())
            members = owned.members(self.node_id)
            self._persist(agent_id, fence.holding(owned.generation, version, members))
            for holder in owned.holders:
                entry = self._entry(owned, holder, change.keys, version)
                batches.setdefault(holder, []).append(entry)
            owned_now.append((owned, version))
        self.cluster._spawn(self._commit_locally(local, owned_now))
        for holder, entries in batches.items():
            self._queue_writes(holder, entries)

    def _queue_writes(self, holder: str, entries: list[list[Any]]) -> None:
        """Send ``entries`` to ``holder``: at once while fewer than
        :data:`WRITES_IN_FLIGHT` frames to it await their answer, else with whatever
        else waits for it, in one frame, as soon as one answers (the holder commits a
        frame at a time: under load, more changes per SQLite commit and per round trip)."""
        self._outbox.setdefault(holder, []).extend(entries)
        if self._in_flight.get(holder, 0) < WRITES_IN_FLIGHT:
            self._in_flight[holder] = self._in_flight.get(holder, 0) + 1
            self.cluster._spawn(self._drain(holder))

    async def _drain(self, holder: str) -> None:
        try:
            while entries := self._outbox.pop(holder, None):
                await self._send(holder, entries)
        finally:
            self._in_flight[holder] -= 1

    async def _commit_locally(
        self, local: Sequence[Change], owned: Sequence[tuple[_Owned, int]]
    ) -> None:
        outputs = self.node.agents.outputs
        try:
            await self.node.store.flush()
        except CaxtonError as exc:
            for change in local:
                outputs.failed(change.runtime, f"its state change was not stored: {exc}")
            for item, _ in owned:
                outputs.failed(item.runtime, f"its state change was not stored: {exc}")
            return
        for change in local:
            outputs.committed(change.runtime, change.version)
        for item, version in owned:
            item.local = max(item.local, version)
            self._check(item)

    def _owned(self, runtime: AgentRuntime) -> _Owned | None:
        """The replication state of an agent hosted here (None: not replicated)."""
        failover = self.failover
        agent_id = runtime.agent.id
        generation = failover.generation(agent_id)
        owned = self.owned.get(agent_id)
        if owned is not None and owned.runtime is runtime and owned.generation == generation:
            return owned
        if failover.copies <= 0:
            return None
        fence = self.fences.get(agent_id)
        holders = failover.holders.get(agent_id)
        if holders is None:
            config = self.config(agent_id)
            # Restarted with its data: the replica set of its generation stays the same
            # (changing it is a promise round, reconfigure()).
            holders = config[1][1:] if config else failover._choose_holders(runtime.agent)
            failover.holders[agent_id] = holders
        offset = fence.version + VERSION_JUMP if fence and fence.generation == generation else 0
        owned = _Owned(runtime, generation, offset, holders)
        primed_at, primed = self._primed.pop(agent_id, (0, set()))
        if primed_at == generation and fence is not None and fence.version == 0:
            owned.sent = {h: 0 for h in holders if h in primed}
        owned.committed = owned.local = offset + runtime.committed
        self.owned[agent_id] = owned
        return owned

    def _entry(self, owned: _Owned, holder: str, keys: frozenset[bytes], version: int) -> list[Any]:
        """One agent's entry of a ``writes`` frame to ``holder``."""
        runtime = owned.runtime
        base = owned.sent.get(holder)
        owned.sent[holder] = version
        kv = runtime.kv
        if base is None:
            items = [[k, v] for k, v in kv.items()]
            members = list(owned.members(self.node_id))
            return [runtime.agent.id, owned.generation, 0, version, True, items, [], members]
        puts = [[k, kv[k]] for k in keys if k in kv]
        deletes = [k for k in keys if k not in kv]
        return [runtime.agent.id, owned.generation, base, version, False, puts, deletes]

    async def _send(self, holder: str, entries: list[list[Any]]) -> None:
        member = self.cluster._live(holder)
        answer: Any = None
        if member is not None:
            try:
                answer = await self.cluster._control(
                    member.address,
                    WRITE_TIMEOUT,
                    "writes",
                    self.failover.trust.seal(entries),
                )
            except CaxtonError as exc:
                log.debug("writes to %s failed: %s", holder, exc)
        if not isinstance(answer, list) or len(answer) != len(entries):
            answer = [None] * len(entries)
        # A holder that is not live is replaced by the next reconcile (which resyncs).
        resync = member is not None
        for entry, result in zip(entries, answer, strict=True):
            owned = self.owned.get(entry[0])
            if owned is None or owned.generation != entry[1] or holder not in owned.holders:
                continue
            kind = result[0] if isinstance(result, list) and result else None
            if kind == "ok" and isinstance(result[1], int):
                owned.refused.pop(holder, None)
                if result[1] > owned.acked.get(holder, 0):
                    owned.acked[holder] = result[1]
                    self._check(owned)
                continue
            owned.sent[holder] = None  # send the whole state again
            if kind == "fenced" and isinstance(result[1], int) and result[1] > owned.pending:
                owned.refused[holder] = result[1]
                if self._lost_majority(owned):
                    newer = max(owned.refused.values())
                    self.fence(
                        entry[0], f"holders promised generation {newer} to a new owner", newer
                    )
                    continue
            if resync:
                self._schedule_resync(entry[0])

    def _check(self, owned: _Owned) -> None:
        """Release the outputs of what is now on a majority of the replica set."""
        needed = owned.needed()
        if needed:
            acks = sorted((owned.acked.get(h, 0) for h in owned.holders), reverse=True)
            on_majority = min(owned.local, acks[needed - 1])
        else:
            on_majority = owned.local
        if on_majority > owned.committed:
            owned.committed = on_majority
            self.node.agents.outputs.committed(owned.runtime, on_majority - owned.offset)

    def _lost_majority(self, owned: _Owned) -> bool:
        size = len(owned.holders) + 1
        refusing = sum(1 for g in owned.refused.values() if g > owned.generation)
        return refusing > size - majority(size)

    def _schedule_resync(self, agent_id: str) -> None:
        self._resync.add(agent_id)
        if self._resync_handle is None:
            loop = self.cluster._get_loop()
            self._resync_handle = loop.call_later(RESYNC_DELAY, self._resync_now)

    def _resync_now(self) -> None:
        """Send the whole state to the holders that missed writes."""
        self._resync_handle = None
        due, self._resync = self._resync, set()
        batches: dict[str, list[list[Any]]] = {}
        for agent_id in due:
            owned = self.owned.get(agent_id)
            if owned is None or owned.runtime.agent.id not in (self.node.agents or ()):
                continue
            for holder in owned.holders:
                if owned.sent.get(holder) is None:
                    entry = self._entry(owned, holder, frozenset(), owned.version)
                    batches.setdefault(holder, []).append(entry)
        for holder, entries in batches.items():
            self._queue_writes(holder, entries)

    def keeps_state(self, agent_id: str) -> bool:
        """Whether the copy of ``agent_id`` being removed here leaves its key/value rows
        (a live move's old copy, a fenced copy): they are a holder's copy now."""
        return agent_id in self.handing_over or agent_id in self._keeping

    def lost(self) -> list[str]:
        """The agents whose copy here was fenced by a newer generation and that no
        write of it has reached since (this node keeps its state as it was)."""
        return sorted(
            agent_id
            for agent_id, fence in self.fences.items()
            if 0 < fence.generation < fence.promised and not self._hosts(agent_id)
        )

    def fence(self, agent_id: str, reason: str, newer: int) -> None:
        """This node's copy of ``agent_id`` lost its ownership to generation ``newer``:
        it acknowledges nothing more (held outputs are dead-lettered with ``reason``)
        and is removed.

        Its state stays, as a holder's copy of the generation it had: this node is a
        member of that generation's replica set, and a later takeover may count its
        promise in a majority of that set; an answer without the state it acknowledged
        would let the takeover start from another member's older one (the fault
        campaign lost acknowledged ids when a fenced owner's answer, carrying its state,
        was lost under a one-way cut and the retry counted it empty)."""
        owned = self.owned.pop(agent_id, None)
        agents = self.node.agents
        if agents is None or agent_id not in agents:
            return
        runtime = owned.runtime if owned is not None else agents.runtime(agent_id)
        if runtime.fenced:
            return
        runtime.fenced = reason
        agents.outputs.failed(runtime, f"fenced: {reason}")
        fence = self.fences.get(agent_id, Fence())
        generation = self.failover.generation(agent_id)
        version = owned.version if owned is not None else runtime.version
        members = owned.members(self.node_id) if owned is not None else fence.members
        self._persist(agent_id, fence.holding(generation, version, members).promise(newer, ()))
        self.states.pop(agent_id, None)
        self._keeping.add(agent_id)
        self.cluster.events.record(
            "agent-fenced",
            f"Agent '{runtime.name}' on {self.node_id} is fenced ({reason}): it acknowledges "
            f"nothing more and its copy here is removed",
            node_id=self.node_id,
            level="warning",
        )
        self.failover._stale.add(agent_id)
        self.cluster._spawn(self._remove(runtime.name, agent_id))

    async def _remove(self, name: str, agent_id: str) -> None:
        try:
            await self.node.agents.remove(agent_id, keep_state=True)
        except CaxtonError as exc:
            log.warning("could not remove the fenced copy of %s: %s", name, exc)
        finally:
            self._keeping.discard(agent_id)

    # -- holders: writes and promises ---------------------------------------------------

    async def on_writes(self, owner: str, body: Any) -> list[list[Any]]:
        if not isinstance(body, list):
            raise ValidationError("malformed writes")
        async with self._lock:
            answers = [await self._apply(owner, _entry_of(entry)) for entry in body]
        await self.node.store.flush()
        return answers

    async def _apply(self, owner: str, entry: tuple[Any, ...]) -> list[Any]:
        agent_id, generation, base, version, full, puts, deletes, members, same = entry
        # A copy a live move hands over is quiesced: this node takes the new owner's
        # writes as any holder does (its rows are the same), and keeps them after.
        if self._hosts(agent_id) and agent_id not in self.handing_over:
            mine = self.failover.generation(agent_id)
            if generation <= mine:
                return ["fenced", mine]
            self.fence(agent_id, f"{owner} writes it at generation {generation}", generation)
            return ["gap", 0]  # write the whole state again once the copy here is gone
        fence = self.fences.get(agent_id, Fence())
        if generation < fence.promised:
            return ["fenced", fence.promised]
        state = await self._state(agent_id)
        if same is not None:  # a takeover's state, which this node says it holds already
            if generation == fence.generation and version <= fence.version:
                return ["ok", fence.version]
            if _digest(state) != same:
                return ["stale", fence.version]  # it sends the whole state instead
            self._persist(agent_id, fence.holding(generation, version, members))
            return ["ok", version]
        if generation > fence.generation or full:
            if not full:
                self._persist(agent_id, fence.promise(generation, ()))
                return ["gap", 0]
            if generation == fence.generation and version <= fence.version:
                return ["ok", fence.version]
            self._replace(agent_id, state, {k: v for k, v in puts})
        elif base == fence.version:
            store = self.node.store
            for key, value in puts:
                state[key] = value
                store.kv_put(agent_id, key, value)
            for key in deletes:
                if state.pop(key, None) is not None:
                    store.kv_delete(agent_id, key)
        elif version > fence.version:
            return ["gap", fence.version]
        else:
            return ["ok", fence.version]
        self._persist(agent_id, fence.holding(generation, version, members))
        return ["ok", version]

    async def _state(self, agent_id: str) -> dict[bytes, bytes]:
        state = self.states.get(agent_id)
        if state is None:
            state = self.states[agent_id] = await self.node.store.load_kv(agent_id)
        return state

    def _replace(self, agent_id: str, state: dict[bytes, bytes], new: dict[bytes, bytes]) -> None:
        store = self.node.store
        for key in [k for k in state if k not in new]:
            del state[key]
            store.kv_delete(agent_id, key)
        for key, value in new.items():
            if state.get(key) != value:
                state[key] = value
                store.kv_put(agent_id, key, value)

    async def on_promise(self, sender: str, body: Any) -> list[Any]:
        if not isinstance(body, Mapping):
            raise ValidationError("malformed promise")
        agent_id, generation = body.get("agent_id"), body.get("generation")
        if not isinstance(agent_id, str) or not isinstance(generation, int):
            raise ValidationError("malformed promise")
        proposed = _members(body.get("members") or [])
        owner_at = body.get("owner_at", 0)
        if not isinstance(owner_at, int):
            raise ValidationError("malformed promise")
        digests = body.get("digests", False)
        if not isinstance(digests, bool):
            raise ValidationError("malformed promise")
        async with self._lock:
            answer = await self._promise(agent_id, generation, sender, proposed, owner_at, digests)
        await self.node.store.flush()
        return answer

    async def _promise(
        self,
        agent_id: str,
        generation: int,
        taker: str,
        proposed: Members = (),
        owner_at: int = 0,
        digests: bool = False,
    ) -> list[Any]:
        """Promise ``generation`` for ``agent_id`` (refuse writes below it; remember the
        replica set ``proposed`` with it) and answer the state held here:
        ``["promised", generation, version, items, config]``, or
        ``["refused", promised, config]`` when this node promised as much already;
        ``config`` is :meth:`Fence.config` as it was before this promise.

        ``digests``: the taker knows digests (every node since they came). Then the
        answer names the state by its digest instead of carrying it, ``["promised",
        generation, version, None, config, digest]``: the taker reads the state
        (``state``) only if it is the highest and the taker has not got it.

        ``owner_at`` > 0: the owner at that generation moves its replica set
        (:meth:`reconfigure`), it does not take the agent over: refused when this node
        promised a newer generation to someone else (that owner may be fenced: a stale
        one must not carry its old state to a newer generation) or hosts the agent."""
        fence = self.fences.get(agent_id, Fence())
        if self._hosts(agent_id):
            mine = self.failover.generation(agent_id)
            owned = self.owned.get(agent_id)
            members = owned.members(self.node_id) if owned is not None else fence.members
            config = Fence(fence.promised, mine, 0, members, fence.proposals).config()
            if generation <= max(mine, fence.promised) or owner_at:
                return ["refused", max(mine, fence.promised), config]
            runtime = self.node.agents.runtime(agent_id)
            version = owned.version if owned is not None else runtime.version
            answer = _promise_answer(mine, version, runtime.kv, config, digests)
            if agent_id not in self.handing_over:  # a live move removes its copy itself
                self.fence(
                    agent_id, f"{taker} takes it over at generation {generation}", generation
                )
            # The state answered stays here as this generation's holder copy (its
            # rows are kept): the answer may be lost (a one-way cut) and the takeover
            # fail, and the next one may count this node's promise in its majority.
            held = Fence(fence.promised, mine, version, members, fence.proposals)
            self._persist(agent_id, held.promise(generation, proposed))
            self.states.pop(agent_id, None)
            return answer
        if generation <= fence.promised or (
            owner_at and fence.promised > owner_at and not fence.proposed_by(taker)
        ):
            return ["refused", fence.promised, fence.config()]
        self._persist(agent_id, fence.promise(generation, proposed))
        state = await self._state(agent_id)
        return _promise_answer(fence.generation, fence.version, state, fence.config(), digests)

    def on_owns(self, body: Any) -> list[Any]:
        """Who may own ``agent_id`` as this node knows it (``owns``, read only, for
        :mod:`caxton.cluster.orphans`): ``[generation it runs here at (0: it does not
        run here), the highest generation promised here, the nodes that proposed the
        promises remembered here (would-be owners)]``."""
        agent_id = body.get("agent_id") if isinstance(body, Mapping) else None
        if not isinstance(agent_id, str):
            raise ValidationError("malformed owns")
        fence = self.fences.get(agent_id, Fence())
        hosted = self.failover.generation(agent_id) if self._hosts(agent_id) else 0
        proposers = sorted({m[0] for _, m in fence.proposals if m})
        return [hosted, max(fence.promised, hosted), proposers]

    # -- takeover -----------------------------------------------------------------------

    async def take(
        self, replica: Replica, *, moved: bool = False
    ) -> tuple[int, dict[bytes, bytes], tuple[str, ...]] | None:
        """Get a majority of the agent's replica set in force to promise the next
        generation and put the highest state among their answers on a majority of the
        new set.

        The set in force is the one its owner writes to, which ``replica`` (this node's
        record) may no longer name: a replica set changes only through a promise round
        (:meth:`reconfigure`, or a takeover), whose promisers remember the set proposed,
        and each holder remembers the set of the generation it holds. So a majority of
        any set that once was in force names every later one; each set an answer
        reveals above the record's generation is asked too, and the takeover needs a
        majority of every one of them.

        ``moved``: a live move (:mod:`caxton.cluster.moves`) whose source, alive and
        holding the state, may stay in the new set as a holder (a failover leaves the
        old owner out).

        Returns ``(generation, state, holders)`` to start the agent with, or None (an
        event says why) when no such majority promised or took the state: the caller
        tries again later, it never starts the agent from less.
        """
        agent_id = replica.agent_id
        fence = self.fences.get(agent_id, Fence())
        # Each replica set whose majority the takeover needs, with its generation.
        sets: dict[Members, int] = {(replica.owner, *replica.holders): replica.generation}
        base = replica.generation
        top = max(replica.generation, fence.promised, fence.generation)
        for seen, members in [(fence.generation, fence.members), *fence.proposals]:
            if seen > base and members:
                sets[members] = max(seen, sets.get(members, 0))
        ours: set[int] = set()
        promised: dict[str, list[Any]] = {}
        generation = top + 1
        proposed: Members = (self.node_id,)
        for _ in range(TAKE_ROUNDS):
            generation = top + 1
            ours.add(generation)
            current = max(sets, key=lambda m: sets[m])
            holders = self.failover.holders_for(replica.agent_id, current, keep_owner=moved)
            proposed = (self.node_id, *holders)
            answers = await self._promises(agent_id, generation, proposed, list(sets))
            learned = False
            for answer in answers.values():
                highest, configs = _config_of(answer)
                top = max(top, highest)
                for seen, members in configs:
                    if seen > base and seen not in ours and members not in sets:
                        sets[members] = seen
                        learned = True
            promised = {m: a for m, a in answers.items() if _promised(a)}
            if learned:
                continue  # a newer replica set: ask its members too
            if all(_has_majority(promised, members) for members in sets):
                break
            if not any(isinstance(a, list) and a[:1] == ["refused"] for a in answers.values()):
                break  # no majority answers: try again later
        missing = [m for m in sets if not _has_majority(promised, m)]
        if missing:
            self._takeover_failed(
                replica,
                "no majority of its replica set "
                + " and of ".join(f"[{', '.join(m)}]" for m in missing)
                + f" promised generation {generation} (promised: "
                f"{', '.join(sorted(promised)) or 'none'}); it is not started from less",
            )
            return None
        state = await self._highest(agent_id, promised)
        if state is None:
            self._takeover_failed(
                replica, "no member that promised would send the highest state it answered"
            )
            return None
        holders = proposed[1:]
        # The state at the new generation on a majority of the new set before it starts:
        # a member that holds this very state (its digest) only takes the new generation,
        # the others take the whole state.
        digest = _digest(state)
        lacking = {m for m, a in answers.items() if _promised(a) and a[5:] != [digest]}
        items = [[k, v] for k, v in state.items()]
        entry = [agent_id, generation, 0, 0, True, items, [], list(proposed)]
        # The holders that took it (those still writing add themselves) hold the state the
        # agent starts with, at version 0: the new owner's first writes to them are
        # deltas (:meth:`_owned`).
        took: set[str] = set()
        if await self._write_majority(proposed, entry, digest, lacking, took) is None:
            self._takeover_failed(replica, "its state did not reach a majority of its holders")
            return None
        self._primed[agent_id] = (generation, took)
        async with self._lock:  # the key/value rows here become the chosen state
            self._replace(agent_id, await self._state(agent_id), state)
            now = self.fences.get(agent_id, Fence())
            self._persist(agent_id, now.holding(generation, 0, proposed))
            self.states.pop(agent_id, None)
        return generation, state, holders

    async def _highest(
        self, agent_id: str, promised: Mapping[str, Any]
    ) -> dict[bytes, bytes] | None:
        """The highest state (generation, then version) among the ``promised`` answers.

        Answers name their state by its digest (nodes before digests send their items):
        this node's own state when the highest has its digest, else the state read from
        a member that answered it (``state``), whose digest must match. So the state
        crosses the network once, and only to a taker that lacks it."""
        mine = promised[self.node_id]
        own = {bytes(k): bytes(v) for k, v in mine[3]}
        ranked = sorted(promised.items(), key=lambda p: (p[1][1], p[1][2]), reverse=True)
        top = ranked[0][1]
        if top[3] is not None:
            return {bytes(k): bytes(v) for k, v in top[3]}
        wanted = top[5]
        if wanted == _digest(own):
            return own
        for member, answer in ranked:
            if member == self.node_id or answer[1:3] != top[1:3] or answer[5:] != [wanted]:
                continue
            state = await self._read_state(member, agent_id, wanted)
            if state is not None:
                return state
        return None

    async def _read_state(
        self, member_id: str, agent_id: str, digest: bytes
    ) -> dict[bytes, bytes] | None:
        """``member_id``'s state of ``agent_id`` if it still has ``digest``."""
        member = self.cluster._live(member_id)
        if member is None:
            return None
        body = {"agent_id": agent_id, "digest": digest}
        try:
            answer = await self.cluster._control(
                member.address, PROMISE_TIMEOUT, "state", self.failover.trust.seal(body)
            )
        except CaxtonError as exc:
            log.debug("state from %s failed: %s", member_id, exc)
            return None
        if not isinstance(answer, list) or answer[:1] != ["state"] or len(answer) != 2:
            return None
        state = {bytes(k): bytes(v) for k, v in _items(answer[1])}
        return state if _digest(state) == digest else None

    async def on_state(self, sender: str, body: Any) -> list[Any]:
        """A taker reads the state this node answered a promise with (by its digest)."""
        if not isinstance(body, Mapping):
            raise ValidationError("malformed state read")
        agent_id, digest = body.get("agent_id"), body.get("digest")
        if not isinstance(agent_id, str) or not isinstance(digest, bytes):
            raise ValidationError("malformed state read")
        async with self._lock:
            if self._hosts(agent_id):
                state: Mapping[bytes, bytes] = self.node.agents.runtime(agent_id).kv
            else:
                state = await self._state(agent_id)
            if _digest(state) != digest:
                return ["changed"]
            return ["state", [[k, v] for k, v in state.items()]]

    async def _promises(
        self,
        agent_id: str,
        generation: int,
        proposed: Members,
        sets: list[Members],
        *,
        mine: bool = True,
        owner_at: int = 0,
    ) -> dict[str, Any]:
        """Ask every member of ``sets`` (this node first, unless ``mine`` is False: it
        promised already) to promise ``generation`` with the set ``proposed``; return
        the answers once a majority of every set promised, or once every member
        answered or timed out (a promise that comes later still fences). The others
        answer the digest of their state, not its items (:meth:`_highest`)."""
        answers: dict[str, Any] = {}
        if mine:
            async with self._lock:
                answers[self.node_id] = await self._promise(
                    agent_id, generation, self.node_id, proposed
                )
            await self.node.store.flush()
            if not _promised(answers[self.node_id]):
                return answers
        else:
            answers[self.node_id] = ["promised", 0, 0, [], None]

        async def ask(member: str) -> tuple[str, Any]:
            return member, await self._ask(member, agent_id, generation, proposed, owner_at)

        others = {m for members in sets for m in members if m != self.node_id}
        pending = {self.cluster._spawn(ask(m)) for m in sorted(others)}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            answers.update(task.result() for task in done)
            promised = {m: a for m, a in answers.items() if _promised(a)}
            if all(_has_majority(promised, members) for members in sets):
                break
        return answers

    async def _ask(
        self,
        member_id: str,
        agent_id: str,
        generation: int,
        proposed: Members,
        owner_at: int = 0,
    ) -> Any:
        member = self.cluster._live(member_id)
        if member is None:
            return None
        body: dict[str, Any] = {
            "agent_id": agent_id,
            "generation": generation,
            "members": list(proposed),
            "digests": True,
        }
        if owner_at:
            body["owner_at"] = owner_at
        try:
            return await self.cluster._control(
                member.address, PROMISE_TIMEOUT, "promise", self.failover.trust.seal(body)
            )
        except CaxtonError as exc:
            log.debug("promise from %s failed: %s", member_id, exc)
            return None

    async def reconfigure(self, agent_id: str, holders: Members) -> bool:
        """Move the replica set of an agent hosted here to this node plus ``holders``:
        the fenced path, so that a takeover always finds the set in force. A majority
        of the current set promises generation g+1 with the new set, the whole state
        goes to a majority of the new set at g+1, then the owner writes at g+1.
        False (nothing changed) when no majority promised or took it."""
        agents = self.node.agents
        if agents is None or agent_id not in agents:
            return False
        runtime = agents.runtime(agent_id)
        owned = self._owned(runtime)
        if owned is None or runtime.fenced is not None:
            return False
        if self.cluster.partition.mode is not PartitionMode.READ_WRITE:
            return False  # (a copy cut off may be a stale one: it waits for the heal)
        fence = self.fences.get(agent_id, Fence())
        if fence.promised > owned.generation:
            return False  # promised to a newer owner: its writes are refused anyway
        current = owned.members(self.node_id)
        proposed = (self.node_id, *holders)
        generation = max(owned.generation, fence.promised, owned.tried) + 1
        # Refusals up to the generations it proposed are its own promise rounds (kept
        # after a round that failed: its promisers refuse generation g now, and the
        # next reconfigure, with a higher generation, brings them along).
        owned.pending = owned.tried = generation
        answers = await self._promises(
            agent_id, generation, proposed, [current], mine=False, owner_at=owned.generation
        )
        if self.owned.get(agent_id) is not owned or not _has_majority(
            {self.node_id: True, **{m: a for m, a in answers.items() if _promised(a)}},
            current,
        ):
            return False
        version = owned.version
        items = [[k, v] for k, v in runtime.kv.items()]
        entry = [agent_id, generation, 0, version, True, items, [], list(proposed)]
        taken = await self._write_majority(proposed, entry)
        if taken is None or self.owned.get(agent_id) is not owned:
            return False  # tried again by the next reconcile, one generation higher
        # From here on the owner writes at the new generation to the new set.
        failover = self.failover
        failover.generations[agent_id] = generation
        failover.holders[agent_id] = holders
        self.node.store.put_placement(agent_id, runtime.name, generation)
        owned.generation = generation
        owned.holders = holders
        owned.sent = {h: None for h in holders}
        owned.acked = {h: version for h in taken}
        owned.refused = {}
        now = self.fences.get(agent_id, Fence())
        self._persist(agent_id, now.holding(generation, owned.local, proposed))
        owned.pending = 0
        self._schedule_resync(agent_id)
        self._check(owned)
        return True

    async def _write_majority(
        self,
        members: Members,
        entry: list[Any],
        digest: bytes = b"",
        lacking: Collection[str] = (),
        took: set[str] | None = None,
    ) -> set[str] | None:
        """Write one whole-state entry to the holders of ``members`` (this node, the
        first, holds it already); the holders that took it once they and this node are a
        majority of ``members`` (the others go on in the background), else None.

        With the state's ``digest``, the holders that may hold it already (all but
        those ``lacking`` it) are sent the entry without its items first: they check the
        digest against their state and take the new generation, or answer ``stale``;
        then they are sent the whole of it. ``took``: each holder that took it is added,
        the ones after the majority too."""
        needed = majority(len(members)) - 1
        taken: set[str] = set()
        if needed <= 0:
            return taken
        agent_id, generation, _, version, _, _, _, proposed = entry
        bump = [agent_id, generation, 0, version, False, [], [], proposed, digest]

        async def write(holder: str) -> tuple[str, bool]:
            done = bool(digest) and holder not in lacking and await self._write_one(holder, bump)
            done = done or await self._write_one(holder, entry)
            if done and took is not None:
                took.add(holder)
            return holder, done

        pending = {self.cluster._spawn(write(h)) for h in members[1:]}
        while pending and len(taken) < needed:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            taken.update(h for h, ok in (task.result() for task in done) if ok)
        return taken if len(taken) >= needed else None

    async def _write_one(self, holder: str, entry: list[Any]) -> bool:
        """Write one entry to ``holder``; True once it holds it. A holder that still hosts
        the copy it was just fenced from answers ``gap`` until that copy is removed (a
        few ms): it is asked again meanwhile, so a takeover that fenced a live owner does
        not give up on it and leave the agent running nowhere."""
        for _ in range(GAP_RETRIES):
            member = self.cluster._live(holder)
            if member is None:
                return False
            try:
                answer = await self.cluster._control(
                    member.address, WRITE_TIMEOUT, "writes", self.failover.trust.seal([entry])
                )
            except CaxtonError:
                return False
            result = answer[0] if isinstance(answer, list) and len(answer) == 1 else None
            if not isinstance(result, list) or result[:1] != ["gap"] or entry[8:]:
                return isinstance(result, list) and result[:1] == ["ok"]
            await asyncio.sleep(GAP_RETRY_DELAY)
        return False

    def _takeover_failed(self, replica: Replica, reason: str) -> None:
        self.cluster.events.record(
            "migration-failed",
            f"Agent '{replica.name}' of {replica.owner} is not restarted on {self.node_id}: "
            f"{reason}",
            node_id=replica.owner,
            level="warning",
        )

    def _hosts(self, agent_id: str) -> bool:
        agents = self.node.agents
        return agents is not None and agent_id in agents


def _has_majority(promised: Mapping[str, Any], members: Members) -> bool:
    return sum(1 for m in set(members) if m in promised) >= majority(len(set(members)))


def _promised(answer: Any) -> bool:
    return (
        isinstance(answer, list)
        and len(answer) in (4, 5, 6)
        and answer[0] == "promised"
        and isinstance(answer[1], int)
        and isinstance(answer[2], int)
        and (isinstance(answer[3], list) or (answer[3] is None and len(answer) == 6))
        and (len(answer) < 6 or isinstance(answer[5], bytes))
    )


def _digest(state: Mapping[bytes, bytes]) -> bytes:
    """A digest of a whole key/value state (the same for the same keys and values)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        digest.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(8, "big"))
        digest.update(value)
    return digest.digest()


def _promise_answer(
    generation: int,
    version: int,
    state: Mapping[bytes, bytes],
    config: list[Any],
    digests: bool,
) -> list[Any]:
    """A promise's answer with the state held here (see :meth:`Ownership._promise`)."""
    if not digests:
        return ["promised", generation, version, [[k, v] for k, v in state.items()], config]
    return ["promised", generation, version, None, config, _digest(state)]


def _entry_of(data: Any) -> tuple[Any, ...]:
    """A ``writes`` entry from the wire, checked."""
    try:
        agent_id, generation, base, version, full, puts, deletes, *rest = data
    except (TypeError, ValueError):
        raise ValidationError("malformed write") from None
    # The replica set rides on whole-state writes (not sent by nodes before it).
    members = _members(rest[0]) if rest and rest[0] else None
    # A takeover's "you hold this state already" (:meth:`Ownership._same_state`): its
    # digest, no items (not full: a node before it answers ``gap``, then gets it whole).
    same = rest[1] if len(rest) > 1 else None
    if not (
        isinstance(agent_id, str)
        and all(isinstance(n, int) for n in (generation, base, version))
        and isinstance(full, bool)
        and isinstance(puts, list)
        and isinstance(deletes, list)
        and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, bytes) for x in p)
            for p in puts
        )
        and all(isinstance(k, bytes) for k in deletes)
        and (same is None or (isinstance(same, bytes) and members is not None and not full))
    ):
        raise ValidationError("malformed write")
    puts = [(k, v) for k, v in puts]
    return agent_id, generation, base, version, full, puts, deletes, members, same


def _items(data: Any) -> list[tuple[bytes, bytes]]:
    if not isinstance(data, list) or not all(
        isinstance(i, list) and len(i) == 2 and all(isinstance(x, bytes) for x in i) for i in data
    ):
        raise ValidationError("malformed key/value state")
    return [(k, v) for k, v in data]


def _members(data: Any) -> Members:
    if not isinstance(data, list) or not all(isinstance(m, str) for m in data):
        raise ValidationError("malformed replica set")
    return tuple(data)


def _proposals(data: Any) -> tuple[Config, ...]:
    if not isinstance(data, list):
        raise ValidationError("malformed proposals")
    proposals = []
    for item in data:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)):
            raise ValidationError("malformed proposals")
        proposals.append((item[0], _members(item[1])))
    return tuple(proposals)


def _config_of(answer: Any) -> tuple[int, list[Config]]:
    """From a promise answer: the highest generation it names and the replica sets it
    reveals (the set of the state it holds, the sets proposed with its promises)."""
    if not isinstance(answer, list) or len(answer) < 2 or not isinstance(answer[1], int):
        return 0, []
    top = answer[1]
    config = answer[4] if len(answer) == 6 else answer[-1] if len(answer) in (3, 5) else None
    if not isinstance(config, list) or len(config) != 3:
        return top, []
    try:
        generation, members, proposals = config[0], _members(config[1]), _proposals(config[2])
    except ValidationError:
        return top, []
    if not isinstance(generation, int):
        return top, []
    found = [(generation, members)] if members else []
    found += [p for p in proposals if p[1]]
    return max([top, generation, *(g for g, _ in proposals)]), found
