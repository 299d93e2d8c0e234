"""What a node does in a partition: refuse writes, queue messages, replay them.

The partition policy (``caxton_partition_decision``, :mod:`caxton.partition.quorum`)
only *decides* a mode; :class:`PartitionGuard` enforces it for the cluster service:

- **Refused writes.** The mode is decided from the quorum lease
  (:mod:`caxton.cluster.lease`: read-write only while a majority of the known members
  answered this node within ``partition.detection_timeout``) and checked again when a
  write is made. While the mode is not read-write, :meth:`PartitionGuard.check_write`
  raises :class:`~caxton.errors.ReadOnlyMode` naming the partition and the node counts.
  The REST API calls it for every route that needs a permission of
  :data:`WRITE_PERMISSIONS` (deploy, update, lifecycle, remove: the
  :func:`caxton.api.cluster.refuse_writes_in_partition` middleware) and for what changes
  the membership (``cluster remove``). Reads, and messages to agents this node can
  reach, keep working.
- **Queued writes.** In read-only mode with ``queue_writes`` on, a message for an agent
  whose node is out of reach (the registry, or what the registry held when that node
  failed, names a node that is not alive, or forwarding to it fails) is written to the
  ``queued_writes`` table of this node's store instead of failing, up to
  ``partition.max_queued_writes``; beyond, the sender gets ``Queue full``.
  In local-only mode such a message is refused instead: only local agents are served.
- **Replay.** When the mode is read-write again and a peer is reachable, the queued
  messages are forwarded in the order they were queued (so per conversation, and per
  receiver, FIFO holds); a message sent meanwhile to a receiver that still has queued
  messages waits behind them. The queue is in SQLite, so it survives a restart.

:func:`verify_cluster` (``caxton cluster verify``) then checks that the reachable
members agree on the membership and on the registry versions.

See docs/cluster.md, "Network partitions".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from caxton.drivers.membership import MemberStatus
from caxton.drivers.partition import PartitionDecision, PartitionMode
from caxton.errors import CaxtonError, QueueFull, ReadOnlyMode, TransportError
from caxton.store.migrations import CLUSTER_MIGRATIONS, CLUSTER_NAMESPACE

if TYPE_CHECKING:
    from caxton.cluster.forwarding import PeerRoute
    from caxton.cluster.service import Cluster
    from caxton.messaging import Message
    from caxton.messaging.remote import Acknowledgement
    from caxton.store.store import QueuedWrite

__all__ = [
    "WRITE_PERMISSIONS",
    "PartitionGuard",
    "QueuedRoute",
    "compare_digests",
    "consistency_digest",
    "partition_report",
    "verify_cluster",
]

log = logging.getLogger("caxton.cluster.partition")

#: REST permissions whose routes change cluster state, refused unless read-write.
WRITE_PERMISSIONS: Final = frozenset({"deploy", "update", "remove"})
#: Queued messages read from the store per replay round.
REPLAY_BATCH = 256
#: Seconds a replay keeps retrying a message whose receiver is not found (yet) or whose
#: node does not answer, before dead-lettering it.
REPLAY_PATIENCE = 30.0
#: Seconds between two attempts at such a message.
REPLAY_RETRY = 0.2
#: Seconds one attempt may take (the forward, then the receiving node's answer).
REPLAY_ATTEMPT = 5.0
#: Receivers whose queued messages are replayed side by side.
REPLAY_RECEIVERS = 32
NOT_FOUND: Final = "Agent not found: "
#: Member statuses counted as live when comparing views.
_REACHABLE_STATUSES = frozenset({MemberStatus.ALIVE.value, MemberStatus.SUSPECT.value})


class QueuedRoute:
    """The way to an agent on a node out of reach: the queue (a ``RemoteRoute``)."""

    __slots__ = ("guard", "node_id")

    def __init__(self, guard: PartitionGuard, node_id: str) -> None:
        self.guard = guard
        self.node_id = node_id

    async def forward(self, message: Message) -> Acknowledgement | None:
        return await self.guard.forward_or_queue(message, self.node_id)

    def __repr__(self) -> str:
        return f"<QueuedRoute for {self.node_id}>"


class PartitionGuard:
    """Enforces the partition mode of one cluster service (see the module docstring)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        settings = cluster.node.config["partition"]
        self.max_queued = int(settings["max_queued_writes"])
        self.decision: PartitionDecision | None = None
        #: Messages queued, per receiver (the replay empties them in order).
        self.waiting: dict[str, int] = {}
        self.replayed = 0
        #: Where each agent of a failed node lived (the registry forgets them).
        self._homes: dict[str, str] = {}
        self._replay: asyncio.Task[None] | None = None
        #: Receivers whose queued messages are being replayed, and those messages.
        self._replaying: set[str] = set()
        self._replaying_messages: set[str] = set()
        self._ready = False

    # -- state ------------------------------------------------------------------------

    @property
    def mode(self) -> PartitionMode:
        """This node's mode now: decided again first when the quorum lease lapsed
        since the last decision, so a write is checked against the lease at the
        moment it is made (:mod:`caxton.cluster.lease`)."""
        decision = self.decision
        if decision is None:
            return PartitionMode.READ_WRITE
        if decision.mode is PartitionMode.READ_WRITE and self.cluster.decision_stale():
            self.cluster._mode_changed()
            decision = self.decision
            assert decision is not None
        return decision.mode

    @property
    def queued(self) -> int:
        return sum(self.waiting.values())

    @property
    def queueing(self) -> bool:
        """Whether undeliverable messages for unreachable nodes are queued now."""
        decision = self.decision
        return (
            decision is not None
            and decision.mode is PartitionMode.READ_ONLY
            and decision.queue_writes
            and self._ready
        )

    async def start(self) -> None:
        """Create the queue's table if needed and count what a previous run queued."""
        store = self.cluster.node.store
        if store is None:
            return
        store.register_migrations(CLUSTER_NAMESPACE, CLUSTER_MIGRATIONS)
        await store.migrate()
        self.waiting = await store.queued_write_counts()
        self._ready = True
        if self.waiting:
            log.info("%d messages queued during a partition wait for replay", self.queued)

    def status(self) -> dict[str, Any]:
        """This guard's part of ``Cluster.status()``."""
        return {
            "queued_writes": self.queued,
            "max_queued_writes": self.max_queued,
            "replaying": self._replay is not None,
            "replayed_writes": self.replayed,
        }

    # -- refused writes -------------------------------------------------------------

    def check_write(self, operation: str) -> None:
        """Raise :class:`ReadOnlyMode` unless this node may change cluster state."""
        mode = self.mode
        if mode is PartitionMode.READ_WRITE:
            return
        view = self.cluster.view()
        reachable, known = len(view.reachable_nodes), len(view.known_nodes)
        reason = self.decision.reason if self.decision is not None else ""
        message = (
            f"{operation} refused: node {self.cluster.node_id} is {mode.value} in a minority "
            f"partition ({reachable} of {known} nodes reachable)"
        )
        raise ReadOnlyMode(
            message,
            details=(
                f"{message}: {reason}. It changes no cluster state until the partition "
                f"heals; retry then, or on a node of the majority partition (`caxton "
                f"cluster detect-partition` shows them)"
            ),
        )

    # -- routing ----------------------------------------------------------------------

    def held(self, name: str) -> QueuedRoute | None:
        """The queue, when a message for ``name`` (not on this node) must wait in it.

        It must while ``name`` has queued messages (they go first), and in read-only
        mode when the node ``name`` lives on is out of reach. Raises
        :class:`ReadOnlyMode` in local-only mode and :class:`QueueFull` past the bound.
        """
        waiting = self.waiting.get(name, 0)
        if waiting and name not in self._replaying:
            self._check_room()
            return QueuedRoute(self, self._homes.get(name, ""))
        mode = self.mode
        if mode is PartitionMode.READ_WRITE:
            return None
        if mode is PartitionMode.LOCAL_ONLY:
            raise ReadOnlyMode(
                f"agent {name} is not on node {self.cluster.node_id}, which is local-only "
                f"({self.decision.reason if self.decision else 'partitioned'}): only agents "
                f"on this node are served until the partition heals"
            )
        if not self.queueing:
            return None
        home = self._unreachable_home(name)
        if home is None:
            return None
        self._check_room()
        return QueuedRoute(self, home)

    def _unreachable_home(self, name: str) -> str | None:
        """The node ``name`` lives on when that node is out of reach (else None)."""
        cluster = self.cluster
        homes = [e.node_id for e in cluster.registry.lookup(name) if e.routable]
        remembered = self._homes.get(name)
        if remembered is not None:
            homes.append(remembered)
        if not homes or any(cluster._live(node_id) is not None for node_id in homes):
            return None
        return homes[0]

    def _check_room(self) -> None:
        if self.queued >= self.max_queued:
            raise QueueFull(
                f"Queue full: {self.queued} messages are queued on node "
                f"{self.cluster.node_id} for nodes out of reach "
                f"(partition.max_queued_writes = {self.max_queued})",
                details="the partition has lasted long; retry when it heals or raise "
                "partition.max_queued_writes",
            )

    async def forward_or_queue(self, message: Message, node_id: str) -> Acknowledgement | None:
        """What a :class:`QueuedRoute` does with a message: queue it, unless the route
        was taken before the partition healed and nothing for the receiver waits any
        more; then the message goes straight on (queued, a replay would send it after
        messages sent later)."""
        name = str(message.receiver)
        if self.mode is PartitionMode.READ_WRITE and not self.waiting.get(name):
            route = await self.cluster._find(name)
            if route is not None:
                return await route.forward(message)
        await self.queue(message, node_id)
        return None

    async def queue(self, message: Message, node_id: str) -> None:
        """Keep ``message`` for ``node_id`` in the store until the partition heals."""
        store = self.cluster.node.store
        if store is None or not self._ready:
            raise TransportError(f"node {node_id} is out of reach and no store keeps messages")
        self._check_room()
        name = str(message.receiver)
        self.waiting[name] = self.waiting.get(name, 0) + 1
        try:
            await store.queue_write(message, node_id)
        except BaseException:
            self._unwait(name)
            raise
        if self._homes.get(name) is None and node_id:
            self._homes[name] = node_id
        if self.mode is PartitionMode.READ_WRITE:
            self._start_replay(False)

    async def forward_failed(self, route: PeerRoute, message: Message) -> bool:
        """Queue a message whose forwarding failed, when queueing; True if queued."""
        if not self.queueing or message.message_id in self._replaying_messages:
            return False
        try:
            await self.queue(message, route.node_id)
        except CaxtonError as exc:
            log.warning("could not queue message %s: %s", message.message_id, exc)
            return False
        return True

    def node_gone(self, node_id: str, kind: str, entries: list[tuple[str, Any]]) -> None:
        """A peer failed (or left): remember where its agents lived, if it failed."""
        if kind != "failed":
            return
        for _change, entry in entries:
            self._homes.setdefault(entry.name, node_id)

    # -- the mode and the replay -------------------------------------------------------

    def mode_changed(self, decision: PartitionDecision | None) -> None:
        """Called by the cluster service on every membership change."""
        before = self.mode
        self.decision = decision
        mode = self.mode
        if mode is not PartitionMode.READ_WRITE:
            return
        live = {n for n, home in self._homes.items() if self.cluster._live(home) is not None}
        for name in live:
            if not self.waiting.get(name):
                del self._homes[name]
        if self.waiting:
            self._start_replay(healed=before is not PartitionMode.READ_WRITE)

    def _start_replay(self, healed: bool) -> None:
        """Replay the queue unless a replay runs or no peer is there to take it (a
        node restarted during a partition is read-write alone, and waits)."""
        if self._replay is not None or not self._ready or not self.cluster.started:
            return
        if len(self.cluster.view().reachable_nodes) < 2:
            return
        count = self.queued
        text = (
            f"Partition healed, replaying {count} queued messages"
            if healed
            else f"Replaying {count} queued messages"
        )
        self.cluster.events.record("replay", text, details={"queued_writes": count})
        self._replay = self.cluster._spawn(self._replay_all())

    async def _replay_all(self) -> None:
        """Replay everything queued, each receiver's messages in their order and the
        receivers side by side: a receiver found nowhere (a reply to a client gone
        meanwhile, an agent not failed over yet) holds back only its own messages."""
        store = self.cluster.node.store
        started = time.monotonic()
        sent = 0
        after = 0  # messages queued during the replay come later: they are read too
        try:
            while self.mode is PartitionMode.READ_WRITE:
                by_receiver: dict[str, list[QueuedWrite]] = {}
                while True:
                    batch = await store.queued_writes(REPLAY_BATCH, after=after)
                    for item in batch:
                        by_receiver.setdefault(item.receiver, []).append(item)
                        after = item.seq
                    if len(batch) < REPLAY_BATCH:
                        break
                if not by_receiver:
                    break
                gate = asyncio.Semaphore(REPLAY_RECEIVERS)
                outcomes = await asyncio.gather(
                    *(self._replay_receiver(items, gate) for items in by_receiver.values())
                )
                sent += sum(n for n, _ in outcomes)
                if not all(done for _, done in outcomes):
                    return  # the partition is back: the rest waits for the next heal
            if sent or not self.waiting:
                self.cluster.events.record(
                    "replayed",
                    f"Cluster synchronized: {sent} queued messages replayed in "
                    f"{time.monotonic() - started:.1f}s",
                    details={"replayed": sent, "queued_writes": self.queued},
                )
        finally:
            self._replay = None
            self.replayed += sent
            if self.waiting and self.mode is PartitionMode.READ_WRITE and self.cluster.started:
                # Queued while this replay read its last batch: the next one takes them.
                loop = asyncio.get_running_loop()
                loop.call_later(REPLAY_RETRY, self._start_replay, False)

    async def _replay_receiver(
        self, items: list[QueuedWrite], gate: asyncio.Semaphore
    ) -> tuple[int, bool]:
        """Replay one receiver's queued messages in order: (forwarded, all settled).

        Once the receiver stayed unknown for :data:`REPLAY_PATIENCE`, the messages
        behind the first one are dead-lettered with the same reason at once, not after
        the same wait each."""
        store = self.cluster.node.store
        name = items[0].receiver
        sent = 0
        missing: str | None = None
        async with gate:
            self._replaying.add(name)
            try:
                for item in items:
                    if item.message is None:
                        log.error(
                            "dropping an unreadable queued message to %s (seq %d): %s",
                            item.receiver,
                            item.seq,
                            item.problem,
                        )
                    elif missing is not None:
                        self._dead_letter(item.message, missing)
                    else:
                        outcome, problem = await self._replay_one(item.message)
                        if outcome is None:
                            return sent, False
                        sent += outcome
                        if not outcome and problem.startswith(NOT_FOUND):
                            missing = problem
                    store.unqueue_write(item.seq)
                    self._unwait(item.receiver)
            finally:
                self._replaying.discard(name)
        return sent, True

    async def _replay_one(self, message: Message) -> tuple[bool | None, str]:
        """Forward one queued message.

        True: forwarded; False: dead-lettered (its receiver stayed unknown or its node
        silent for :data:`REPLAY_PATIENCE`, or the receiving node refused it); None: the
        partition is back, keep it. With the reason when it was dead-lettered.
        """
        cluster = self.cluster
        name = str(message.receiver)
        deadline = time.monotonic() + REPLAY_PATIENCE
        problem = ""
        self._replaying_messages.add(message.message_id)
        try:
            while time.monotonic() < deadline:
                if self.mode is not PartitionMode.READ_WRITE:
                    return None, ""
                try:
                    route = await cluster._find(name)
                    if route is not None:
                        # A node that takes the frame and never answers must not hold
                        # the replay: ask again (the receiver drops a duplicate by id).
                        ack = await asyncio.wait_for(route.forward(message), REPLAY_ATTEMPT)
                        reason = (
                            await asyncio.wait_for(asyncio.shield(ack), REPLAY_ATTEMPT)
                            if ack is not None
                            else None
                        )
                        if reason is None:
                            return True, ""
                        problem = reason
                        break
                    problem = f"{NOT_FOUND}{name}"
                except (CaxtonError, TimeoutError) as exc:
                    problem = str(exc) or f"node of {name} did not answer"
                await asyncio.sleep(REPLAY_RETRY)
        finally:
            self._replaying_messages.discard(message.message_id)
        reason = f"undeliverable after the partition healed: {problem}"
        self._dead_letter(message, reason)
        return False, problem

    def _dead_letter(self, message: Message, reason: str) -> None:
        log.warning("queued message %s to %s %s", message.message_id, message.receiver, reason)
        store = self.cluster.node.store
        if store is not None:
            with contextlib.suppress(CaxtonError):
                store.add_dead_letter(message, reason)

    def _unwait(self, name: str) -> None:
        left = self.waiting.get(name, 0) - 1
        if left > 0:
            self.waiting[name] = left
        else:
            self.waiting.pop(name, None)


