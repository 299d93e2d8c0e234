"""Quorum leases on the simulated cluster: the lease's rules checked under every shape.

:class:`SimLeases` gives each node of a :class:`~caxton.testing.membership.SimCluster`
a :class:`~caxton.cluster.lease.QuorumLease` and runs its heartbeats on the simulated
clock and network, as :class:`~caxton.cluster.lease.LeaseKeeper` does on a real node:
every ``duration / 4`` to each member the node's SWIM view has alive or suspect, a
round trip that crosses the simulated links both ways (so one-way cuts, bridges and
rings act on it as on SWIM's packets), renewed as of the send time. Everything is
seeded, so a failing seed replays exactly::

    sim = formed_cluster(seed=3, nodes=5)
    leases = SimLeases(sim, LeaseSettings(duration=2.0, drift_margin=0.2))
    sim.run_for(3)
    sim.mute("n4")
    cut = sim.now
    sim.run_until_time(cut + 2.0)
    assert not leases.holds("n4")
"""

from __future__ import annotations

from caxton.cluster.lease import BEATS_PER_LEASE, LeaseSettings, QuorumLease, quorum_of
from caxton.drivers.membership import MemberStatus
from caxton.testing.membership import SimCluster, SimNode

__all__ = ["SimLeases"]

_ANSWERING = (MemberStatus.ALIVE, MemberStatus.SUSPECT)


class SimLeases:
    """The quorum lease of every node of ``sim`` (see the module docstring)."""

    def __init__(self, sim: SimCluster, settings: LeaseSettings) -> None:
        self.sim = sim
        self.settings = settings
        self.leases: dict[str, tuple[SimNode, QuorumLease]] = {}
        #: Heartbeats sent and round trips completed.
        self.sent = 0
        self.answered = 0
        for node_id in sim.nodes:
            self._schedule(node_id, sim.rng.uniform(0, settings.interval))

    def lease(self, node_id: str) -> QuorumLease:
        """The lease of the node running as ``node_id`` now (a restart starts afresh)."""
        node = self.sim.nodes[node_id]
        held = self.leases.get(node_id)
        if held is None or held[0] is not node:
            held = (node, QuorumLease(node_id, self.settings))
            self.leases[node_id] = held
        return held[1]

    def known(self, node_id: str) -> list[str]:
        """The lease's denominator on ``node_id``: members not left, itself included."""
        members = self.sim.nodes[node_id].core.members()
        known = [m.node_id for m in members if m.status is not MemberStatus.LEFT]
        return known if node_id in known else [*known, node_id]

    def holds(self, node_id: str) -> bool:
        return self.lease(node_id).holds(self.sim.now, self.known(node_id))

    def failover_allowed(self, failed: str) -> bool:
        """Would the majority restart ``failed``'s agents now? A quorum of the running
        nodes other than ``failed`` (by the first such node's denominator) has had no
        round trip with it for ``duration + drift_margin``."""
        sim = self.sim
        others = [n.node_id for n in sim.live_nodes() if n.node_id != failed and n.running]
        if not others:
            return False
        known = self.known(others[0])
        quiet = [
            n
            for n in others
            if self.lease(n).silent_for(failed, sim.now) >= self.settings.failover_after
        ]
        return len(quiet) >= quorum_of(known)

    # -- heartbeats on the simulated network -------------------------------------------

    def _schedule(self, node_id: str, delay: float) -> None:
        node = self.sim.nodes[node_id]
        self.sim._at(self.sim.now + delay, lambda: self._beat(node))

    def _beat(self, node: SimNode) -> None:
        sim = self.sim
        if node.killed or sim.nodes.get(node.node_id) is not node:
            return
        if node.running:
            for member in node.core.members():
                if member.node_id != node.node_id and member.status in _ANSWERING:
                    self._heartbeat(node, member.node_id)
        sim._at(sim.now + self.settings.duration / BEATS_PER_LEASE, lambda: self._beat(node))

    def _heartbeat(self, sender: SimNode, target_id: str) -> None:
        sim = self.sim
        sent_at = sim.now
        self.sent += 1
        lease = self.lease(sender.node_id)
        if not sim.reachable(sender.node_id, target_id) or sim._lost(sender.node_id, target_id):
            return

        def arrive() -> None:
            target = sim.nodes.get(target_id)
            if target is None or not target.running:
                return  # a paused node answers late: past the sender's timeout, say
            self.lease(target_id).answered(sender.node_id, sim.now)
            if not sim.reachable(target_id, sender.node_id) or sim._lost(target_id, sender.node_id):
                return
            sim._at(sim.now + sim._delay(), answer)

        def answer() -> None:
            if sender.killed or sim.now - sent_at > self.settings.duration:
                return
            self.answered += 1
            lease.renewed(target_id, sent_at)

        sim._at(sim.now + sim._delay(), arrive)
