"""The cluster layer of a node: agent registry gossip and routing across nodes.

- :mod:`caxton.cluster.registry`: the versioned agent registry (no I/O).
- :mod:`caxton.cluster.service`: :class:`Cluster`, which wires the node's transport,
  membership driver, registry and router together.
- :mod:`caxton.cluster.forwarding`: agent messages between nodes.
- :mod:`caxton.cluster.wire`: what nodes say to each other.
- :mod:`caxton.cluster.auth`: ``caxton cluster verify-auth``.
- :mod:`caxton.cluster.events`: what ``caxton cluster watch`` shows.

See docs/cluster.md.
"""

from __future__ import annotations

from caxton.cluster.events import ClusterEvent
from caxton.cluster.forwarding import PeerRoute
from caxton.cluster.registry import AgentEntry, AgentRegistry, Delta
from caxton.cluster.service import Cluster

__all__ = ["AgentEntry", "AgentRegistry", "Cluster", "ClusterEvent", "Delta", "PeerRoute"]
