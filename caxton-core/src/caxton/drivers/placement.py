"""The placement strategy driver: which node runs a new agent (group ``caxton.placement``).

The strategy ranks candidates that survived ``caxton_placement_filter``; plugin scores
from ``caxton_placement_score`` are added to the strategy's ranking by core.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from caxton.drivers.base import Driver


@dataclass(frozen=True)
class NodeLoad:
    node_id: str
    agents: int = 0
    cpu_percent: float = 0.0
    memory_bytes: int = 0
    region: str = ""
    zone: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlacementRequest:
    agent_name: str
    strategy: str | None = None
    prefer_nodes: tuple[str, ...] = ()
    target_node: str | None = None
    requirements: Mapping[str, str] = field(default_factory=dict)


class PlacementStrategy(Driver):
    kind: ClassVar[str] = "placement"

    @abstractmethod
    def rank(self, request: PlacementRequest, candidates: Sequence[NodeLoad]) -> list[NodeLoad]:
        """Return ``candidates`` best first. Never empty when ``candidates`` is not."""
