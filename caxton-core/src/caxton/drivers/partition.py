"""The partition policy driver: how a node behaves when the cluster splits.

Group ``caxton.partition_policy``. Core's ``quorum`` policy is majority read-write,
minority read-only with queued writes. Plugins can also decide through the
``caxton_partition_decision`` hook, which is asked before the policy driver.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from caxton.drivers.base import Driver


class PartitionMode(str, Enum):
    READ_WRITE = "read-write"
    READ_ONLY = "read-only"
    #: Only agents on this node are served; nothing is routed or placed remotely.
    LOCAL_ONLY = "local-only"


@dataclass(frozen=True)
class ClusterView:
    local_node_id: str
    #: Members believed to be part of the cluster (alive, suspect or failed; not left).
    known_nodes: Sequence[str]
    #: Members currently reachable from here, this node included.
    reachable_nodes: Sequence[str]
    #: Configured ``partition.quorum_size``; None means a strict majority of known nodes.
    quorum_size: int | None = None


@dataclass(frozen=True)
class PartitionDecision:
    mode: PartitionMode
    reason: str
    #: Queue writes while not read-write, replayed when the partition heals.
    queue_writes: bool = True


class PartitionPolicy(Driver):
    kind: ClassVar[str] = "partition_policy"

    @abstractmethod
    def decide(self, view: ClusterView) -> PartitionDecision:
        """Decide this node's mode for ``view``. Called on every membership change."""
