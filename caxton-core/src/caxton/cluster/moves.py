"""Live migration: one running agent moved to another node, as a fenced takeover.

``caxton agent move NAME --to NODE`` (``POST /api/v1/agents/{id}/move``, through any
node: :mod:`caxton.cluster.agent_ops` carries it to the agent's node, the *source*):

1. **Replica.** The source sends the target the agent's replica (module, spec), as
   it does to its holders (:meth:`Failover._push`).
2. **Quiesce.** The source holds the agent's mailbox (new messages queue, none is
   delivered; a wasm call is synchronous, so the message in progress has finished),
   defers its timers, and waits until every output of the agent is committed (its
   replies and sends left: with ``durability = "quorum"`` its last change is on a
   majority of its replica set).
3. **Takeover** (CONTROL op ``move`` to the target). The target takes the agent over
   through the same fenced takeover as a failover (:meth:`Failover._take` ->
   :meth:`Ownership.take`): a majority of the replica set promises generation g+1 and
   the highest state among them is the one it starts with. The source, asked too,
   promises without removing its copy (:attr:`Ownership.handing_over`), so from now
   on no write of generation g can reach a majority: there is never a second writable
   copy. The target deploys the agent under its id with its mailbox *held*, its
   pending timers and its conversations, and announces it in the registry.
4. **Hand-over** (CONTROL op ``move-done``). The source takes every message still
   queued for the agent out of its mailbox, removes its copy (without
   ``agent_shutdown``: the new copy ran ``agent_init``), and sends them; the target
   commits them to its outbox (at-least-once), queues them *ahead* of whatever arrived
   there meanwhile and releases the mailbox. What reaches the source from then on is
   forwarded to the target (the registry and the ``miss`` answers route it there).

Failures end with exactly one copy; docs/cluster.md, "Moving an agent", lists each
case. In short: before the takeover answers, the source takes the agent back through a
takeover of its own (a fresh generation, the highest state, which fences a target
copy that may have started); after it, the source's copy is gone either way and its
queued messages are forwarded to wherever the agent runs.

:meth:`Moves.drain` moves every agent of this node elsewhere (the placement driver
ranks), for ``cluster leave --drain-timeout``, SIGTERM with draining and rolling
restarts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from caxton.agents.model import AgentState
from caxton.cluster import wire
from caxton.cluster.failover import Replica
from caxton.cluster.placement import NodeUnreachable, UnknownNode, error_answer, node_loads
from caxton.drivers import PlacementRequest
from caxton.errors import AgentNotFound, CaxtonError, Conflict, ValidationError
from caxton.messaging import Message
from caxton.placement import NoPlacement, rank_nodes

if TYPE_CHECKING:
    from caxton.agents.runtime import AgentRuntime
    from caxton.cluster.service import Cluster
    from caxton.drivers.transport import Frame

__all__ = ["OPS", "DrainReport", "MoveFailed", "Moves"]

log = logging.getLogger("caxton.cluster")

#: The control ops :class:`Moves` answers (sealed: :mod:`caxton.cluster.trust`).
OPS = frozenset({"move", "move-done", "drain"})
#: Seconds the source waits for the agent's outputs to be committed before it moves.
QUIESCE_TIMEOUT = 5.0
#: Seconds the target has for the takeover (the promise round and the deploy).
TAKEOVER_TIMEOUT = 15.0
#: Seconds the target has to take the handed-over messages.
HANDOVER_TIMEOUT = 10.0
#: Seconds a moved agent's mailbox stays held on the target waiting for the source's
#: queued messages (a source that died meanwhile never sends them).
RELEASE_AFTER = 10.0
#: Seconds after a move before the old node drops the state it kept, unless it holds
#: the new owner's replica by then.
FORGET_AFTER = 30.0
#: Seconds between two attempts to take an agent back after a failed move.
RECLAIM_RETRY = 0.5
#: Agents moved at once by a drain.
DRAIN_PARALLEL = 4

_MOVABLE = frozenset(
    {AgentState.RUNNING, AgentState.READY, AgentState.SUSPENDED, AgentState.STOPPED,
     AgentState.LOADED, AgentState.FAILED}
)  # fmt: skip
_STARTED = frozenset({AgentState.RUNNING, AgentState.READY, AgentState.SUSPENDED})


class MoveFailed(Conflict):
    error = "Move failed"


@dataclass
class DrainReport:
    """What a drain did: the agents moved (name -> node), those left here (name ->
    why), and how long it took."""

    node_id: str
    moved: dict[str, str] = field(default_factory=dict)
    stranded: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Moves:
    """Live moves of this node's agents, and the target's side of moves to it."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.node = cluster.node
        self.node_id = cluster.node_id
        self.failover = cluster.failover
        #: Agents moving away from here: agent id -> target.
        self.moving: dict[str, str] = {}
        #: Agents moved here whose mailbox waits for the source's messages.
        self._arriving: dict[str, asyncio.TimerHandle] = {}
        #: Seconds each completed move took here (as source), for the figures.
        self.durations: list[float] = []
        #: Takeovers of moved agents here run one at a time (two agents of one module
        #: arriving at once would otherwise race on the module's row).
        self._taking = asyncio.Lock()

    # -- the source ---------------------------------------------------------------------

    async def move(self, agent_id: str, target: str) -> dict[str, Any]:
        """Move this node's agent ``agent_id`` to ``target``; the agent as the target
        reports it, with ``moved_from``, ``generation`` and ``seconds``.

        Raises :class:`AgentNotFound`, :class:`UnknownNode`, :class:`NodeUnreachable`,
        :class:`Conflict` (already there, already moving, not movable) or
        :class:`MoveFailed` (the agent stays here, or runs where the answer says).
        """
        started = time.perf_counter()
        agents = self.node.agents
        runtime = agents.runtime(agent_id) if agents is not None else None
        if runtime is None or runtime.agent.id != agent_id:
            raise AgentNotFound(agent_id)
        agent = runtime.agent
        member = self._target(agent.name, target)
        self.cluster.partition.check_write(f"moving agent '{agent.name}'")
        if agent_id in self.moving:
            raise Conflict(f"agent '{agent.name}' is already moving to {self.moving[agent_id]}")
        if agent.state not in _MOVABLE:
            raise Conflict(
                f"agent '{agent.name}' is {agent.state.value}: only a running, suspended, "
                f"stopped or failed agent can move; retry in a moment"
            )
        self.moving[agent_id] = target
        try:
            holders = self.failover.holders.get(agent_id) or self.failover._choose_holders(agent)
            replica = self.failover.replica_of(agent, holders)
            if not await self.failover._push(replica, target):
                raise MoveFailed(
                    f"agent '{agent.name}' did not move: node {target} did not take its "
                    f"module and spec (see its log); it still runs on {self.node_id}"
                )
        except BaseException:
            self._finished(agent_id)
            raise
        ownership = self.failover.ownership
        ownership.handing_over.add(agent_id)
        self.failover._dropping.add(agent_id)  # no claim or replication removes it meanwhile
        router = self.node.router
        held = router.is_registered(agent.name)
        if held:
            router.hold(agent.name)
        runtime.moving = True
        was = agent.state
        if was is AgentState.RUNNING:  # listed and announced as draining meanwhile
            self.node.agents._set_state(runtime, AgentState.DRAINING)
        try:
            await self._quiesce(runtime)
        except BaseException as exc:  # nothing was asked of the target: resume here
            self._finished(agent_id)
            self._resume_here(runtime, held)
            raise MoveFailed(
                f"agent '{agent.name}' did not move to {target}: {_why(exc)}; it still "
                f"runs on {self.node_id}"
            ) from None
        try:
            body = {
                "agent_id": agent_id,
                "state": was.value,
                "timers": runtime.timers_to_hand_over(),
                "conversations": router.conversations_of(agent.name),
                "kv": None if ownership.enabled else [[k, v] for k, v in runtime.kv.items()],
                # The module once more: the target's copy of it (from the replica) may
                # have gone with a replica of another agent meanwhile.
                "wasm": await self.node.store.load_module(agent.module_sha256),
            }
            answer = await self._ask(member.address, TAKEOVER_TIMEOUT, "move", body)
        except BaseException as exc:
            self.cluster._spawn(self._take_back(runtime, replica, target, _why(exc), held))
            raise MoveFailed(
                f"agent '{agent.name}' did not move to {target}: {_why(exc)}; it is taken "
                f"back on {self.node_id}"
            ) from None
        moved = _moved(target, answer)
        if moved is None:
            self.cluster._spawn(self._take_back(runtime, replica, target, _refusal(answer), held))
            raise MoveFailed(
                f"agent '{agent.name}' did not move to {target}: {_refusal(answer)}; it is "
                f"taken back on {self.node_id}"
            )
        handed = await self._hand_over(runtime, target, member.address)
        seconds = time.perf_counter() - started
        self.durations.append(seconds)
        self.cluster.events.record(
            "agent-moved",
            f"Agent '{agent.name}' moved from {self.node_id} to {target} (generation "
            f"{moved.get('generation')}, {handed} queued messages handed over, "
            f"{seconds * 1000:.0f} ms)",
            node_id=target,
            details={"agent": agent.name, "from": self.node_id, "to": target},
        )
        return {**moved, "moved_from": self.node_id, "seconds": round(seconds, 6)}

    def _target(self, name: str, target: str) -> Any:
        if target == self.node_id:
            raise Conflict(f"agent '{name}' already runs on {target}")
        try:
            member = self.cluster._member(target)
        except CaxtonError:
            members = sorted(m.node_id for m in self.cluster.membership.members())
            raise UnknownNode(
                f"unknown node '{target}': the cluster's nodes are {', '.join(members)}"
            ) from None
        if self.cluster._live(target) is None:
            raise NodeUnreachable(
                f"node '{target}' is not reachable: it is {member.status.value}; choose another"
            )
        return member

    async def _quiesce(self, runtime: AgentRuntime) -> None:
        """Wait until every output of the agent is committed (it is held: nothing new)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + QUIESCE_TIMEOUT
        while runtime.held or runtime.version > runtime.committed or runtime.busy:
            if loop.time() >= deadline:
                raise MoveFailed(
                    f"its last state change was not committed within {QUIESCE_TIMEOUT:g}s "
                    f"(replica holders unreachable?)"
                )
            await asyncio.sleep(0.001)

    async def _hand_over(self, runtime: AgentRuntime, target: str, address: Any) -> int:
        """After the takeover: remove the copy here, send its queued messages."""
        agent = runtime.agent
        router = self.node.router
        await router.settle()
        # From here to the removal nothing awaits: no message slips in between.
        messages: list[Message] = list(runtime.backlog)
        runtime.backlog.clear()
        if router.is_registered(agent.name):
            messages += router.take_queue(agent.name)
            router.hand_over(agent.name)  # anything arriving until it is gone goes there
        self.failover._stale.add(agent.id)  # the new owner keeps the replicas
        try:
            await self.node.agents.remove(agent.id, graceful=False, keep_state=True)
        except AgentNotFound:
            pass
        finally:
            self._finished(agent.id)
        self.cluster._get_loop().call_later(
            FORGET_AFTER, self._forget_unless_held, agent.id, agent.module_sha256
        )
        senders = {m.sender for m in messages}
        routes = {s: o for s in senders if (o := self.cluster.reply_route(s)) is not None}
        body = {
            "agent_id": agent.id,
            "messages": [m.to_dict() for m in messages],
            "routes": routes,
        }
        try:
            answer = await self._ask(address, HANDOVER_TIMEOUT, "move-done", body)
        except CaxtonError as exc:
            answer = ["error", 502, "", str(exc), None]
        if answer == ["ok", len(messages)]:
            router.handed_off(messages)
        elif (
            messages
        ):  # to wherever the agent runs now (at-least-once: until taken or past the TTL)
            log.warning(
                "node %s did not take the %d messages queued for %s (%s): forwarding them",
                target,
                len(messages),
                agent.name,
                _refusal(answer),
            )
            router.forward_again(messages)
        return len(messages)

    def _forget_unless_held(self, agent_id: str, module_sha256: str) -> None:
        """The old copy's rows were kept in case this node holds the new owner's
        replica; by now it has its replica record if it does. If not, drop them."""
        agents = self.node.agents
        if agent_id in self.failover.replicas or (agents is not None and agent_id in agents):
            return
        self.node.store.delete_agent(agent_id)
        self.node.store.delete_replica(agent_id, module_sha256)  # the module, if unused
        self.failover.ownership.forget_state(agent_id)

    def _finished(self, agent_id: str) -> None:
        self.moving.pop(agent_id, None)
        self.failover.ownership.handing_over.discard(agent_id)
        self.failover._dropping.discard(agent_id)

    async def _take_back(
        self, runtime: AgentRuntime, replica: Replica, target: str, reason: str, held: bool
    ) -> None:
        """The move failed before the takeover answered: the target may or may not have
        taken the agent over. Take it back here through a takeover of its own (a fresh
        generation, the highest state of a majority: it fences a copy the target may
        have started), then resume it; until a majority answers, keep it quiesced,
        unless the registry shows it running elsewhere (then hand it over there)."""
        agent = runtime.agent
        ownership = self.failover.ownership
        events = self.cluster.events
        events.record(
            "move-failed",
            f"Agent '{agent.name}' did not move to {target}: {reason}; taking it back on "
            f"{self.node_id}",
            node_id=self.node_id,
            level="warning",
        )
        try:
            while ownership.enabled:
                generation = max(self.failover.generation(agent.id), replica.generation)
                back = dataclasses.replace(replica, generation=generation)
                taken = await ownership.take(back)
                if taken is not None:
                    await self._resume(runtime, *taken)
                    break
                owner = await self._owner_elsewhere(agent.name, agent.id, generation)
                if owner is not None:  # it took it over and runs: what queued here goes there
                    await self._hand_over(runtime, owner, self.cluster._member(owner).address)
                    return
                await asyncio.sleep(RECLAIM_RETRY)
        except CaxtonError as exc:  # removed meanwhile, the node stopping
            log.warning("taking %s back after a failed move: %s", agent.name, exc)
            self._finished(agent.id)
            return
        self._finished(agent.id)
        self._resume_here(runtime, held)

    def _resume_here(self, runtime: AgentRuntime, held: bool) -> None:
        """Deliver to the agent here again (its move did not happen)."""
        agent = runtime.agent
        runtime.moving = False
        if agent.state is AgentState.DRAINING:
            self.node.agents._set_state(runtime, AgentState.RUNNING)
        suspended = agent.state is AgentState.SUSPENDED
        if held and not suspended and self.node.router.is_registered(agent.name):
            self.node.router.release(agent.name)
        if not suspended:
            runtime.run_deferred_timers()
        runtime.run_backlog()

    async def _resume(
        self,
        runtime: AgentRuntime,
        generation: int,
        state: dict[bytes, bytes],
        holders: tuple[str, ...],
    ) -> None:
        """Own the agent here again at ``generation``, with ``state``."""
        agent = runtime.agent
        failover = self.failover
        failover.generations[agent.id] = generation
        failover.holders[agent.id] = holders
        failover.ownership.owned.pop(agent.id, None)
        self.node.store.put_placement(agent.id, agent.name, generation)
        if state != runtime.kv:  # the target ran it and changed it: start from that state
            runtime.kv = dict(state)
            runtime.kv_bytes = sum(len(k) + len(v) for k, v in state.items())
            if agent.state is AgentState.DRAINING:
                self.node.agents._set_state(runtime, AgentState.RUNNING)
            if agent.state in (AgentState.RUNNING, AgentState.SUSPENDED):
                await self.node.agents.update(agent.id, drain_timeout=0.0)
        failover.schedule_reconcile()

    async def _owner_elsewhere(self, name: str, agent_id: str, generation: int) -> str | None:
        """A live node that answers it runs ``agent_id`` at a higher generation (the
        registry alone is not enough: the node it names may be the one that died)."""
        for entry in self.cluster.registry.lookup(name):
            member = self.cluster._live(entry.node_id)
            if entry.agent_id != agent_id or entry.node_id == self.node_id or member is None:
                continue
            body = {"agent_id": agent_id, "name": name, "generation": generation}
            try:
                theirs = await self._ask(member.address, 2.0, "claim", body)
            except CaxtonError:
                continue
            if isinstance(theirs, int) and theirs > generation:
                return entry.node_id
        return None

    async def _ask(self, address: Any, timeout: float, op: str, body: Any) -> Any:
        return await self.cluster._control(address, timeout, op, self.failover.trust.seal(body))

    # -- the target -----------------------------------------------------------------------

    async def _on_move(self, source: str, body: Any) -> list[Any]:
        if not isinstance(body, Mapping) or not isinstance(body.get("agent_id"), str):
            raise ValidationError("malformed move")
        agent_id = body["agent_id"]
        replica = self.failover.replicas.get(agent_id)
        if replica is None or replica.owner != source:
            raise Conflict(
                f"node {self.node_id} holds no replica of agent {agent_id} from {source}"
            )
        self.cluster.partition.check_write(f"taking over agent '{replica.name}'")
        timers = _timers(body.get("timers"))
        conversations = body.get("conversations") or []
        kv = _kv(body.get("kv"))
        state = AgentState(str(body.get("state") or "running"))
        router = self.node.router
        router.start_held(replica.name)
        router.adopt_conversations([c for c in conversations if isinstance(c, Mapping)])
        wasm = body.get("wasm")
        async with self._taking:
            if (
                isinstance(wasm, bytes)
                and hashlib.sha256(wasm).hexdigest() == replica.module_sha256
                and await self.node.store.load_module(replica.module_sha256) is None
            ):
                self.node.store.put_module(replica.module_sha256, wasm)
            taken = await self.failover._take(replica, False, kv=kv, moved=True)
        if not taken:
            raise MoveFailed(
                f"node {self.node_id} could not take agent '{replica.name}' over (its events "
                f"say why: caxton cluster watch)"
            )
        agents = self.node.agents
        runtime = agents.runtime(agent_id)
        runtime.reserve_timer_ids(timers)
        if state in _STARTED:
            await agents.start_agent(agent_id)
            runtime.adopt_timers(timers)
            if state is AgentState.SUSPENDED:
                await agents.suspend(agent_id)
        if router.is_registered(replica.name):
            self._arriving[agent_id] = self.cluster._get_loop().call_later(
                RELEASE_AFTER, self._release, agent_id, replica.name
            )
        return [
            "ok",
            {**runtime.agent.to_dict(), "generation": self.failover.generation(agent_id)},
        ]

    def _release(self, agent_id: str, name: str) -> None:
        handle = self._arriving.pop(agent_id, None)
        if handle is not None:
            handle.cancel()
        router = self.node.router
        agents = self.node.agents
        if not router.is_registered(name) or agents is None or agent_id not in agents:
            return
        if agents.get(agent_id).state is not AgentState.SUSPENDED:
            router.release(name)

    async def _on_move_done(self, source: str, body: Any) -> list[Any]:
        if not isinstance(body, Mapping) or not isinstance(body.get("messages"), list):
            raise ValidationError("malformed move hand-over")
        agent_id = str(body.get("agent_id"))
        agents = self.node.agents
        if agents is None or agent_id not in agents:
            raise AgentNotFound(agent_id)
        name = agents.get(agent_id).name
        messages = [Message.from_dict(m) for m in body["messages"] if isinstance(m, Mapping)]
        router = self.node.router
        routes = body.get("routes")
        for sender, origin in routes.items() if isinstance(routes, Mapping) else ():
            if isinstance(sender, str) and isinstance(origin, str):
                self.cluster.learn_reply_route(sender, origin)
        fresh = await router.adopt(messages)
        if router.is_registered(name):
            router.requeue(name, fresh)
        else:  # stopped or failed here: they wait as for any agent not running
            router.forward_again(fresh)
        self._release(agent_id, name)
        return ["ok", len(messages)]

    # -- draining this node ------------------------------------------------------------

    async def drain(self, timeout: float, *, parallel: int = DRAIN_PARALLEL) -> DrainReport:
        """Move every agent of this node to the others (the placement driver ranks
        them, as for a deploy) within ``timeout`` seconds; name those that could not
        move. The node stays a member: leaving is the caller's next step."""
        started = time.perf_counter()
        report = DrainReport(self.node_id)
        agents = self.node.agents
        if agents is None:
            return report
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        queue = sorted(agents.list(), key=lambda a: a.name)
        load = {c.node_id: c for c in node_loads(self.node) if c.node_id != self.node_id}
        counts = {node_id: c.agents for node_id, c in load.items()}
        limit = asyncio.Semaphore(max(1, parallel))

        async def one(name: str, agent_id: str) -> None:
            async with limit:
                if loop.time() >= deadline:
                    report.stranded[name] = f"not moved within the drain timeout ({timeout:g}s)"
                    return
                try:
                    target = self._choose(name, load, counts)
                    counts[target] += 1
                    left = deadline - loop.time()
                    await asyncio.wait_for(self.move(agent_id, target), max(left, 0.001))
                except (CaxtonError, asyncio.TimeoutError) as exc:
                    report.stranded[name] = _why(exc)
                    return
                report.moved[name] = target

        await asyncio.gather(*(one(a.name, a.id) for a in queue))
        report.seconds = round(time.perf_counter() - started, 3)
        if report.stranded:
            self.cluster.events.record(
                "drain-incomplete",
                f"{len(report.stranded)} agents could not move off {self.node_id}: "
                + ", ".join(f"{n} ({r})" for n, r in sorted(report.stranded.items())),
                node_id=self.node_id,
                level="warning",
            )
        self.cluster.events.record(
            "drained",
            f"Node {self.node_id} drained: {len(report.moved)} agents moved, "
            f"{len(report.stranded)} left ({report.seconds:.1f}s)",
            node_id=self.node_id,
            details=report.to_dict(),
        )
        return report

    def _choose(self, name: str, load: Mapping[str, Any], counts: Mapping[str, int]) -> str:
        candidates = [
            dataclasses.replace(c, agents=counts[n])
            for n, c in load.items()
            if self.cluster._live(n) is not None
        ]
        if not candidates:
            raise NoPlacement(f"no other live node can take agent '{name}'")
        request = PlacementRequest(agent_name=name)
        try:
            ranked = rank_nodes(self.node.hook, self.node.placement, request, candidates)
        except NoPlacement:  # a strategy that ranks only this node ("local")
            ranked = sorted(candidates, key=lambda c: (c.agents, c.node_id))
        return ranked[0].node_id

    # -- control ops --------------------------------------------------------------------

    async def on_control(self, frame: Frame, op: str, args: Sequence[Any]) -> bytes:
        """Answer one of :data:`OPS` (the cluster dispatches them here)."""
        answer: Any
        try:
            sender, body = self.failover.trust.open(op, frame.sender, args[0] if args else None)
            if op == "move":
                answer = await self._on_move(sender, body)
            elif op == "move-done":
                answer = await self._on_move_done(sender, body)
            else:
                timeout = float(body.get("timeout", 60.0)) if isinstance(body, Mapping) else 60.0
                answer = ["ok", (await self.drain(timeout)).to_dict()]
        except CaxtonError as exc:
            log.warning("refused cluster operation '%s' from %s: %s", op, frame.sender, exc)
            answer = error_answer(exc)
        except Exception as exc:  # a bug must reach the mover as an error, not a hang
            log.exception("cluster operation %s from %s failed", op, frame.sender)
            answer = ["error", 502, "Move failed", str(exc), None]
        return wire.pack(answer)


def _moved(target: str, answer: Any) -> dict[str, Any] | None:
    if isinstance(answer, list) and len(answer) == 2 and answer[0] == "ok":
        return answer[1] if isinstance(answer[1], dict) else None
    return None


def _refusal(answer: Any) -> str:
    if isinstance(answer, list) and len(answer) == 5 and answer[0] == "error":
        return str(answer[3])
    return f"malformed answer {answer!r:.80}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return str(exc) or type(exc).__name__


def _timers(data: Any) -> list[list[int]]:
    if data is None:
        return []
    if not isinstance(data, list) or not all(
        isinstance(t, list) and len(t) == 4 and all(isinstance(x, int) for x in t) for t in data
    ):
        raise ValidationError("malformed move: timers")
    return data


def _kv(data: Any) -> dict[bytes, bytes] | None:
    if data is None:
        return None
    if not isinstance(data, list) or not all(
        isinstance(i, list) and len(i) == 2 and all(isinstance(x, bytes) for x in i) for i in data
    ):
        raise ValidationError("malformed move: key/value state")
    return {bytes(k): bytes(v) for k, v in data}
