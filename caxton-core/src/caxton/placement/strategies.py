"""Core's placement strategies (group ``caxton.placement``)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from caxton.drivers import DriverContext, NodeLoad, PlacementRequest, PlacementStrategy


def _preferred_first(request: PlacementRequest, ranked: list[NodeLoad]) -> list[NodeLoad]:
    """``target_node`` alone if present; ``prefer_nodes`` ahead of the rest, order kept."""
    if request.target_node is not None:
        return [c for c in ranked if c.node_id == request.target_node]
    if not request.prefer_nodes:
        return ranked
    preferred = set(request.prefer_nodes)
    return [c for c in ranked if c.node_id in preferred] + [
        c for c in ranked if c.node_id not in preferred
    ]


class LeastLoaded(PlacementStrategy):
    """Fewest agents first, then lowest CPU, then lowest memory; node id breaks ties."""

    def rank(self, request: PlacementRequest, candidates: Sequence[NodeLoad]) -> list[NodeLoad]:
        ranked = sorted(
            candidates, key=lambda c: (c.agents, c.cpu_percent, c.memory_bytes, c.node_id)
        )
        return _preferred_first(request, ranked)


class EvenDistribution(PlacementStrategy):
    """The same number of agents on every node, give or take one, spread across zones:
    fewest agents first, then the zone with the fewest agents per node, then node id.
    CPU and memory are not looked at (``least-loaded`` does), so a rebalance with it
    converges on equal counts whatever the nodes' momentary load."""

    def rank(self, request: PlacementRequest, candidates: Sequence[NodeLoad]) -> list[NodeLoad]:
        zones: dict[str, list[int]] = {}
        for c in candidates:
            zones.setdefault(c.zone, []).append(c.agents)
        per_node = {zone: sum(counts) / len(counts) for zone, counts in zones.items()}
        ranked = sorted(candidates, key=lambda c: (c.agents, per_node[c.zone], c.node_id))
        return _preferred_first(request, ranked)


class RoundRobin(PlacementStrategy):
    """Rotates through the candidates (by node id) on each placement."""

    def __init__(self, config: Mapping[str, Any], context: DriverContext) -> None:
        super().__init__(config, context)
        self._counter = itertools.count()

    def rank(self, request: PlacementRequest, candidates: Sequence[NodeLoad]) -> list[NodeLoad]:
        ordered = sorted(candidates, key=lambda c: c.node_id)
        if not ordered:
            return []
        start = next(self._counter) % len(ordered)
        return _preferred_first(request, ordered[start:] + ordered[:start])


class LocalOnly(PlacementStrategy):
    """Always this node (single-node deployments, or pinning everything locally)."""

    def rank(self, request: PlacementRequest, candidates: Sequence[NodeLoad]) -> list[NodeLoad]:
        local = [c for c in candidates if c.node_id == self.context.node_id]
        return _preferred_first(request, local) if request.target_node else local
