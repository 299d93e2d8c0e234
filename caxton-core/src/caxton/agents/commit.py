"""Output commit: what an agent sends after changing its state waits until the change is durable.

An agent that changes its key/value state while it handles a message and then replies
must not have the reply seen while the change can still be lost. So every message an
agent emits (replies, sends, the node's answers on its behalf) after a state change that
is not yet durable is *held* in the agent's runtime, in order, and released once the
change is; a message emitted while nothing is pending goes at once.

Changes are committed in groups: the first change of an event-loop turn schedules one
commit at the end of the turn for every agent that changed during it (*group commit*),
so a burst of N messages costs one commit, not N. What "durable" means is the
:class:`Durability` in use:

* :class:`LocalDurability` (a node without replicas, and ``durability = "local"``): the
  change is committed to the node's SQLite (one transaction for the turn), so a
  ``kill -9`` never loses a change whose reply was seen;
* the cluster's quorum replication (:mod:`caxton.cluster.ownership`,
  ``durability = "quorum"``): the change is on a majority of the agent's replica set;
* ``durability = "async"`` holds nothing (the write-behind window and the replication
  delay may lose the last changes; see docs/state.md and docs/cluster.md).

See docs/design/0001-fenced-ownership.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from caxton.errors import CaxtonError, ConfigError, ServiceUnavailable

if TYPE_CHECKING:
    from caxton.agents.runtime import AgentRuntime
    from caxton.messaging import Message
    from caxton.messaging.router import Router
    from caxton.store import Store

__all__ = [
    "DURABILITY_MODES",
    "Change",
    "DeferredDurability",
    "Durability",
    "LocalDurability",
    "OutputCommit",
]

log = logging.getLogger("caxton.agents")

#: ``coordination.cluster.durability`` values (see docs/cluster.md, "Durability").
DURABILITY_MODES = ("quorum", "async", "local")


def check_mode(mode: str) -> str:
    if mode not in DURABILITY_MODES:
        raise ConfigError(f"durability must be one of {', '.join(DURABILITY_MODES)}, not {mode!r}")
    return mode


@dataclass(frozen=True)
class Change:
    """One agent's state changes of one turn: up to ``version``, the keys in ``keys``."""

    runtime: AgentRuntime
    version: int
    keys: frozenset[bytes]


class Durability(Protocol):
    """Makes agents' changes durable, then calls :meth:`OutputCommit.committed` (or
    :meth:`OutputCommit.failed`) for each."""

    def commit(self, changes: Sequence[Change]) -> None: ...


class LocalDurability:
    """Durable = committed to the node's SQLite (one group commit per turn)."""

    def __init__(self, store: Store, outputs: OutputCommit) -> None:
        self.store = store
        self.outputs = outputs
        self._tasks: set[asyncio.Task[None]] = set()

    def commit(self, changes: Sequence[Change]) -> None:
        task = asyncio.get_running_loop().create_task(self._commit(changes))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _commit(self, changes: Sequence[Change]) -> None:
        try:
            await self.store.flush()
        except CaxtonError as exc:
            for change in changes:
                self.outputs.failed(change.runtime, f"its state change was not stored: {exc}")
            return
        for change in changes:
            self.outputs.committed(change.runtime, change.version)