def partition_report(cluster: Cluster) -> dict[str, Any]:
    """What ``caxton cluster detect-partition`` prints: the sides this node can tell apart.

    This node's side is the members it reaches (alive or suspect); the other side is the
    known members it does not (failed). A crashed node and a cut-off one look alike
    from here: both are reported.
    """
    view = cluster.view()
    reachable = sorted(view.reachable_nodes)
    cut = sorted(set(view.known_nodes) - set(reachable))
    known = len(view.known_nodes)
    quorum = view.quorum_size or known // 2 + 1
    guard = cluster.partition
    groups = sorted(
        ((nodes, local) for nodes, local in ((reachable, True), (cut, False)) if nodes),
        key=lambda group: (len(group[0]) < quorum, -len(group[0]), group[0]),
    )
    sides = [
        {"nodes": nodes, "majority": len(nodes) >= quorum, "local": local}
        for nodes, local in groups
    ]
    return {
        "node_id": cluster.node_id,
        "partitioned": bool(cut),
        "partitions": sides,
        "quorum": quorum,
        "mode": guard.mode.value,
        "reason": guard.decision.reason if guard.decision is not None else "",
        "queued_writes": guard.queued,
    }


# -------------------------------------------------------------------------
# After a heal: do the members agree? (``caxton cluster verify``)
# -------------------------------------------------------------------------


