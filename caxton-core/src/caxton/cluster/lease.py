"""The quorum lease: a node may change cluster state only while a majority answers it.

A node's *mode* (read-write or not, :mod:`caxton.cluster.partition`) is decided from
whom it has had a **round trip** with lately, not from the SWIM view: the view is
gossip about other nodes' opinions, and a node cut off from the others (or one that
can receive but not send) goes on believing most of them alive for as long as the
suspicions take, 9-16 s in the fault campaign. The lease answers one question from
direct evidence only: *did enough members answer me recently?*

**Renewal.** Every ``duration / 4`` this node sends a ``lease`` heartbeat (a control
request over the node transport, independent of SWIM's probe rounds) to every member
the membership has alive or suspect, and at once to a member that joins or comes back.
When member ``m`` answers, the contact with ``m`` is renewed **as of the time the
heartbeat was sent**, so a slow answer can only shorten the lease, never extend it.

**Holding.** The lease is held at time ``now`` while the members renewed within
``duration`` (``partition.detection_timeout``), this node included, are at least the
quorum (a node started to join a cluster, not to bootstrap one, counts its seeds as
members until it knows one, so it is read-only until it has joined):
``partition.quorum_size`` if set, else a strict majority of the *known* members.
Known members are every member the membership driver lists except those that
**left** (a graceful leave, or ``cluster remove`` of a failed member, which every node
records as left); a member that *failed* still counts, so the denominator never shrinks
because the view says members failed (compare Akka's split-brain resolver
``keep-majority``, which also counts the members it cannot reach). A member failed
for longer than the membership's ``reconnect_timeout`` (24 h) is forgotten.

So a node that cannot complete round trips with a majority is read-only at most
``duration`` after the last round trip that worked was *sent*: whatever the shape of
the partition (split, isolation, one-way in either direction, bridge, ring), since
every way to miss the answers counts the same.

**Failover.** Another node may restart this node's agents only once this node's lease
must have lapsed *on this node's own clock*; the clocks are not synchronized, only
their rates are assumed close (bounded drift). The members therefore remember when
they last answered (or were answered by) each member: ``silent_for(m)``. If a quorum
of the known members, ``m`` excluded, has been silent with ``m`` for at least
``duration + drift_margin``, then ``m`` cannot count a quorum within its last
``duration``: the members it could still count are at most the others, fewer than a
quorum. The margin (``partition.lease_drift_margin``, default a tenth of
``duration``) covers the rate drift of two clocks over ``duration`` and the time
between a write's lease check and the write. See docs/design/0002-quorum-lease.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from caxton.cluster import wire
from caxton.drivers.membership import MemberStatus
from caxton.errors import CaxtonError, ValidationError

if TYPE_CHECKING:
    from caxton.cluster.service import Cluster
    from caxton.drivers.transport import Address, Frame

__all__ = ["OPS", "LeaseKeeper", "LeaseSettings", "QuorumLease", "quorum_of"]

log = logging.getLogger("caxton.cluster.lease")

#: The control ops the lease answers: ``lease`` (a heartbeat: the answer is this
#: node's id) and ``silence`` (``node_id``: seconds since this node's last round trip
#: with that node, or nil when it never had one).
OPS: Final = frozenset({"lease", "silence"})
#: Heartbeats per lease duration.
BEATS_PER_LEASE: Final = 4
#: Default drift margin, as a fraction of the lease duration.
DRIFT_FRACTION: Final = 0.1
#: Heartbeats to one member that may be unanswered at once (one lease's worth).
MAX_IN_FLIGHT: Final = BEATS_PER_LEASE
#: Members worth a heartbeat.
_ANSWERING: Final = frozenset({MemberStatus.ALIVE, MemberStatus.SUSPECT})


def quorum_of(known: Collection[str], quorum_size: int | None = None) -> int:
    """The members a majority needs: ``quorum_size`` if set, else a strict majority."""
    return quorum_size or max(len(known), 1) // 2 + 1


@dataclass(frozen=True)
class LeaseSettings:
    """How long a round trip counts, and the failover's margin (seconds)."""

    duration: float
    drift_margin: float

    @classmethod
    def from_config(cls, partition: Any) -> LeaseSettings:
        """From core's ``[partition]`` section."""
        duration = float(partition["detection_timeout"])
        margin = partition.get("lease_drift_margin")
        return cls(duration, duration * DRIFT_FRACTION if margin is None else float(margin))

    @property
    def interval(self) -> float:
        """Seconds between two heartbeats to a member."""
        return self.duration / BEATS_PER_LEASE

    @property
    def failover_after(self) -> float:
        """Seconds of silence after which a member's lease has lapsed on its own clock."""
        return self.duration + self.drift_margin


