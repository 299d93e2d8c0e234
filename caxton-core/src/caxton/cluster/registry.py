"""The cluster's agent registry: which agent runs on which node (no I/O).

Each node is authoritative for its own agents. It numbers every change of them with a
counter, so its part of the registry has a version ``(epoch, counter)``: the epoch is
fixed when the node starts (so a restarted node's versions never collide with those of
its previous life) and the counter grows with each change. A removed agent leaves a
*tombstone*: an entry marked removed, versioned like any other change, so a node that
pulls the changes since the version it holds learns of removals too and an agent never
comes back from stale state.

Other nodes hold a copy of each peer's part, with the version they copied. They apply
a :class:`Delta` (the changes between two versions, or a full copy) only when it is
newer than what they hold; a delta that does not start at or before their version is
refused and they pull again. :class:`caxton.cluster.Cluster` moves the deltas.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from caxton.errors import ValidationError

__all__ = ["ROUTABLE_STATES", "AgentEntry", "AgentRegistry", "Delta", "RegistryVersion"]

#: (epoch, counter); compared as a tuple.
RegistryVersion = tuple[int, int]

#: Agent states in which messages to the agent are accepted on its node.
ROUTABLE_STATES = frozenset({"ready", "running", "draining", "suspended"})

#: Tombstones a node keeps before forgetting the oldest (a peer further behind gets a
#: full copy instead of a delta).
TOMBSTONE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class AgentEntry:
    """One agent as the cluster knows it."""

    name: str
    node_id: str
    state: str
    #: The owner's counter when this entry last changed.
    version: int
    agent_id: str = ""
    capabilities: tuple[str, ...] = ()
    #: A tombstone: the agent was removed at ``version``.
    removed: bool = False

    @property
    def routable(self) -> bool:
        return not self.removed and self.state in ROUTABLE_STATES

    def to_wire(self) -> list[Any]:
        return [
            self.name,
            self.agent_id,
            self.state,
            list(self.capabilities),
            self.version,
            self.removed,
        ]

    @classmethod
    def from_wire(cls, node_id: str, data: Any) -> AgentEntry:
        name, agent_id, state, capabilities, version, removed = data
        if not (
            isinstance(name, str)
            and isinstance(agent_id, str)
            and isinstance(state, str)
            and isinstance(version, int)
            and isinstance(capabilities, list)
        ):
            raise ValueError("malformed registry entry")
        return cls(
            name=name,
            node_id=node_id,
            state=state,
            version=version,
            agent_id=agent_id,
            capabilities=tuple(str(c) for c in capabilities),
            removed=bool(removed),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.agent_id,
            "node_id": self.node_id,
            "state": self.state,
            "capabilities": list(self.capabilities),
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class Delta:
    """The changes of one node's agents from version ``(epoch, base)`` to ``(epoch, to)``.

    ``full``: ``entries`` are every live agent of the node (replace what you hold).
    """

    node_id: str
    epoch: int
    base: int
    to: int
    full: bool
    entries: tuple[AgentEntry, ...] = ()

    @property
    def version(self) -> RegistryVersion:
        return (self.epoch, self.to)

    def to_wire(self) -> list[Any]:
        return [
            self.node_id,
            self.epoch,
            self.base,
            self.to,
            self.full,
            [e.to_wire() for e in self.entries],
        ]

    @classmethod
    def from_wire(cls, data: Any) -> Delta:
        try:
            node_id, epoch, base, to, full, entries = data
            if not (isinstance(node_id, str) and isinstance(epoch, int)):
                raise ValueError
            if not (isinstance(base, int) and isinstance(to, int) and base <= to):
                raise ValueError
            return cls(
                node_id,
                epoch,
                base,
                to,
                bool(full),
                tuple(AgentEntry.from_wire(node_id, e) for e in entries),
            )
        except (TypeError, ValueError):
            raise ValidationError("malformed registry delta") from None


@dataclass
class _NodePart:
    epoch: int
    counter: int
    entries: dict[str, AgentEntry] = field(default_factory=dict)

    @property
    def version(self) -> RegistryVersion:
        return (self.epoch, self.counter)


#: What :meth:`AgentRegistry.apply` and :meth:`AgentRegistry.drop_node` report:
#: ("registered" | "updated" | "unregistered", entry).
Change = tuple[str, AgentEntry]


class AgentRegistry:
    """This node's agents (authoritative) and its copies of every peer's."""

    def __init__(
        self,
        node_id: str,
        *,
        epoch: int | None = None,
        tombstone_limit: int = TOMBSTONE_LIMIT,
    ) -> None:
        self.node_id = node_id
        self.tombstone_limit = tombstone_limit
        epoch = time.time_ns() // 1000 if epoch is None else epoch
        self._local = _NodePart(epoch, 0)
        #: Counter below which tombstones were forgotten: older bases get a full copy.
        self._horizon = 0
        self._tombstones = 0
        self._peers: dict[str, _NodePart] = {}
        #: name -> node ids holding an entry of that name (local node included).
        self._by_name: dict[str, set[str]] = {}

    # -- this node's agents -------------------------------------------------------

    @property
    def version(self) -> RegistryVersion:
        return self._local.version

    def announce(
        self,
        name: str,
        state: str,
        *,
        agent_id: str = "",
        capabilities: Sequence[str] = (),
    ) -> AgentEntry | None:
        """Record a local agent (new or changed); None when nothing changed."""
        current = self._local.entries.get(name)
        caps = tuple(capabilities)
        if (
            current is not None
            and not current.removed
            and (current.state, current.agent_id, current.capabilities) == (state, agent_id, caps)
        ):
            return None
        if current is not None and current.removed:
            self._tombstones -= 1
        self._local.counter += 1
        entry = AgentEntry(name, self.node_id, state, self._local.counter, agent_id, caps)
        self._local.entries[name] = entry
        self._by_name.setdefault(name, set()).add(self.node_id)
        return entry

    def withdraw(self, name: str) -> AgentEntry | None:
        """Record that a local agent was removed (a tombstone); None if unknown."""
        current = self._local.entries.get(name)
        if current is None or current.removed:
            return None
        self._local.counter += 1
        tombstone = AgentEntry(
            name,
            self.node_id,
            current.state,
            self._local.counter,
            current.agent_id,
            current.capabilities,
            removed=True,
        )
        self._local.entries[name] = tombstone
        self._unindex(name, self.node_id)
        self._tombstones += 1
        if self._tombstones > self.tombstone_limit:
            self._forget_tombstones()
        return tombstone

    def _forget_tombstones(self) -> None:
        entries = self._local.entries
        stones = sorted((e for e in entries.values() if e.removed), key=lambda e: e.version)
        for entry in stones[: len(stones) - self.tombstone_limit // 2]:
            del entries[entry.name]
            self._horizon = max(self._horizon, entry.version)
            self._tombstones -= 1

    def delta(self, since: RegistryVersion | None = None) -> Delta:
        """This node's changes after ``since`` (a peer's copy), or a full copy."""
        part = self._local
        if since is None or since[0] != part.epoch or since[1] < self._horizon:
            live = tuple(e for e in part.entries.values() if not e.removed)
            return Delta(self.node_id, part.epoch, 0, part.counter, True, live)
        base = min(since[1], part.counter)
        changed = tuple(e for e in part.entries.values() if e.version > base)
        return Delta(self.node_id, part.epoch, base, part.counter, False, changed)

    def changes_since(self, counter: int) -> Delta:
        """The local changes after ``counter`` of the current epoch (what to push)."""
        return self.delta((self._local.epoch, counter))

    # -- peers' agents ----------------------------------------------------------------

    def known_version(self, node_id: str) -> RegistryVersion | None:
        """The version of ``node_id``'s agents held here (None: nothing)."""
        if node_id == self.node_id:
            return self._local.version
        part = self._peers.get(node_id)
        return part.version if part is not None else None

    def apply(self, delta: Delta) -> list[Change] | None:
        """Merge a peer's delta. Returns the changes made, or None when the delta does
        not connect to the copy held here (a gap: pull the changes since
        :meth:`known_version` instead). An old or repeated delta changes nothing."""
        node_id = delta.node_id
        if node_id == self.node_id:
            return []
        part = self._peers.get(node_id)
        changes: list[Change] = []
        if part is not None and delta.version <= part.version:
            return changes
        if delta.full:
            old = part.entries if part is not None else {}
            fresh = {e.name: e for e in delta.entries if not e.removed}
            for name, entry in old.items():
                if name not in fresh:
                    self._unindex(name, node_id)
                    changes.append(("unregistered", entry))
            for name, entry in fresh.items():
                before = old.get(name)
                if before != entry:
                    changes.append(("updated" if before is not None else "registered", entry))
                self._by_name.setdefault(name, set()).add(node_id)
            self._peers[node_id] = _NodePart(delta.epoch, delta.to, fresh)
            return changes
        if part is None or part.epoch != delta.epoch or delta.base > part.counter:
            return None
        for entry in sorted(delta.entries, key=lambda e: e.version):
            if entry.version <= part.counter:
                continue  # already held (or overtaken by a later change held here)
            before = part.entries.get(entry.name)
            if entry.removed:
                if before is not None:
                    del part.entries[entry.name]
                    self._unindex(entry.name, node_id)
                    changes.append(("unregistered", before))
                continue
            part.entries[entry.name] = entry
            self._by_name.setdefault(entry.name, set()).add(node_id)
            changes.append(("updated" if before is not None else "registered", entry))
        part.counter = delta.to
        return changes

    def drop_node(self, node_id: str) -> list[Change]:
        """Forget a peer's agents (it failed, left or was removed)."""
        part = self._peers.pop(node_id, None)
        if part is None:
            return []
        for name in part.entries:
            self._unindex(name, node_id)
        return [("unregistered", entry) for entry in part.entries.values()]

    def nodes(self) -> list[str]:
        """Peers whose agents are held here."""
        return list(self._peers)

    # -- lookups ----------------------------------------------------------------------

    def lookup(self, name: str) -> list[AgentEntry]:
        """Live entries named ``name``: this node's first, then by node id."""
        holders = self._by_name.get(name)
        if not holders:
            return []
        found = []
        for node_id in sorted(holders, key=lambda n: (n != self.node_id, n)):
            part = self._local if node_id == self.node_id else self._peers.get(node_id)
            entry = part.entries.get(name) if part is not None else None
            if entry is not None and not entry.removed:
                found.append(entry)
        return found

    def entries(self, node_id: str | None = None) -> list[AgentEntry]:
        """Every live entry (of ``node_id`` only, when given), by node then name."""
        parts: Iterable[_NodePart]
        if node_id is None:
            parts = itertools.chain([self._local], self._peers.values())
        elif node_id == self.node_id:
            parts = [self._local]
        else:
            parts = [self._peers[node_id]] if node_id in self._peers else []
        live = [e for part in parts for e in part.entries.values() if not e.removed]
        return sorted(live, key=lambda e: (e.node_id, e.name))

    def count(self, node_id: str | None = None) -> int:
        return len(self.entries(node_id))

    def _unindex(self, name: str, node_id: str) -> None:
        holders = self._by_name.get(name)
        if holders is not None:
            holders.discard(node_id)
            if not holders:
                del self._by_name[name]