def consistency_digest(cluster: Cluster) -> dict[str, Any]:
    """This node's view to compare: member statuses, registry versions held per node.

    The answer to the ``verify`` control operation.
    """
    registry = cluster.registry
    members = {
        m.node_id: m.status.value
        for m in cluster.membership.members()
        if m.status is not MemberStatus.LEFT
    }
    versions = {}
    for node_id in (cluster.node_id, *registry.nodes()):
        version = registry.known_version(node_id)
        if version is not None:
            versions[node_id] = list(version)
    return {"node_id": cluster.node_id, "members": members, "registry": versions}


def _live_members(digest: Mapping[str, Any]) -> set[str]:
    members: Mapping[str, str] = digest.get("members") or {}
    return {node_id for node_id, status in members.items() if status in _REACHABLE_STATUSES}


def compare_digests(digests: list[dict[str, Any]]) -> dict[str, list[str]]:
    """What each node disagrees on with the others: node id -> problems.

    Membership: every node should see the same live members (alive or suspect); a
    node is blamed when its view differs from the one most nodes share.
    Registry: every node should hold each node's agents at that node's own version
    (a node with no agents yet may be held at no version at all).
    """
    problems: dict[str, list[str]] = {d["node_id"]: [] for d in digests}
    own = {d["node_id"]: d.get("registry", {}).get(d["node_id"]) for d in digests}
    views = {d["node_id"]: frozenset(_live_members(d)) for d in digests}
    tally = Counter(views.values())
    # The view most nodes share (on a tie, the asking node's: it comes first).
    usual = max(tally, key=lambda view: tally[view]) if tally else frozenset()
    for digest in digests:
        node_id = digest["node_id"]
        missing, extra = usual - views[node_id], views[node_id] - usual
        if missing:
            problems[node_id].append(f"does not see {', '.join(sorted(missing))} alive")
        if extra:
            problems[node_id].append(f"sees {', '.join(sorted(extra))} alive, others do not")
        held = digest.get("registry", {})
        for origin, version in sorted(own.items()):
            if origin == node_id or version is None:
                continue
            copy = held.get(origin)
            if copy != version and not (copy is None and version[1] == 0):
                at = "nothing" if copy is None else f"version {copy[0]}.{copy[1]}"
                problems[node_id].append(
                    f"holds {at} of {origin}'s agents, {origin} is at {version[0]}.{version[1]}"
                )
    return problems