class QuorumLease:
    """The lease of one node: sans-IO, times are this node's monotonic clock."""

    def __init__(self, node_id: str, settings: LeaseSettings) -> None:
        self.node_id = node_id
        self.settings = settings
        #: Member -> send time of the last heartbeat it answered.
        self._renewed: dict[str, float] = {}
        #: Member -> when this node last answered one of its heartbeats.
        self._answered: dict[str, float] = {}

    def renewed(self, member: str, sent_at: float) -> None:
        """``member`` answered the heartbeat sent at ``sent_at``."""
        if sent_at > self._renewed.get(member, -math.inf):
            self._renewed[member] = sent_at

    def answered(self, member: str, now: float) -> None:
        """This node answered a heartbeat of ``member`` at ``now``."""
        if now > self._answered.get(member, -math.inf):
            self._answered[member] = now

    def contacts(self, now: float, known: Iterable[str]) -> list[str]:
        """The known members this node had a round trip with within the duration,
        this node included (in the order of ``known``)."""
        oldest = now - self.settings.duration
        return [m for m in known if m == self.node_id or self._renewed.get(m, -math.inf) > oldest]

    def holds(self, now: float, known: Collection[str], quorum_size: int | None = None) -> bool:
        return len(self.contacts(now, known)) >= quorum_of(known, quorum_size)

    def expires_at(
        self,
        known: Collection[str],
        quorum_size: int | None = None,
        counted: Collection[str] | None = None,
    ) -> float:
        """When the lease lapses unless renewed (``-inf``: not held, ``inf``: never,
        as for a node alone in its cluster). ``counted``: the known members whose
        round trips count (default: all)."""
        quorum = quorum_of(known, quorum_size)
        counts = known if counted is None else counted
        times = sorted(
            (math.inf if m == self.node_id else self._renewed.get(m, -math.inf) for m in counts),
            reverse=True,
        )
        if self.node_id not in known:
            times.insert(0, math.inf)
        if len(times) < quorum:
            return -math.inf
        return times[quorum - 1] + self.settings.duration

    def silent_for(self, member: str, now: float) -> float:
        """Seconds since the last round trip with ``member``, either way (``inf``: none)."""
        last = max(self._renewed.get(member, -math.inf), self._answered.get(member, -math.inf))
        return now - last

    def forget(self, member: str) -> None:
        """``member`` left: its contacts no longer matter."""
        self._renewed.pop(member, None)
        self._answered.pop(member, None)