class DeferredDurability:
    """Durable = not yet: keeps every change until :meth:`OutputCommit.use` installs the
    durability that decides (a clustered node's agents start before its quorum
    replication: a restarted node's copy of an agent, which a takeover may have
    replaced meanwhile, must not acknowledge on a local commit alone)."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def commit(self, changes: Sequence[Change]) -> None:
        self.changes.extend(changes)


class OutputCommit:
    """Holds each agent's outputs behind its uncommitted state changes (one per node)."""

    def __init__(self, router: Router, store: Store) -> None:
        self.router = router
        self.durability: Durability = LocalDurability(store, self)
        self._changed: dict[str, AgentRuntime] = {}
        self._scheduled = False
        #: Agent id -> (version, future) of those waiting for a change to be durable.
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        #: Outputs released after a commit, and dropped (dead-lettered) after a failure.
        self.released = 0
        self.dropped = 0

    def use(self, durability: Durability) -> Durability:
        """Make ``durability`` decide from now on, with the changes a
        :class:`DeferredDurability` kept; returns the one it replaces."""
        previous, self.durability = self.durability, durability
        if isinstance(previous, DeferredDurability) and previous.changes:
            changes, previous.changes = previous.changes, []
            durability.commit(changes)
        return previous

    def changed(self, runtime: AgentRuntime, key: bytes) -> None:
        """``runtime`` changed ``key``: its outputs from now on wait for a commit."""
        runtime.version += 1
        if runtime.durability == "async":
            runtime.committed = runtime.version
            return
        runtime.changed_keys.add(key)
        self._changed[runtime.agent.id] = runtime
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._end_of_turn)

    def emit(self, runtime: AgentRuntime, message: Message) -> None:
        """Send ``message`` for ``runtime`` now, or once its pending changes commit.

        Raises what :meth:`Router.send_nowait` raises when the message goes at once.
        """
        if runtime.fenced is not None:
            self.dropped += 1
            self.router.dead_letter(
                message, f"not acknowledged: agent {runtime.name}: fenced: {runtime.fenced}"
            )
            return
        if runtime.version > runtime.committed or runtime.held:
            runtime.held.append((runtime.version, message))
            return
        self.router.send_nowait(message)

    def durable(self, runtime: AgentRuntime) -> asyncio.Future[None]:
        """A future done once ``runtime``'s changes so far are durable (at once when they
        are); it raises :class:`~caxton.errors.ServiceUnavailable` when they never will be.

        For changes made outside a message (an operator's key/value write), which have
        no reply to hold back.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if runtime.version <= runtime.committed:
            future.set_result(None)
        else:
            self._waiters.setdefault(runtime.agent.id, []).append((runtime.version, future))
        return future

    def _wake(self, runtime: AgentRuntime, version: int, reason: str | None = None) -> None:
        waiters = self._waiters.pop(runtime.agent.id, None)
        if not waiters:
            return
        waiting = [(v, f) for v, f in waiters if v > version and reason is None]
        if waiting:
            self._waiters[runtime.agent.id] = waiting
        for wanted, future in waiters:
            if future.done() or (wanted > version and reason is None):
                continue
            if reason is None:
                future.set_result(None)
            else:
                future.set_exception(
                    ServiceUnavailable(f"agent {runtime.name}: the change is not durable: {reason}")
                )

    def _end_of_turn(self) -> None:
        self._scheduled = False
        changed, self._changed = self._changed, {}
        changes = []
        for runtime in changed.values():
            keys = frozenset(runtime.changed_keys)
            runtime.changed_keys.clear()
            changes.append(Change(runtime, runtime.version, keys))
        if changes:
            self.durability.commit(changes)

    def committed(self, runtime: AgentRuntime, version: int) -> None:
        """``runtime``'s changes up to ``version`` are durable: release what followed them."""
        if version <= runtime.committed:
            return
        runtime.committed = version
        self._wake(runtime, version)
        held = runtime.held
        while held and held[0][0] <= version:
            message = held.popleft()[1]
            self.released += 1
            try:
                self.router.send_nowait(message)
            except CaxtonError as exc:
                self.router.dead_letter(message, f"undeliverable: {exc}")

    def failed(self, runtime: AgentRuntime, reason: str) -> None:
        """``runtime``'s pending changes will never be acknowledged: dead-letter what
        waits for them, with ``reason``, and let later outputs go again."""
        held, runtime.held = runtime.held, type(runtime.held)()
        runtime.committed = runtime.version
        self._wake(runtime, runtime.version, reason)
        for _, message in held:
            self.dropped += 1
            self.router.dead_letter(message, f"not acknowledged: agent {runtime.name}: {reason}")
        if held:
            log.warning("agent %s: %d outputs dead-lettered: %s", runtime.name, len(held), reason)