async def verify_cluster(cluster: Cluster, timeout: float = 2.0) -> dict[str, Any]:
    """Ask every reachable member for its digest; report who disagrees on what."""
    peers = [
        m
        for m in cluster.membership.members()
        if m.node_id != cluster.node_id and m.status.value in _REACHABLE_STATUSES
    ]

    async def ask(member: Any) -> dict[str, Any] | str:
        try:
            answer = await cluster._control(member.address, timeout, "verify")
        except CaxtonError as exc:
            return f"unreachable over the transport: {exc}"
        if not isinstance(answer, dict) or answer.get("node_id") != member.node_id:
            return "gave a malformed or misaddressed answer"
        return answer

    answers = await asyncio.gather(*(ask(m) for m in peers))
    digests = [consistency_digest(cluster)]
    failures: dict[str, str] = {}
    for member, answer in zip(peers, answers, strict=True):
        if isinstance(answer, str):
            failures[member.node_id] = answer
        else:
            digests.append(answer)
    problems = compare_digests(digests)
    nodes = [
        {
            "node_id": d["node_id"],
            "reachable": True,
            "members_alive": len(_live_members(d)),
            "registry_version": d.get("registry", {}).get(d["node_id"]),
            "agrees": not problems[d["node_id"]],
            "problems": problems[d["node_id"]],
        }
        for d in digests
    ]
    nodes += [
        {
            "node_id": node_id,
            "reachable": False,
            "members_alive": None,
            "registry_version": None,
            "agrees": False,
            "problems": [problem],
        }
        for node_id, problem in failures.items()
    ]
    nodes.sort(key=lambda n: n["node_id"])
    return {"consistent": all(n["agrees"] for n in nodes), "nodes": nodes}