class LeaseKeeper:
    """Keeps the lease of one cluster service: heartbeats, their answers, and a timer
    that has the mode decided again when the lease lapses (built by the cluster)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.settings = LeaseSettings.from_config(cluster.node.config["partition"])
        self.lease = QuorumLease(cluster.node_id, self.settings)
        self.quorum_size: int | None = cluster.node.config["partition"]["quorum_size"]
        #: The seeds of a node that joins (not ``--bootstrap``) and knows no member yet:
        #: each counts as a member it has no contact with, so such a node (a restart
        #: cut off from the cluster, say) is read-only instead of a cluster of one.
        self.joining: tuple[str, ...] = ()
        self.sent = 0
        self.answers = 0
        self._in_flight: dict[str, int] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    # -- what the cluster asks ----------------------------------------------------------

    def now(self) -> float:
        return self.cluster._get_loop().time()

    def known(self) -> list[str]:
        """Members not left, this node included: the lease's denominator."""
        members = self.cluster.membership.members()
        known = [m.node_id for m in members if m.status is not MemberStatus.LEFT]
        if self.cluster.node_id not in known:
            known.append(self.cluster.node_id)
        if self.joining:
            if len(known) > 1:
                self.joining = ()
            else:
                known += [f"seed {seed}" for seed in self.joining]
        return known

    def _counted(self) -> list[str]:
        """The known members a round trip may count for: not those the membership has
        declared failed since (a lease only ever counts less than the round trips)."""
        members = self.cluster.membership.members()
        failed = {m.node_id for m in members if m.status not in _ANSWERING}
        return [m for m in self.known() if m not in failed or m == self.cluster.node_id]

    def contacts(self) -> list[str]:
        return self.lease.contacts(self.now(), self._counted())

    def holds(self) -> bool:
        return len(self.contacts()) >= quorum_of(self.known(), self.quorum_size)

    def expires_at(self) -> float:
        return self.lease.expires_at(self.known(), self.quorum_size, counted=self._counted())

    def silent_for(self, member: str) -> float:
        return self.lease.silent_for(member, self.now())

    def status(self) -> dict[str, Any]:
        """The lease's part of ``Cluster.status()``."""
        now = self.now()
        known = self.known()
        expires = self.expires_at()
        held = expires > now
        return {
            "held": held,
            "expires_in": round(expires - now, 3) if held and math.isfinite(expires) else None,
            "contacts": sorted(self.contacts()),
            "quorum": quorum_of(known, self.quorum_size),
            "duration": self.settings.duration,
            "drift_margin": self.settings.drift_margin,
            "heartbeats_sent": self.sent,
            "heartbeats_answered": self.answers,
        }

    # -- heartbeats -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = self.cluster._spawn(self._beat_forever())
        self._arm()

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def _beat_forever(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(self.settings.interval)

    async def renew_now(self, timeout: float = 1.0) -> None:
        """One round of heartbeats, waited for up to ``timeout`` seconds (a node that
        has just joined then knows at once whether it holds the lease)."""
        tasks = self.beat()
        if tasks:
            await asyncio.wait(tasks, timeout=min(timeout, self.settings.duration))

    def beat(self) -> list[asyncio.Task[None]]:
        """Send one heartbeat to every member the view has alive or suspect.

        Not to failed ones: they cannot renew the lease until the membership sees them
        again (then :meth:`beat` runs at once), and dialling them every beat would keep
        the transport backing off from their address when they come back.
        """
        tasks = []
        for member in self.cluster.membership.members():
            node_id = member.node_id
            if node_id == self.cluster.node_id or member.status not in _ANSWERING:
                continue
            if self._in_flight.get(node_id, 0) >= MAX_IN_FLIGHT:
                continue
            self._in_flight[node_id] = self._in_flight.get(node_id, 0) + 1
            tasks.append(self.cluster._spawn(self._heartbeat(node_id, member.address)))
        return tasks

    async def _heartbeat(self, node_id: str, address: Address) -> None:
        sent_at = self.now()
        self.sent += 1
        try:
            answer = await self.cluster._control(address, self.settings.duration, "lease")
        except CaxtonError as exc:
            log.debug("lease heartbeat to %s failed: %s", node_id, exc)
            return
        finally:
            self._in_flight[node_id] -= 1
        if answer != node_id:  # another node at that address now
            return
        self.answers += 1
        held = self.holds()
        self.lease.renewed(node_id, sent_at)
        self._arm()
        if not held and self.holds():
            self.cluster._mode_changed()

    def _arm(self) -> None:
        """Decide the mode again the moment the lease would lapse."""
        expires = self.expires_at()
        if self._expiry is not None:
            if self._expiry.when() == expires:
                return
            self._expiry.cancel()
            self._expiry = None
        if math.isfinite(expires) and expires > self.now():
            self._expiry = self.cluster._get_loop().call_at(expires, self._lapsed)

    def _lapsed(self) -> None:
        self._expiry = None
        if self.cluster.started:
            self.cluster._mode_changed()
            self._arm()

    # -- the ops ------------------------------------------------------------------------

    def on_control(self, frame: Frame, op: str, args: list[Any]) -> bytes:
        """Answer one of :data:`OPS` (the cluster dispatches them here)."""
        if op == "lease":
            if frame.sender:
                self.lease.answered(frame.sender, self.now())
            return wire.pack(self.cluster.node_id)
        if not args or not isinstance(args[0], str):
            raise ValidationError("malformed silence request: expected a node id")
        silent = self.silent_for(args[0])
        return wire.pack(silent if math.isfinite(silent) else None)
