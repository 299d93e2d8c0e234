"""What the sans-IO membership cores share: their outputs and the interface a driver
or the simulator drives them through."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from caxton.drivers.membership import Member
from caxton.drivers.transport import Address


class EventKind(str, Enum):
    #: A new member, or a failed/left one that came back.
    JOINED = "joined"
    #: A live member's address or metadata changed.
    UPDATED = "updated"
    SUSPECT = "suspect"
    #: A suspect refuted the suspicion.
    ALIVE = "alive"
    FAILED = "failed"
    LEFT = "left"
    #: A failed or left member was forgotten (reaped, or removed by force).
    REMOVED = "removed"


@dataclass(frozen=True)
class MemberEvent:
    kind: EventKind
    member: Member
    #: The core's clock when it happened.
    time: float


@dataclass(frozen=True)
class Datagram:
    address: Address
    payload: bytes


@dataclass(frozen=True)
class SyncRequest:
    """A push-pull exchange to run: send ``payload`` to ``address``, feed the reply back
    with :meth:`SwimCore.sync_done` (``None`` on failure or timeout)."""

    token: int
    address: Address
    payload: bytes
    timeout: float
    #: "join", "sync" (periodic) or "rejoin".
    purpose: str


@dataclass
class Outbox:
    datagrams: list[Datagram] = field(default_factory=list)
    syncs: list[SyncRequest] = field(default_factory=list)
    events: list[MemberEvent] = field(default_factory=list)
    #: Answers to :meth:`MembershipCore.ping`: (token, round-trip seconds).
    pongs: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class MembershipStats:
    """Traffic counters (for the gossip-bandwidth figure and ``caxton cluster status``)."""

    datagrams_sent: int = 0
    datagram_bytes_sent: int = 0
    datagrams_received: int = 0
    datagram_bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    syncs_sent: int = 0
    sync_bytes_sent: int = 0
    syncs_received: int = 0
    sync_bytes_received: int = 0
    syncs_failed: int = 0
    malformed: int = 0
    probes: int = 0
    probes_failed: int = 0
    refutations: int = 0
    #: Members this node started to suspect (each a suspicion, refuted or confirmed).
    suspicions: int = 0
    delegate_errors: int = 0
    #: Member announcements refused by the admission check (an incompatible wire).
    refused: int = 0
    #: Smoothed round-trip time of direct probes, in milliseconds (0: none measured).
    probe_rtt_ms: float = 0.0

    @property
    def bytes_sent(self) -> int:
        return self.datagram_bytes_sent + self.sync_bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.datagram_bytes_received + self.sync_bytes_received

    def as_dict(self) -> dict[str, float]:
        data = dict(vars(self))
        data["bytes_sent"] = self.bytes_sent
        data["bytes_received"] = self.bytes_received
        return data


class GossipDelegate(Protocol):
    """Something else that rides on membership gossip (the agent registry).

    As memberlist's ``Delegate``: small messages spread epidemically with the membership
    news (:meth:`SwimCore.gossip`), and a full state travels with every push-pull for
    anti-entropy. Called synchronously by the core; an exception is counted in
    ``stats.delegate_errors`` and otherwise ignored.
    """

    def notify(self, key: str, payload: bytes) -> bool:
        """A gossiped message arrived. Return True if it was news to this node: the core
        then relays it (under the same ``key``, replacing older news with that key)."""

    def local_state(self) -> bytes | None:
        """This node's full state, sent with each push-pull (None: nothing)."""

    def merge_remote_state(self, state: bytes) -> None:
        """Merge a peer's :meth:`local_state` received in a push-pull."""


class MembershipCore(Protocol):
    """A sans-IO membership state machine (:class:`~caxton.membership.swim_core.SwimCore`,
    :class:`~caxton.membership.static_core.StaticCore`). ``now`` is a monotonic clock."""

    node_id: str
    address: Address
    stats: MembershipStats
    leaving: bool

    @property
    def leave_done(self) -> bool: ...

    def members(self) -> list[Member]: ...

    def local_member(self) -> Member: ...

    def cluster_size(self) -> int: ...

    def handle_datagram(self, now: float, payload: bytes, source: Address) -> None: ...

    def handle_sync(self, now: float, payload: bytes) -> bytes | None: ...

    def sync_done(self, now: float, token: int, response: bytes | None) -> bool: ...

    def tick(self, now: float) -> None: ...

    def next_deadline(self) -> float: ...

    def drain(self) -> Outbox: ...

    def join(self, now: float, seeds: Iterable[Address]) -> list[int]: ...

    def leave(self, now: float) -> None: ...

    def update_meta(self, now: float, meta: Mapping[str, Any]) -> None: ...

    def remove(self, now: float, node_id: str) -> Member: ...

    def ping(self, now: float, node_id: str) -> int: ...
