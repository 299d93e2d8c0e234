"""Core's partition policy: majority read-write, minority read-only (group
``caxton.partition_policy``, name ``quorum``)."""

from __future__ import annotations

from caxton.config import CORE_SECTIONS
from caxton.drivers import ClusterView, PartitionDecision, PartitionMode, PartitionPolicy


class QuorumPolicy(PartitionPolicy):
    """Read-write while this node sees a quorum; read-only with queued writes otherwise.

    The quorum is ``partition.quorum_size`` when configured, else a strict majority of
    the known members. A lone node that never had peers is read-write: a single-node
    deployment is not a partition. Configured by core's ``[partition]`` section.
    """

    config_section = next(s for s in CORE_SECTIONS if s.path == "partition")

    def decide(self, view: ClusterView) -> PartitionDecision:
        known = max(len(view.known_nodes), 1)
        reachable = len(view.reachable_nodes)
        quorum = view.quorum_size or known // 2 + 1
        queue = bool(self.config.get("queue_writes", True))
        if reachable >= quorum:
            return PartitionDecision(
                PartitionMode.READ_WRITE,
                f"{reachable}/{known} nodes reachable, quorum {quorum}",
                queue_writes=queue,
            )
        return PartitionDecision(
            PartitionMode.READ_ONLY,
            f"minority partition: {reachable}/{known} nodes reachable, quorum {quorum}",
            queue_writes=queue,
        )
